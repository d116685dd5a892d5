"""Writing output folders whole or not at all, and reading weights from saved checkpoints."""

import json
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open


@contextmanager
def atomic_folder(out: str | Path):
    """Yield a scratch folder next to `out`; it becomes `out` only if the block finishes without error."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} already exists and is not empty; choose another output folder or remove it.")
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield scratch
        if out.exists():
            out.rmdir()
        scratch.rename(out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def read_checkpoint_tensors(folder: str | Path, prefix: str = "") -> dict[str, torch.Tensor]:
    """Tensors whose names start with `prefix`, from safetensors (single or sharded) or PyTorch `.bin` files.

    `.bin` files are read with `torch.load(weights_only=True)`: no code from the file runs.
    """
    folder = Path(folder)
    files = checkpoint_files(folder)
    tensors = {}
    for file in files:
        if file.suffix == ".safetensors":
            with safe_open(file, framework="pt") as reader:
                for key in reader.keys():
                    if key.startswith(prefix):
                        tensors[key] = reader.get_tensor(key)
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
            tensors.update({k: v for k, v in state.items() if k.startswith(prefix)})
    return tensors


def checkpoint_files(folder: Path) -> list[Path]:
    """The weight files of a checkpoint folder, following a shard index when there is one."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.exists():
            return sorted({folder / name for name in json.loads(index.read_text())["weight_map"].values()})
    for pattern in ("model*.safetensors", "pytorch_model*.bin", "*.safetensors"):
        if found := sorted(folder.glob(pattern)):
            return found
    raise FileNotFoundError(f"No weights (*.safetensors or pytorch_model*.bin) in {folder}.")
