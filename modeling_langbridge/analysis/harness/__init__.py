"""Running LangBridge models under evaluation harnesses.

`HarnessRunner` holds what a harness asks of a model (batched generation with stop strings, log-likelihood of
a continuation) and needs nothing but transformers. `models/` is the lmms-eval plugin built on it:

    pip install "langbridge-hf[lmms-eval]"
    LMMS_EVAL_PLUGINS=modeling_langbridge.analysis.harness lmms-eval --model langbridge --model_args pretrained=DIR --tasks ...
"""

from .runner import HarnessRunner

__all__ = ["HarnessRunner"]
