"""What the recipes write, checked before training starts: never over the model being trained, never over a
folder they did not write, never over a finished run unless asked, never two runs into one folder; when resuming,
the newest checkpoint that was saved whole; and every save whole or not at all, a full disk named as that.

An output folder holds one writer at a time: a run claims it (`claim_output_dir`) with an advisory lock on
`output_dir/.langbridge-run.lock`, held until the run ends; the kernel drops it when the process ends however it ends,
so a crash or a kill never leaves the folder stuck. Of a multi-process run (torchrun, accelerate, DeepSpeed) only the
process that saves (`TrainingArguments.should_save`: global rank 0, or each node's local rank 0 with
`save_on_each_node`) claims; the other ranks are part of its run and share the claim.
"""

import errno
import json
import os
import re
import shutil
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from modeling_langbridge.errors import (
    DISK_FULL,
    LangBridgeResourceError,
    LangBridgeUsageError,
    disk_full_error,
    os_error_of,
    resource_error,
)
from modeling_langbridge.files import require_source, scratch_path

try:
    import fcntl
except ImportError:  # pragma: no cover  (not POSIX: no claim)
    fcntl = None

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
WEIGHT_FILES = (
    "model.safetensors",
    "adapter_model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "adapter_model.bin",
    "pytorch_model.bin.index.json",
)
# Any weights a save writes, sharded ones included (model-00001-of-00003.safetensors and their index).
WEIGHT_FILE = re.compile(r"^(model|adapter_model|pytorch_model)(-\d+-of-\d+)?\.(safetensors|bin)(\.index\.json)?$")
# What a run leaves in output_dir besides checkpoints: a run that got this far finished (or was saving).
FINISHED_RUN = ("trainer_state.json", "adapter_config.json", "adapter", "merged")
LOCK_FILE = ".langbridge-run.lock"


def check_output_dir(model_name_or_path: str, output_dir: str) -> None:
    """Refuse an output_dir that is the model being trained, or holds it: saving would overwrite its weights."""
    require_source(model_name_or_path, "model (model_name_or_path)")
    model, out = Path(model_name_or_path).expanduser(), Path(output_dir).expanduser()
    if not model.exists():
        return
    model, out = model.resolve(), out.resolve()
    if model == out or out in model.parents:
        raise LangBridgeUsageError(
            f"output_dir {output_dir} is (or holds) the model being trained, {model_name_or_path}: saving would "
            "overwrite its weights. Give the run its own output_dir."
        )


def is_our_adapter(folder: Path) -> bool:
    from modeling_langbridge.assembly.adapter import ADAPTER_CONFIG, FORMAT

    try:
        return json.loads((folder / ADAPTER_CONFIG).read_text()).get("format") == FORMAT
    except (OSError, ValueError):
        return False


def check_adapter_dir(adapter_dir: str | Path) -> None:
    """Before training: an existing `adapter` folder may be replaced only if it is an adapter a run wrote."""
    adapter_dir = Path(adapter_dir)
    if (
        adapter_dir.exists()
        and (not adapter_dir.is_dir() or any(adapter_dir.iterdir()))
        and not is_our_adapter(adapter_dir)
    ):
        raise LangBridgeUsageError(
            f"{adapter_dir} exists and is not a LangBridge adapter; the run saves its adapter there and will not "
            "delete what it did not write. Move it away, or choose another output_dir."
        )


@contextmanager
def folder_written_whole(target: str | Path):
    """Yield a scratch path beside `target` to write a folder into; it becomes `target` only once the block ends
    without error, and a previous `target` goes only then (on any error the scratch goes and `target` stays)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    parent = target.parent
    with scratch_path(Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=parent))) as fresh:
        yield fresh / target.name
        if not target.exists():
            (fresh / target.name).rename(target)
            return
        with scratch_path(Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=parent))) as old:
            target.rename(old / target.name)
            try:
                (fresh / target.name).rename(target)
            except BaseException:
                (old / target.name).rename(target)  # put the previous one back before the scratch goes
                raise


def save_adapter(adapter, adapter_dir: str | Path) -> Path:
    """Write the adapter whole beside `adapter_dir`, then swap it in; the previous one (a run's adapter) goes only
    once the new one is complete."""
    adapter_dir = Path(adapter_dir)
    check_adapter_dir(adapter_dir)
    with folder_written_whole(adapter_dir) as fresh:
        adapter.save_pretrained(fresh)
    return adapter_dir


@contextmanager
def files_written_whole(output_dir: str | Path):
    """Yield a scratch folder inside `output_dir` for a save (the model's weights, config, processor); once the block
    ends without error each file replaces its namesake in `output_dir` in one step (`os.replace`), and weight files
    the new save lacks (an earlier save's other shards, or other kind) go. On any error (a full disk) the scratch
    goes and `output_dir` holds what it held: the previous weights, if any, are kept."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with scratch_path(Path(tempfile.mkdtemp(prefix=".final-save.partial-", dir=out))) as scratch:
        yield scratch
        written = {path.name for path in scratch.iterdir()}
        for path in sorted(scratch.iterdir()):
            if path.is_dir():
                with folder_written_whole(out / path.name) as fresh:
                    path.rename(fresh)
            else:
                os.replace(path, out / path.name)
        for path in out.iterdir():
            if path.is_file() and path.name not in written and WEIGHT_FILE.match(path.name):
                path.unlink()


def _holder(lock: Path) -> str:
    """Who holds a claim, as its lock file says (read again briefly: the holder writes it just after locking)."""
    for _ in range(10):
        try:
            holder = json.loads(lock.read_text())
            return f"PID {holder['pid']} on {holder['host']}, started {holder['started']}"
        except (OSError, ValueError, KeyError, TypeError):
            time.sleep(0.1)
    return "its PID not yet written"


def _take_lock(out: Path) -> int | None:
    """An open descriptor of `out/LOCK_FILE`, locked for this process; refuses when another run holds it."""
    lock = out / LOCK_FILE
    while True:
        try:
            descriptor = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:  # a folder this user may not write in, a read-only file system
            translated = resource_error(out, error, "write in output_dir")
            if translated is None:
                raise
            raise translated from error
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise LangBridgeUsageError(
                f"output_dir {out} is being written by another run ({_holder(lock)}); wait for it to end, or give "
                "this run another output_dir."
            ) from None
        except OSError as error:  # a filesystem without locks: the run goes on unclaimed, and says so
            os.close(descriptor)
            print(f"Note: cannot lock {lock} ({error.strerror}); another run into {out} would not be refused.")
            return None
        try:  # the holder removes the file as it ends: a descriptor of the removed file claims nothing, open anew
            if os.path.samestat(os.fstat(descriptor), os.stat(lock)):
                break
        except FileNotFoundError:
            pass
        os.close(descriptor)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    os.ftruncate(descriptor, 0)
    os.write(descriptor, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": started}).encode())
    return descriptor


@contextmanager
def claim_output_dir(output_dir: str | Path, claims: bool = True):
    """Hold `output_dir` for this run while the block runs: a second run into it is refused at once, naming the
    holder's PID. `claims`: whether this process is the one of its run that claims (see the module's docstring).
    A folder the claim created and the run left empty (a run refused before it wrote) is removed again."""
    out = Path(output_dir)
    if not claims or fcntl is None:
        yield
        return
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise LangBridgeUsageError(f"output_dir {out} (or a folder above it) is a file; give a folder.") from None
    except OSError as error:
        translated = resource_error(out, error, "create output_dir")
        if translated is None:
            raise
        raise translated from error
    descriptor = _take_lock(out)
    try:
        yield
    finally:
        if descriptor is not None:
            (out / LOCK_FILE).unlink(missing_ok=True)  # while still locked; see _take_lock
            os.close(descriptor)
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()


def earlier_run(output_dir: str | Path) -> tuple[list[str], list[str]]:
    """What an earlier run left in output_dir: (what a finished run writes: weights, trainer state, adapter,
    merged model; its checkpoint-N folders). A `composed` model (from a hub_configs pair) is neither: it is reused."""
    out = Path(output_dir)
    if not out.is_dir():
        return [], []
    finished, checkpoints = [], []
    for path in sorted(out.iterdir()):
        if CHECKPOINT.match(path.name) and path.is_dir():
            checkpoints.append(path.name)
        elif path.name in FINISHED_RUN or (path.is_file() and WEIGHT_FILE.match(path.name)):
            finished.append(path.name)
    checkpoints.sort(key=lambda name: int(CHECKPOINT.match(name).group(1)))
    return finished, checkpoints


def check_earlier_run(output_dir: str | Path, resume, overwrite: bool, remove: bool = True) -> None:
    """A run into a folder that holds an earlier run continues it (`resume`), starts over when asked (`overwrite`:
    its checkpoints are removed now, when `remove`; its weights are replaced once the new ones are saved whole), or
    is refused: the earlier run is kept."""
    if resume:
        return
    finished, checkpoints = earlier_run(output_dir)
    if not finished and not checkpoints:
        return
    if overwrite:
        if remove:
            for name in checkpoints:
                shutil.rmtree(Path(output_dir) / name)
            print(
                f"overwrite_output_dir: starting over in {output_dir}"
                + (f"; removed the earlier run's {', '.join(checkpoints)}" if checkpoints else "")
                + "; its other files are replaced once this run's are saved whole"
            )
        return
    what = (
        f"a finished run ({', '.join(finished[:4])})"
        if finished
        else f"an earlier run's checkpoints ({', '.join(checkpoints[-3:])})"
    )
    raise LangBridgeUsageError(
        f"output_dir {output_dir} holds {what}, which is kept: set resume_from_checkpoint: true to continue that run, "
        "or overwrite_output_dir: true to start over and replace it (or give this run another output_dir)."
    )


def _little_space(path: Path, below: int = 1 << 20) -> bool:
    try:
        return shutil.disk_usage(path).free < below
    except OSError:
        return False


def full_disk(output_dir: str | Path, error: BaseException) -> OSError | None:
    """The ENOSPC/EDQUOT failure behind `error`, raised while writing into output_dir, if its disk is full: an
    OSError, safetensors' report of one ("os error 28"), or torch.save's (a RuntimeError of its zip writer) with no
    space left there; None for any other error."""
    failure = os_error_of(error)
    if failure is not None:
        return failure if failure.errno in DISK_FULL else None
    message = str(error)
    torch_writer = isinstance(error, RuntimeError) and (
        "PytorchStreamWriter" in message or "inline_container" in message
    )
    if torch_writer and _little_space(Path(output_dir)):
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return None


@contextmanager
def disk_errors_named(output_dir: str | Path):
    """A run's writes into output_dir: a full disk is said as that, naming the folder, and the checkpoint it was
    writing when the disk filled (torn: no trainer_state.json) is removed; the files a final save was replacing are
    kept (`files_written_whole`)."""
    out, started = Path(output_dir), time.time()
    try:
        yield
    except LangBridgeUsageError:
        raise
    except Exception as error:
        failure = full_disk(out, error)
        if failure is None:
            raise
        for name in earlier_run(out)[1]:
            folder = out / name
            if folder.stat().st_mtime >= started - 1 and complete_checkpoint(folder) is not None:
                shutil.rmtree(folder, ignore_errors=True)
        if isinstance(error, LangBridgeResourceError):
            raise
        raise disk_full_error(out, failure, "save the run into output_dir") from error


@contextmanager
def run_output(training_args, model_name_or_path: str, overwrite: bool = False, adapter: bool = False):
    """Everything about a run's output_dir, before the model is loaded: not the model trained (nor holding it), an
    `adapter` folder a run wrote (stage 1), claimed by this run alone, and an earlier run there continued (resume)
    or replaced only when asked. Yields the checkpoint to resume from; the block's writes name a full disk."""
    output_dir = training_args.output_dir
    check_output_dir(model_name_or_path, output_dir)
    if adapter:
        check_adapter_dir(Path(output_dir) / "adapter")
    saves = training_args.should_save
    with claim_output_dir(output_dir, claims=saves):
        resume = resume_argument(training_args.resume_from_checkpoint, output_dir)
        check_earlier_run(output_dir, resume, overwrite, remove=saves)
        with disk_errors_named(output_dir):
            yield resume


def complete_checkpoint(folder: Path) -> str | None:
    """None when `folder` is a whole checkpoint, else what is wrong with it. The Trainer writes trainer_state.json
    last, so a checkpoint torn by a kill lacks it; weights are checked to be readable, not just present."""
    state = folder / "trainer_state.json"
    try:
        json.loads(state.read_text())
    except (OSError, ValueError):
        return "no readable trainer_state.json (saving was interrupted)"
    weights = [folder / name for name in WEIGHT_FILES if (folder / name).exists()]
    if not weights:
        return "no weights"
    for file in weights:
        if file.suffix == ".safetensors":
            from safetensors import SafetensorError, safe_open

            try:
                with safe_open(file, framework="pt") as reader:
                    reader.keys()
            except (SafetensorError, OSError) as error:
                return f"{file.name} is unreadable ({error})"
    return None


def newest_complete_checkpoint(output_dir: str | Path) -> tuple[str | None, list[str]]:
    """The newest `checkpoint-N` of output_dir saved whole, and a note per newer one skipped (empty or torn)."""
    output_dir = Path(output_dir)
    found = sorted(
        (
            (int(m.group(1)), p)
            for p in (output_dir.iterdir() if output_dir.is_dir() else [])
            if (m := CHECKPOINT.match(p.name)) and p.is_dir()
        ),
        reverse=True,
    )
    skipped = []
    for _, folder in found:
        problem = complete_checkpoint(folder)
        if problem is None:
            return str(folder), skipped
        skipped.append(f"{folder.name}: {problem}")
    return None, skipped


def resume_argument(value, output_dir: str):
    """`resume_from_checkpoint: true` (or `latest`) means the newest complete checkpoint in output_dir; newer
    ones that are empty or torn are skipped, and said so."""
    if isinstance(value, str) and value.lower() in ("true", "latest"):
        value = True
    if value is True:
        checkpoint, skipped = newest_complete_checkpoint(output_dir)
        for note in skipped:
            print(f"Resume: skipping {Path(output_dir) / note.split(':')[0]} ({note.split(': ', 1)[1]})")
        if checkpoint is None:
            raise LangBridgeUsageError(
                f"resume_from_checkpoint is set but {output_dir} holds no complete checkpoint-N folder"
                + (f" ({'; '.join(skipped)})" if skipped else "")
                + "; start without it, or point it at a checkpoint."
            )
        if skipped:
            print(f"Resume: from {checkpoint}, the newest complete checkpoint")
        return checkpoint
    if value and not Path(value).is_dir():
        raise LangBridgeUsageError(
            f"resume_from_checkpoint {value} does not exist; give a checkpoint-N folder or true."
        )
    return value or None
