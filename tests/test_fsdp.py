"""FSDP2 on two CPU processes (gloo): the SFT recipe under the shipped launch config, and the visual tokens of a
sharded model. See tests/fsdp_probe.py for the one gate lifted to let accelerate run FSDP on CPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fsdp_probe import image_inputs
from test_training import changed, parameters, write_config
from transformers import AutoModelForImageTextToText

PROBE = Path(__file__).with_name("fsdp_probe.py")
FSDP_CONFIG = Path(__file__).parent.parent / "configuration" / "accelerate" / "fsdp.yaml"


def run(command: list[str]) -> None:
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, result.stderr[-4000:]


@pytest.mark.slow
def test_the_fsdp2_launch_config_shards_every_weight_and_saves_a_loadable_folder(world_model_dir, world, tmp_path):
    out = tmp_path / "out"
    config = write_config(
        tmp_path / "fsdp.yaml",
        model_name_or_path=str(world_model_dir),
        dataset=str(world["qa"]),
        image_folder=str(world["images"]),
        output_dir=str(out),
        max_steps=2,
        per_device_train_batch_size=2,
        learning_rate=1e-3,
    )
    run(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            str(FSDP_CONFIG),
            "--num_processes",
            "2",
            "--main_process_port",
            "29521",
            str(PROBE),
            "--config",
            str(config),
        ]
    )

    for rank in (0, 1):
        shards = json.loads((out / f"shards-rank{rank}.json").read_text())
        assert shards["world_size"] == 2 and shards["fsdp_units"] > 1  # the layers and the root
        whole = [name for name, p in shards["parameters"].items() if not p["dtensor"] or p["local"] >= p["full"]]
        assert shards["parameters"] and whole == []  # every weight a shard, no layer left whole
        # mixed_precision: bf16 in the launch config: float32 master weights, bf16 compute (FSDP's policy)
        assert {p["dtype"] for p in shards["parameters"].values() if p["trainable"]} == {"torch.float32"}

    changes = changed(parameters(world_model_dir), parameters(out))  # the gathered full state dict
    assert {
        "model.multi_modal_projector.vocab_proj.weight",
        "model.language_model.layers.0.mlp.down_proj.weight",
    } <= changes
    assert not any(name.startswith("model.vision_tower.") for name in changes)
    # The folder carries LangBridge's code, not torch's FSDP sources (FSDP2 renames the class to FSDP<name>)
    auto_map = json.loads((out / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForImageTextToText"] == "modeling_langbridge.LangBridgeForConditionalGeneration"
    assert (out / "modeling_langbridge.py").exists() and not list(out.glob("_fsdp*.py"))
    model = AutoModelForImageTextToText.from_pretrained(out, trust_remote_code=True)
    assert type(model).__name__ == "LangBridgeForConditionalGeneration"


@pytest.mark.slow
def test_visual_tokens_under_fsdp_equal_the_unsharded_models(llama_siglip_dir, tmp_path):
    """The embedding module in its own FSDP unit: outside its call its weight is a shard, so E is right only
    because the projector calls the module (indexing `.weight` there fails on the DTensor). Untied embeddings."""
    run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29523",
            str(PROBE),
            "tokens",
            str(llama_siglip_dir),
            str(tmp_path / "tokens.pt"),
        ]
    )
    sharded = torch.load(tmp_path / "tokens.pt", weights_only=True)

    model = AutoModelForImageTextToText.from_pretrained(llama_siglip_dir).eval()
    assert sharded["embedding_local_rows"] < model.get_input_embeddings().weight.shape[0]
    captured = []
    model.model.multi_modal_projector.register_forward_hook(
        lambda module, args, output: captured.append(output.detach())
    )
    with torch.no_grad():
        model(**image_inputs(llama_siglip_dir))
    assert captured[0].shape == sharded["visual_tokens"].shape
    assert torch.equal(captured[0], sharded["visual_tokens"])
