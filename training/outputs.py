"""What the recipes write, checked before training starts: never over the model being trained, never over a
folder they did not write; and, when resuming, the newest checkpoint that was saved whole."""

import json
import re
import tempfile
from pathlib import Path

from modeling_langbridge.errors import LangBridgeUsageError
from modeling_langbridge.files import require_source, scratch_path

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
WEIGHT_FILES = (
    "model.safetensors",
    "adapter_model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "adapter_model.bin",
    "pytorch_model.bin.index.json",
)


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


def save_adapter(adapter, adapter_dir: str | Path) -> Path:
    """Write the adapter whole beside `adapter_dir`, then swap it in; the previous one (a run's adapter) goes only
    once the new one is complete."""
    adapter_dir = Path(adapter_dir)
    check_adapter_dir(adapter_dir)
    if not adapter_dir.exists():
        return adapter.save_pretrained(adapter_dir)
    parent = adapter_dir.parent
    with scratch_path(Path(tempfile.mkdtemp(prefix=f".{adapter_dir.name}.partial-", dir=parent))) as fresh:
        adapter.save_pretrained(fresh / "adapter")
        with scratch_path(Path(tempfile.mkdtemp(prefix=f".{adapter_dir.name}.old-", dir=parent))) as old:
            adapter_dir.rename(old / "adapter")
            try:
                (fresh / "adapter").rename(adapter_dir)
            except BaseException:
                (old / "adapter").rename(adapter_dir)  # put the previous one back before the scratch goes
                raise
    return adapter_dir


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
