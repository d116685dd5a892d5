"""The error types for mistakes a user made (a wrong path, a damaged file, a setting out of range) and for resources
that failed them (a full disk, a folder they may not write in), and the translation of third-party errors that mean
the same thing into one sentence naming the problem, the path and the fix.

`langbridge` prints these as `langbridge CMD: error: ...` and exits with status 2 (`user_error_message` decides);
anything else is a bug and keeps its traceback. `LANGBRIDGE_TRACEBACK=1` (or `HF_DEBUG=1`, or `--traceback`) shows
the traceback of a one-line error too.
"""

import errno
import os
import pickle
import re
from contextlib import contextmanager
from pathlib import Path

from .model.errors_langbridge import LangBridgeInputError


class LangBridgeUsageError(LangBridgeInputError):
    """Something the user gave is wrong; the message names it, the file where there is one, and the fix. A
    `ValueError`, and a `LangBridgeInputError` (what the model files raise for the same kind of mistake)."""


class LangBridgeResourceError(OSError):
    """A path could not be read or written for a reason outside LangBridge: the disk is full, permission is denied,
    a part of the path is a file, the file system is read-only. An `OSError` with the `errno` and `filename` of the
    failure; the message names the path, the cause and the fix."""

    def __init__(self, message: str, code: int | None = None, path=None):
        super().__init__(message)
        self.errno = code
        self.filename = None if path is None else str(path)

    def __str__(self) -> str:
        return self.args[0]


# errno -> (the cause in words, the fix). Only these OSErrors are a user's or a machine's matter, never a bug.
RESOURCE_CAUSES = {
    errno.ENOSPC: ("the disk is full (no space left on the device)", "free space there or choose another place"),
    errno.EDQUOT: ("the disk quota is used up", "free space there or choose another place"),
    errno.EFBIG: ("the file is larger than this file system or a limit allows", "choose another place"),
    errno.EACCES: ("permission denied", "choose a path you may use, or change its permissions"),
    errno.EPERM: ("the operation is not permitted", "choose a path you may use, or change its permissions"),
    errno.EROFS: ("the file system is read-only", "choose a path on a writable file system"),
    errno.ENOENT: ("it does not exist", "give an existing path"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "give a path whose parents are folders"),
    errno.EISDIR: ("it is a folder where a file was expected", "give a file"),
    errno.ENAMETOOLONG: ("the name is too long", "give a shorter path"),
    errno.EEXIST: ("it already exists", "choose another name, or remove it"),
}
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def os_error_of(error: BaseException) -> OSError | None:
    """The operating-system failure behind an error: an `OSError` itself, or one that a library reports in its own
    words (safetensors: `I/O error: No space left on device (os error 28)`)."""
    if isinstance(error, OSError):
        return error
    match = re.search(r"os error (\d+)\)", str(error))
    if match:
        code = int(match.group(1))
        return OSError(code, os.strerror(code))
    return None


def resource_error(
    path, error: BaseException, action: str = "write", cleaned: bool = True
) -> LangBridgeResourceError | None:
    """`cannot {action} PATH: CAUSE; FIX.` for an operating-system failure a user can act on (see RESOURCE_CAUSES),
    None for any other error. `path` is what the user asked for (None: the failing file's own name); `cleaned` says
    that nothing half-written is left (the atomic writers of files.py)."""
    failure = os_error_of(error)
    if failure is None or failure.errno not in RESOURCE_CAUSES:
        return None
    if failure.errno in DISK_FULL:
        return disk_full_error(path, failure, action, cleaned)
    cause, fix = RESOURCE_CAUSES[failure.errno]
    where = _where(path, failure)
    return LangBridgeResourceError(f"cannot {action} {where}: {cause}; {fix}.", failure.errno, path)


def disk_full_error(
    path, error: BaseException, action: str = "write", cleaned: bool = True
) -> LangBridgeResourceError | None:
    """The error to raise when `error` means the disk holding `path` is full (ENOSPC, in an OSError or in a library's
    words such as safetensors') or its quota used up (EDQUOT), with the path and the free space left, never as a
    damaged file; None when it means something else. `cleaned`: the caller removes what was half-written (the atomic
    writers of files.py do), and the message says so."""
    failure = os_error_of(error)
    if failure is None or failure.errno not in DISK_FULL:
        return None
    cause = RESOURCE_CAUSES[failure.errno][0]
    free = free_space(path)
    left = f" ({format_bytes(free)} free there now)" if free is not None else ""
    kept = " Nothing half-written was kept." if cleaned else ""
    return LangBridgeResourceError(
        f"cannot {action} {_where(path, failure)}: {cause}{left}; free space on that disk or choose another place."
        + kept,
        failure.errno,
        path,
    )


def _where(path, failure: OSError) -> str:
    """The path the user gave (a scratch file inside it would mean nothing to them), else the failing file's."""
    if path is not None:
        return str(path)
    inner = getattr(failure, "filename", None)
    return str(inner) if inner else "a file"


def free_space(path) -> int | None:
    """Bytes free on the file system holding `path` (or its nearest existing parent); None when unknown."""
    import shutil

    if path is None:
        return None
    folder = Path(path).expanduser().absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def format_bytes(count: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if count < 1000 or unit == "TB":
            return f"{count:,.0f} {unit}" if unit == "bytes" else f"{count:,.1f} {unit}"
        count /= 1000
    return f"{count} bytes"  # pragma: no cover


def pickled_weights_error(path) -> LangBridgeUsageError:
    """A `.bin`/`.pt` file that `torch.load(weights_only=True)` refused: it holds objects, not just tensors."""
    return LangBridgeUsageError(
        f"{path} cannot be read as weights: it is a pickle that holds Python objects beyond tensors, and LangBridge "
        "never runs code from a weights file; convert it to safetensors where it was made, or use a safetensors copy."
    )


def damaged_safetensors_error(path, error) -> LangBridgeUsageError | LangBridgeResourceError:
    """A safetensors file that cannot be read: damaged or truncated, or (what safetensors reports the same way) a
    failure of the disk or the permissions underneath, which is said as that."""
    return resource_error(path, error, "read", cleaned=False) or LangBridgeUsageError(
        f"{path} is damaged or truncated ({error}); download or save it again."
    )


@contextmanager
def loading(what: str, name):
    """Errors of transformers and huggingface_hub loading a source the user named (a missing Hub id, offline mode,
    a folder without the files of a model, a config.json that is not JSON, a model of an unknown type) become one
    sentence naming the source; LangBridge's own errors pass unchanged."""
    try:
        yield
    except (LangBridgeInputError, LangBridgeResourceError):
        raise
    except OSError as error:
        translated = resource_error(getattr(error, "filename", None) or name, error, "read")
        if translated is not None and getattr(error, "filename", None):
            raise translated from error
        raise LangBridgeUsageError(f"cannot load the {what} {name}: {one_line(error)}") from error
    except Exception as error:
        if not isinstance(error, (ValueError, *_strict_errors())):
            raise
        raise LangBridgeUsageError(f"cannot load the {what} {name}: {one_line(error)}") from error


def _strict_errors() -> tuple:
    """huggingface_hub's errors for a config value of the wrong type (strict dataclasses)."""
    try:
        from huggingface_hub.errors import StrictDataclassError
    except ImportError:  # pragma: no cover - older huggingface_hub
        return ()
    return (StrictDataclassError,)


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def user_error_message(error: BaseException) -> str | None:
    """One line describing an error raised by a user's mistake or a failed resource, or None when `error` is not
    one (a bug: let it show). One line: LangBridge's own errors (`LangBridgeInputError`, `LangBridgeUsageError`,
    `LangBridgeResourceError`); pickles that hold more than tensors; damaged safetensors files; text that is not
    UTF-8; and operating-system failures a user can act on (disk full, permission denied, a missing path, a path
    through a file, a read-only file system: RESOURCE_CAUSES) when they name their path or fill the disk. Every other
    error, a plain `ValueError` or `OSError` included, is a bug."""
    try:
        from safetensors import SafetensorError
    except ImportError:  # pragma: no cover
        SafetensorError = ()
    message = None
    if isinstance(error, (LangBridgeInputError, LangBridgeResourceError)):
        message = str(error)
    elif isinstance(error, pickle.UnpicklingError):
        message = str(pickled_weights_error("a weights file"))
    elif isinstance(error, SafetensorError):
        message = str(
            resource_error(None, error, "use", cleaned=False) or damaged_safetensors_error("a safetensors file", error)
        )
    elif isinstance(error, UnicodeError):
        message = f"a text file is not UTF-8 ({error}); save it as UTF-8."
    elif isinstance(error, OSError):
        if error.errno in DISK_FULL or (error.errno in RESOURCE_CAUSES and error.filename):
            message = str(resource_error(error.filename, error, "use", cleaned=False))
    elif type(error).__name__ == "DatasetGenerationError":
        cause = error.__cause__ or error.__context__
        message = (
            user_error_message(cause) if cause is not None else None
        ) or f"cannot read the dataset: {cause or error}"
    if message is None:
        return None
    return one_line(message) if message.strip() else type(error).__name__
