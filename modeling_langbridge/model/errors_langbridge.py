"""The error the model files raise for a caller's mistake (inputs that do not fit, settings out of range): a
`ValueError`, as transformers' own models raise, of a type of its own so that tools can tell it from a bug.

The installed package's `LangBridgeUsageError` is a subclass; its command line answers these in one line and lets
any other error show its traceback. This file travels with checkpoints as remote code: it imports nothing.
"""


class LangBridgeInputError(ValueError):
    """What the caller gave cannot work; the message names it and says what works instead."""


__all__ = ["LangBridgeInputError"]
