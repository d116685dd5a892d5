"""The model itself: the files every saved checkpoint carries as remote code.

`save_pretrained` copies configuration_langbridge.py, modeling_langbridge.py, processing_langbridge.py,
projection_langbridge.py, tiling_langbridge.py, compatibility_langbridge.py and errors_langbridge.py into the
checkpoint folder, where `trust_remote_code=True` loads them without this package, on any transformers from 5.16.1
on (what inference engines install; compatibility_langbridge.py detects what each version has). So they import only
each other (relatively), transformers, torch and PIL, and their messages speak to someone who may not have
`langbridge` installed. This `__init__` does not travel; nothing here may depend on it.
"""
