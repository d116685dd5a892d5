"""bf16 mixed precision as the shipped recipes run it (`dtype: bfloat16`, `bf16: true`): the trainable weights keep
float32 master copies, so updates at lr 2e-5 are not rounded away, and the saved folder has the dtype asked for."""

import json
import re

import pytest
import torch
from safetensors import safe_open
from test_training import Crash, run_recipe, write_config
from transformers import AutoModelForImageTextToText, TrainerCallback

from langbridge_training import sft

LLM_PROJECTION = re.compile(
    r"language_model\..*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)\.(base_layer\.)?weight$"
)


def saved_dtypes(folder) -> dict[str, torch.dtype]:
    dtypes = {}
    for file in folder.glob("*.safetensors"):
        with safe_open(str(file), "pt") as tensors:
            dtypes.update({name: tensors.get_tensor(name).dtype for name in tensors.keys()})
    return dtypes


def fraction_moved(before: dict[str, torch.Tensor], model, pattern) -> tuple[float, int]:
    """The fraction of the elements of the parameters named by `pattern` that differ from `before`."""
    moved = total = 0
    for name, parameter in model.named_parameters():
        if pattern(name):
            initial = before[name]
            moved += int((parameter.detach().float() != initial.float()).sum())
            total += initial.numel()
    return moved / total, total


def test_full_sft_in_bf16_moves_every_llm_weight_and_saves_bf16(world_model_dir, world, tmp_path):
    out = tmp_path / "out"
    config = write_config(
        tmp_path / "sft.yaml",
        model_name_or_path=str(world_model_dir),
        dataset=str(world["qa"]),
        image_folder=str(world["images"]),
        output_dir=str(out),
        max_steps=4,
        per_device_train_batch_size=4,
        learning_rate=2e-5,
        dtype="bfloat16",
        bf16=True,
    )
    initial = AutoModelForImageTextToText.from_pretrained(world_model_dir, dtype=torch.bfloat16).state_dict()
    trainer = run_recipe(sft, config)
    model = trainer.model

    fraction, count = fraction_moved(initial, model, LLM_PROJECTION.search)
    print(f"bf16 full SFT, lr 2e-5, 4 steps: {fraction:.1%} of {count} LLM projection weights moved")
    assert count > 0 and fraction > 0.97, fraction  # bf16 weights updated in place: 16% (the rest rounds away)
    parameters = dict(model.named_parameters())
    assert {n for n, p in parameters.items() if p.requires_grad and p.dtype != torch.float32} == set()  # master weights
    assert all(
        p.dtype == torch.bfloat16 for p in parameters.values() if not p.requires_grad
    )  # the frozen tower as loaded
    assert any(name.startswith("model.vision_tower.") for name, p in parameters.items() if not p.requires_grad)

    # The folder is bf16, as asked: the master weights rounded once, at the end; the config says so too.
    dtypes = saved_dtypes(out)
    floating = {name: dtype for name, dtype in dtypes.items() if dtype.is_floating_point}
    assert floating and set(floating.values()) == {torch.bfloat16}, {d for d in floating.values()}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    saved = AutoModelForImageTextToText.from_pretrained(out)
    assert saved.dtype == torch.bfloat16
    state = saved.state_dict()
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(state[name], parameter.detach().to(torch.bfloat16), rtol=0, atol=0)


@pytest.mark.parametrize("variant", ["lora", "qlora"])
def test_lora_in_bf16_moves_every_adapter_weight(variant, world_model_dir, world, tmp_path):
    """LoRA keeps float32 adapters (PEFT upcasts them); under QLoRA TRL casts them to bf16, and they must be
    float32 again to learn at a small rate."""
    out = tmp_path / "out"
    config = write_config(
        tmp_path / "sft.yaml",
        model_name_or_path=str(world_model_dir),
        dataset=str(world["qa"]),
        image_folder=str(world["images"]),
        output_dir=str(out),
        max_steps=3,
        per_device_train_batch_size=4,
        learning_rate=2e-5,
        dtype="bfloat16",
        bf16=True,
        use_peft=True,
        lora_r=8,
        lora_alpha=16,
        lora_dropout=0.0,
        merge_lora=variant == "lora",
        load_in_4bit=variant == "qlora",
    )
    captured = {}

    class AtStart(TrainerCallback):  # LoRA B starts at zero; A starts random, and every element of it must move
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            captured.update({n: p.detach().clone() for n, p in model.named_parameters() if "lora_A" in n})

    trainer = run_recipe(sft, config, callbacks=[AtStart()])
    model = trainer.model
    fraction, count = fraction_moved(captured, model, lambda name: "lora_A" in name)
    print(f"bf16 {variant}, lr 2e-5, 3 steps: {fraction:.1%} of {count} LoRA A weights moved")
    assert count > 0 and fraction > 0.97, fraction
    assert {n for n, p in model.named_parameters() if p.requires_grad and p.dtype != torch.float32} == set()

    # The adapter: the projector in the dtype asked for; LoRA as PEFT (float32) or TRL's QLoRA (bf16) made it.
    dtypes = saved_dtypes(out)
    assert {d for n, d in dtypes.items() if "multi_modal_projector" in n and d.is_floating_point} == {torch.bfloat16}
    lora = {torch.float32} if variant == "lora" else {torch.bfloat16}
    assert {d for n, d in dtypes.items() if "lora_" in n} == lora, dtypes
    if variant == "lora":  # merged in float32, saved in the dtype asked for
        assert {d for d in saved_dtypes(out / "merged").values() if d.is_floating_point} == {torch.bfloat16}
        assert AutoModelForImageTextToText.from_pretrained(out / "merged").dtype == torch.bfloat16


def test_a_killed_bf16_run_resumes_to_the_same_master_weights(world_model_dir, world, tmp_path):
    """Checkpoints hold the float32 master weights (only the final save is cast to the dtype asked for): a
    resumed run ends with the same master weights as an uninterrupted one, not ones rounded to bf16 at the
    checkpoint."""
    common = dict(
        model_name_or_path=str(world_model_dir),
        dataset=str(world["qa"]),
        image_folder=str(world["images"]),
        max_steps=5,
        per_device_train_batch_size=2,
        learning_rate=2e-5,
        save_strategy="steps",
        save_steps=2,
        dtype="bfloat16",
        bf16=True,
    )
    straight = run_recipe(
        sft, write_config(tmp_path / "straight.yaml", output_dir=str(tmp_path / "straight"), **common)
    )
    with pytest.raises(KeyboardInterrupt):
        run_recipe(
            sft,
            write_config(tmp_path / "killed.yaml", output_dir=str(tmp_path / "killed"), **common),
            callbacks=[Crash(at_step=3)],
        )
    assert saved_dtypes(tmp_path / "killed" / "checkpoint-2")["model.language_model.norm.weight"] == torch.float32
    resumed = run_recipe(
        sft,
        write_config(
            tmp_path / "resumed.yaml", output_dir=str(tmp_path / "killed"), resume_from_checkpoint="true", **common
        ),
    )
    assert resumed.state.global_step == 5
    expected = dict(straight.model.named_parameters())
    for name, parameter in resumed.model.named_parameters():
        assert torch.equal(parameter, expected[name]), name
