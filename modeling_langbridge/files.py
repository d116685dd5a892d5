"""Writing output folders whole or not at all, and reading weights from saved checkpoints.

A failure of the disk or the permissions while writing (a full disk, a read-only file system) is said as that,
with the output's path, and leaves nothing half-written; `check_writable` refuses what can be foreseen before any
work starts, `check_free_space` a save that cannot fit before its first byte.
"""

import errno
import json
import os
import pickle
import shutil
import signal
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from .errors import (
    LangBridgeResourceError,
    LangBridgeUsageError,
    damaged_safetensors_error,
    format_bytes,
    free_space,
    pickled_weights_error,
    resource_error,
)

# Scratch folders and files being written now: removed if the process is told to stop (SIGTERM, as schedulers
# send), so no `.NAME.partial-*` is left behind; normal errors remove them through the `finally` blocks.
_SCRATCH: set[Path] = set()


def _remove_scratch() -> None:
    for path in list(_SCRATCH):
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        _SCRATCH.discard(path)


def _on_sigterm(signum, frame, previous=None):
    _remove_scratch()
    if callable(previous):
        return previous(signum, frame)
    signal.signal(signum, signal.SIG_DFL if previous in (None, signal.SIG_DFL) else previous)
    if previous != signal.SIG_IGN:
        os.kill(os.getpid(), signum)  # die of the signal as before, with its exit status


def _watch_sigterm() -> None:
    """Clean scratch on SIGTERM, then do what the process did before (default: die). Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        return
    current = signal.getsignal(signal.SIGTERM)
    if getattr(current, "_langbridge", False):
        return

    def handler(signum, frame):
        _on_sigterm(signum, frame, current)

    handler._langbridge = True
    signal.signal(signal.SIGTERM, handler)


@contextmanager
def scratch_path(path: Path):
    _watch_sigterm()
    _SCRATCH.add(path)
    try:
        yield path
    finally:
        _SCRATCH.discard(path)
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


@contextmanager
def writing(out: str | Path, scratch: Path | None = None):
    """Say a failure of the disk or the permissions while writing `out` as that, with `out`'s path (never as a
    damaged file, which is how safetensors words a full disk). An error about another path passes unchanged."""
    try:
        yield
    except LangBridgeResourceError:
        raise
    except (OSError, SafetensorError) as error:
        failing = getattr(error, "filename", None)
        ours = failing is None or any(
            str(failing).startswith(str(p)) for p in (out, scratch, Path(out).parent) if p is not None
        )
        translated = resource_error(out, error, "write") if ours else None
        if translated is None:
            raise
        raise translated from error


def check_output_folder(out: str | Path) -> Path:
    """An output folder must be new or empty: refuse a file, or a folder that holds files."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise LangBridgeUsageError(f"{out} is a file, not a folder; give a new folder to save in.")
    if out.is_dir() and any(out.iterdir()):
        raise LangBridgeUsageError(f"{out} already exists and is not empty; choose another output folder or remove it.")
    return out


@contextmanager
def atomic_folder(out: str | Path):
    """Yield a scratch folder next to `out`; it becomes `out` only if the block finishes without error."""
    out = check_output_folder(out)
    with writing(out):
        out.parent.mkdir(parents=True, exist_ok=True)
        with scratch_path(Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))) as scratch:
            with writing(out, scratch):
                yield scratch
                if out.exists():
                    out.rmdir()
                scratch.rename(out)


def check_writable(path: str | Path, kind: str = "file", flag: str | None = None) -> Path:
    """Refuse, before any work, an output that cannot be written: an output folder that is a file or holds files
    (`kind="folder"`), a folder given for a file, a path through a file, a place on a read-only file system or one
    this user may not write in. `flag` names the option it came from."""
    path = Path(path).expanduser()
    named = f"{path} ({flag})" if flag else str(path)
    if kind == "folder":
        check_output_folder(path)
    elif path.is_dir():
        raise LangBridgeUsageError(f"{named} is a folder; give a file name to write to.")
    place = path.parent.absolute()
    while not place.exists() and place != place.parent:
        place = place.parent
    if not place.is_dir():
        raise LangBridgeResourceError(
            f"cannot write {named}: {place} is a file, not a folder; give a path under a folder.",
            errno.ENOTDIR,
            path,
        )
    if not os.access(place, os.W_OK | os.X_OK):
        read_only = bool(os.statvfs(place).f_flag & os.ST_RDONLY)
        cause = "the file system is read-only" if read_only else "permission denied"
        raise LangBridgeResourceError(
            f"cannot write {named}: {cause} in {place}; choose a place you may write to.",
            errno.EROFS if read_only else errno.EACCES,
            path,
        )
    return path


def check_free_space(path: str | Path, needed: int, what: str = "the output") -> None:
    """Refuse a write of about `needed` bytes to `path` that the disk holding it has no room for, before its first
    byte (a failure halfway would be found only after the whole write)."""
    free = free_space(path)
    if free is not None and free < needed:
        raise LangBridgeResourceError(
            f"cannot write {path}: it needs about {format_bytes(needed)} ({what}) and the disk holding it has "
            f"{format_bytes(free)} free; free space on that disk or choose another place.",
            errno.ENOSPC,
            path,
        )


def refuse_overwrite(path: str | Path, overwrite: bool = False, flag: str = "--overwrite") -> Path:
    """Refuse to replace an existing file unless asked; call it before the work that produces the file."""
    path = Path(path)
    if path.is_dir():
        raise LangBridgeUsageError(f"{path} is a folder; give a file name to write to.")
    if path.exists() and not overwrite:
        raise LangBridgeUsageError(f"{path} already exists; choose another name, or pass {flag} to replace it.")
    return path


@contextmanager
def atomic_file(path: str | Path, overwrite: bool = False):
    """Yield a scratch file next to `path`; it replaces `path` in one step only if the block finishes without
    error, so a reader never sees half a file. An existing `path` is kept unless `overwrite`."""
    path = refuse_overwrite(path, overwrite)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        # The scratch ends in the file's own suffix, so writers that infer the format from it (PIL, matplotlib) work.
        handle, name = tempfile.mkstemp(prefix=f".{path.name}.partial-", suffix=path.suffix, dir=path.parent)
        os.close(handle)
        with scratch_path(Path(name)) as scratch:
            with writing(path, scratch):
                yield scratch
                os.replace(scratch, path)


def write_text_atomic(path: str | Path, text: str, overwrite: bool = False) -> Path:
    with atomic_file(path, overwrite) as scratch:
        scratch.write_text(text, encoding="utf-8")
    return Path(path)


def looks_like_local_path(name: str) -> bool:
    """A path rather than a Hub id (`org/name`): starts with `.`, `/` or `~`, or has more than one part."""
    text = str(name)
    return (
        text.startswith((".", "/", "~", "\\"))
        or text.count("/") > 1
        or "\\" in text
        or Path(text).suffix in (".json", ".yaml", ".yml")
    )


def require_source(name_or_path: str | Path, what: str = "model") -> str:
    """A local path must exist; a Hub id is left to the Hub. Refuses a missing local path as that, not as a bad id."""
    text = str(name_or_path)
    if not Path(text).expanduser().exists() and (isinstance(name_or_path, Path) or looks_like_local_path(text)):
        raise LangBridgeUsageError(
            f"{text} does not exist; give an existing {what} folder, or a Hub id such as org/name."
        )
    return text


def read_checkpoint_tensors(folder: str | Path, prefix: str = "") -> dict[str, torch.Tensor]:
    """Tensors whose names start with `prefix`, from safetensors (single or sharded) or PyTorch `.bin` files."""
    tensors = {}
    for file in checkpoint_files(Path(folder)):
        tensors.update(read_tensor_file(file, prefix))
    return tensors


def read_tensor_file(path: str | Path, prefix: str = "") -> dict[str, torch.Tensor]:
    """The tensors of one weights file whose names start with `prefix`: from `.safetensors` only those are read (a
    projector out of a 14B shard), a `.bin`/`.pt` state dict is loaded with weights_only=True (no code runs)."""
    path = Path(path)
    if not path.exists():
        raise LangBridgeUsageError(f"{path} does not exist; give an existing weights file.")
    if path.suffix == ".safetensors":
        try:
            with safe_open(path, framework="pt") as reader:
                return {key: reader.get_tensor(key) for key in reader.keys() if key.startswith(prefix)}
        except SafetensorError as error:
            raise damaged_safetensors_error(path, error) from None
    state = load_torch_weights(path)
    if not isinstance(state, dict):
        raise LangBridgeUsageError(
            f"{path} holds a {type(state).__name__}, not a state dict of named tensors; give a weights file."
        )
    return {key: value for key, value in state.items() if key.startswith(prefix)}


def load_safetensors(file: str | Path) -> dict[str, torch.Tensor]:
    """A whole safetensors file; a damaged or truncated one is refused with its name."""
    from safetensors.torch import load_file

    try:
        return load_file(file)
    except SafetensorError as error:
        raise damaged_safetensors_error(file, error) from None


def load_torch_weights(file: str | Path):
    """`torch.load(weights_only=True)`: tensors only, no code from the file runs; a file that needs more is
    refused with its name (and never with advice to lift the restriction)."""
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise pickled_weights_error(file) from None
    except (RuntimeError, EOFError) as error:
        raise LangBridgeUsageError(
            f"{file} is not a readable PyTorch weights file ({error}); download or save it again."
        ) from None


def checkpoint_files(folder: Path) -> list[Path]:
    """The weight files of a checkpoint folder, following a shard index when there is one."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.exists():
            try:
                return sorted({folder / name for name in json.loads(index.read_text())["weight_map"].values()})
            except (ValueError, KeyError, TypeError, AttributeError) as error:  # not JSON, or not a shard index
                raise LangBridgeUsageError(
                    f"{index} is not a readable shard index ({type(error).__name__}: {error}); download or save the "
                    "model again."
                ) from None
    for pattern in ("model*.safetensors", "pytorch_model*.bin", "*.safetensors"):
        if found := sorted(folder.glob(pattern)):
            return found
    raise LangBridgeUsageError(
        f"{folder} holds no weights (*.safetensors or pytorch_model*.bin); give a folder a model was saved to."
    )
