"""The four recipes on an offline machine, as a cluster runs them: `HF_HUB_OFFLINE=1`, no `USE_HUB_KERNELS`, the
shipped recipes' settings (bf16, gradient checkpointing; the 4-bit LLM for QLoRA), tiny parts built locally, a
few steps each, then the merged LoRA folder answers through `pipeline("image-text-to-text")`.

On a GPU this is the check that transformers' default Hub kernels no longer break training offline; on a CPU it
runs the same path (QLoRA skipped without CUDA).

    python -m benchmarks.offline_recipes [--work DIR] [--steps 3]
"""

import argparse
import os
import tempfile
import time
import traceback
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.pop("USE_HUB_KERNELS", None)

import torch  # noqa: E402
import yaml  # noqa: E402

RECIPES = {
    "pretrain": {"recipe": "pretrain", "data": "captions", "learning_rate": 1e-3},
    "sft full": {"recipe": "sft", "data": "qa", "learning_rate": 2e-5, "dtype": "bfloat16"},
    "sft lora": {"recipe": "sft", "data": "qa", "learning_rate": 2e-4, "dtype": "bfloat16", "use_peft": True},
    "sft qlora": {
        "recipe": "sft",
        "data": "qa",
        "learning_rate": 2e-4,
        "dtype": "bfloat16",
        "use_peft": True,
        "load_in_4bit": True,
        "bnb_4bit_quant_type": "nf4",
        "use_bnb_nested_quant": True,
    },
}


def parts(work: Path) -> tuple[Path, dict]:
    from langbridge_training.demo.world import write_llava_dataset
    from modeling_langbridge.assembly.compose import compose
    from modeling_langbridge.assembly.tiny import save_clip_vision, save_qwen2_style_llm

    torch.manual_seed(0)
    composed = compose(
        str(save_clip_vision(work / "clip")),
        str(save_qwen2_style_llm(work / "llm", hidden_size=64)),
        projector_hidden_size=64,
        shared_vocab_size=96,
    )
    model_dir = composed.save(work / "langbridge")
    data = {
        "captions": write_llava_dataset(work / "world", 32, seed=0, kind="caption"),
        "qa": write_llava_dataset(work / "world", 32, seed=1, kind="qa"),
        "images": work / "world" / "images",
    }
    return model_dir, data


def run(name: str, settings: dict, model_dir: Path, data: dict, work: Path, steps: int) -> Path:
    from trl import ModelConfig, SFTConfig, TrlParser

    from langbridge_training import pretrain, sft
    from langbridge_training.arguments import LangBridgeArguments

    settings = dict(settings)
    recipe = {"pretrain": pretrain, "sft": sft}[settings.pop("recipe")]
    out = work / name.replace(" ", "-")
    config = work / f"{out.name}.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model_name_or_path": str(model_dir),
                "dataset": str(data[settings.pop("data")]),
                "image_folder": str(data["images"]),
                "output_dir": str(out),
                "max_steps": steps,
                "per_device_train_batch_size": 4,
                "bf16": torch.cuda.is_available(),
                "use_cpu": not torch.cuda.is_available(),
                "activation_checkpointing": True,
                "report_to": [],
                "logging_steps": 1,
                "save_strategy": "no",
                "max_length": 160,
                "disable_tqdm": True,
                **settings,
            }
        )
    )
    args = TrlParser((LangBridgeArguments, SFTConfig, ModelConfig)).parse_args_and_config(["--config", str(config)])
    trainer = recipe.main(*args)
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    print(f"    losses {[round(loss, 3) for loss in losses]}", flush=True)
    return out / "merged" if settings.get("use_peft") else out


def answer(folder: Path) -> str:
    from transformers import pipeline

    from modeling_langbridge.assembly.tiny import random_shapes_image

    chat = pipeline("image-text-to-text", model=str(folder), device=0 if torch.cuda.is_available() else -1)
    message = [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": random_shapes_image(seed=3)},
                {"type": "text", "text": "What is in the picture?"},
            ],
        }
    ]
    return chat(text=message, max_new_tokens=8)[0]["generated_text"][-1]["content"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="langbridge-offline-"))
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    print(
        f"offline recipes on {device}: HF_HUB_OFFLINE={os.environ['HF_HUB_OFFLINE']}, USE_HUB_KERNELS unset", flush=True
    )
    model_dir, data = parts(work)
    failures = ran = 0
    for name, settings in RECIPES.items():
        if settings.get("load_in_4bit") and not torch.cuda.is_available():
            print(f"  {name}: skipped (4-bit needs CUDA here)")
            continue
        started, ran = time.perf_counter(), ran + 1
        try:
            folder = run(name, settings, model_dir, data, work, args.steps)
            reply = answer(folder)
            print(f"  {name}: OK in {time.perf_counter() - started:.0f} s; {folder.name} answers {reply!r}", flush=True)
        except Exception as error:  # report every recipe, then fail
            failures += 1
            print(f"  {name}: FAILED: {type(error).__name__}: {error}", flush=True)
            traceback.print_exc()
    print(f"offline recipes: {ran - failures} of {ran} trained and answered, {failures} failed", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
