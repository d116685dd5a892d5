"""The one error type for mistakes a user made (a wrong path, a damaged file, a setting out of range), and the
translation of third-party errors that mean the same thing into one sentence naming the problem and the fix.

`langbridge` prints any of them as `langbridge CMD: error: ...` and exits with status 2; anything else is a bug
and keeps its traceback.
"""

import pickle


class LangBridgeUsageError(ValueError):
    """Something the user gave is wrong; the message names it, the file where there is one, and the fix."""


def pickled_weights_error(path) -> LangBridgeUsageError:
    """A `.bin`/`.pt` file that `torch.load(weights_only=True)` refused: it holds objects, not just tensors."""
    return LangBridgeUsageError(
        f"{path} cannot be read as weights: it is a pickle that holds Python objects beyond tensors, and LangBridge "
        "never runs code from a weights file; convert it to safetensors where it was made, or use a safetensors copy."
    )


def damaged_safetensors_error(path, error) -> LangBridgeUsageError:
    return LangBridgeUsageError(f"{path} is damaged or truncated ({error}); download or save it again.")


def user_error_message(error: BaseException) -> str | None:
    """One line describing a user-caused error, or None when `error` is not one (a bug: let it show)."""
    try:
        from safetensors import SafetensorError
    except ImportError:  # pragma: no cover
        SafetensorError = ()
    message = None
    if isinstance(error, pickle.UnpicklingError):
        message = str(pickled_weights_error("a weights file"))
    elif isinstance(error, SafetensorError):
        message = str(damaged_safetensors_error("a safetensors file", error))
    elif isinstance(error, UnicodeError):
        message = f"a text file is not UTF-8 ({error}); save it as UTF-8."
    elif isinstance(error, (ValueError, OSError)):
        message = str(error)
    elif type(error).__name__ == "DatasetGenerationError":
        cause = error.__cause__ or error.__context__
        message = (
            user_error_message(cause) if cause is not None else None
        ) or f"cannot read the dataset: {cause or error}"
    if message is None:
        return None
    return " ".join(message.split()) or type(error).__name__
