"""The training recipes, run for real on CPU with TRL's SFTTrainer: what they learn, what they leave alone,
what they drop, and that they resume and run as two DDP processes."""

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForImageTextToText, AutoProcessor, TrainerCallback
from trl import ModelConfig, SFTConfig, TrlParser

from langbridge_training import pretrain, sft
from langbridge_training.arguments import LangBridgeArguments
from langbridge_training.collator import LangBridgeCollator
from langbridge_training.data import load_llava_json, with_lazy_images
from modeling_langbridge.assembly.adapter import LangBridgeAdapter
from modeling_langbridge.cli import main as cli

CPU = {
    "use_cpu": True,
    "bf16": False,
    "report_to": [],
    "logging_steps": 1,
    "save_strategy": "no",
    "seed": 0,
    "lr_scheduler_type": "constant",
    "dataloader_num_workers": 0,
    "max_length": 160,
    "activation_checkpointing": False,
    "disable_tqdm": True,
}


def write_config(path: Path, **settings) -> Path:
    path.write_text(yaml.safe_dump({**CPU, **settings}))
    return path


def run_recipe(recipe, config: Path, callbacks=None):
    """Parse the YAML as `langbridge train` does, and run the recipe in this process."""
    args = TrlParser((LangBridgeArguments, SFTConfig, ModelConfig)).parse_args_and_config(["--config", str(config)])
    return recipe.main(*args, callbacks=callbacks)


def mean_loss(model_dir, data_file, image_folder, mode) -> float:
    """Token-weighted loss of a saved model over a LLaVA JSON file, with the training collator's labels."""
    model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    dataset, _ = with_lazy_images(load_llava_json(data_file, image_folder))
    collate = LangBridgeCollator(processor, None, mode)
    total, tokens = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(dataset), 16):
            batch = collate([dataset[i] for i in range(start, min(start + 16, len(dataset)))])
            count = int((batch["labels"][:, 1:] != -100).sum())
            total += model(**batch).loss.item() * count
            tokens += count
    return total / tokens


def parameters(model_dir) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in AutoModelForImageTextToText.from_pretrained(model_dir).state_dict().items()}


def changed(before, after) -> set[str]:
    return {name for name in before if not torch.equal(before[name], after[name])}


@pytest.fixture(scope="module")
def pretrained(world_model_dir, world, tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain") / "run"
    config = write_config(
        out.parent / "pretrain.yaml",
        model_name_or_path=str(world_model_dir),
        dataset=str(world["captions"]),
        image_folder=str(world["images"]),
        output_dir=str(out),
        max_steps=60,
        per_device_train_batch_size=8,
        learning_rate=3e-3,
    )
    assert cli(["train", "pretrain", "--config", str(config)]) == 0
    return out


def test_pretrain_lowers_the_caption_loss_and_trains_only_the_projector(world_model_dir, world, pretrained):
    before = mean_loss(world_model_dir, world["captions"], world["images"], "plain")
    after = mean_loss(pretrained, world["captions"], world["images"], "plain")
    assert after < before * 0.8, (before, after)  # a random vision tower: the projector learns what it can

    changes = changed(parameters(world_model_dir), parameters(pretrained))
    assert changes and all(name.startswith("model.multi_modal_projector.") for name in changes)
    assert len(changes) == 6  # all six projector tensors

    adapter = LangBridgeAdapter.from_pretrained(pretrained / "adapter")
    trained = AutoModelForImageTextToText.from_pretrained(pretrained).model.multi_modal_projector.state_dict()
    assert all(torch.equal(adapter.weights[k], trained[k]) for k in adapter.weights)
    assert json.loads((pretrained / "data_report.json").read_text())["kept"] == 64


@pytest.mark.parametrize("variant", ["full", "lora", "qlora"])
def test_sft_variants_learn_what_they_should_and_save_a_loadable_folder(variant, pretrained, world, tmp_path):
    out = tmp_path / variant
    settings = {
        "full": {"learning_rate": 1e-3, "activation_checkpointing": True},
        "lora": {"use_peft": True, "lora_r": 8, "lora_alpha": 16, "learning_rate": 3e-3, "projector_lr": 1e-3},
        "qlora": {
            "use_peft": True,
            "load_in_4bit": True,
            "lora_r": 8,
            "lora_alpha": 16,
            "learning_rate": 3e-3,
            "projector_lr": 1e-3,
        },
    }[variant]
    config = write_config(
        tmp_path / "sft.yaml",
        model_name_or_path=str(pretrained),
        dataset=str(world["qa"]),
        image_folder=str(world["images"]),
        output_dir=str(out),
        max_steps=40,
        per_device_train_batch_size=8,
        **settings,
    )
    trainer = run_recipe(sft, config)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5, losses

    folder = out if variant == "full" else out / "merged"
    before, after = parameters(pretrained), parameters(folder)
    changes = changed(before, after)
    vision = {n for n in before if n.startswith("model.vision_tower.")}
    projector = {n for n in before if n.startswith("model.multi_modal_projector.")}
    llm = set(before) - vision - projector
    assert projector <= changes and not vision & changes
    if variant == "full":
        assert llm <= changes  # every LLM tensor, embeddings and norms included
    else:
        lora_targets = {
            n
            for n in llm
            if n.endswith(
                tuple(
                    f".{p}.weight"
                    for p in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
                )
            )
        }
        assert llm & changes == lora_targets  # LoRA merged into exactly its target layers
        quantized = [type(m).__name__ for m in trainer.model.modules() if type(m).__name__ == "Linear4bit"]
        assert bool(quantized) == (variant == "qlora")

    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many shapes are there?"}]}],
        add_generation_prompt=True,
    )
    from PIL import Image

    inputs = processor(images=[Image.open(next(world["images"].glob("s1_*.png")))], text=[text], return_tensors="pt")
    with torch.no_grad():
        merged_logits = model(**inputs).logits
        assert model.generate(**inputs, max_new_tokens=4, do_sample=False).shape[1] > inputs["input_ids"].shape[1]
    if variant != "full":  # the adapter loads with PEFT on the base too, and agrees with the merged folder
        from peft import PeftModel

        from langbridge_training.trainer import peft_reads_old_checkpointing_name

        with peft_reads_old_checkpointing_name():
            with_peft = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(pretrained), out).eval()
        with torch.no_grad():
            torch.testing.assert_close(with_peft(**inputs).logits, merged_logits, rtol=1e-4, atol=1e-4)


class TestWhatTheLossSees:
    def test_labels_cover_assistant_replies_only(self, world_model_dir):
        processor = AutoProcessor.from_pretrained(world_model_dir)
        from modeling_langbridge.assembly.tiny import random_shapes_image

        sample = {
            "images": [random_shapes_image(0)],
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image"}, {"type": "text", "text": "What colour is the circle?"}],
                },
                {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
                {"role": "user", "content": [{"type": "text", "text": "How many shapes are there?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "two"}]},
            ],
        }
        text_only = {
            "images": [],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Say yes."}]},
                {"role": "assistant", "content": [{"type": "text", "text": "yes"}]},
            ],
        }
        batch = LangBridgeCollator(processor, None, "chat")([sample, text_only])
        tokenizer = processor.tokenizer
        learned = [tokenizer.decode(row[labels != -100]) for row, labels in zip(batch["input_ids"], batch["labels"])]
        assert learned == ["red<|im_end|>two<|im_end|>", "yes<|im_end|>"]
        assert (batch["labels"][batch["input_ids"] == processor.image_token_id] == -100).all()
        assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()

    def test_truncation_drops_and_counts_what_it_would_spoil(self, world_model_dir, world, tmp_path):
        records = [
            {
                "id": "fits",
                "image": "a.png",
                "conversations": [{"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "red"}],
            },
            {
                "id": "cut",
                "image": "a.png",
                "conversations": [
                    {"from": "human", "value": "A long preamble " * 8 + "<image>"},
                    {"from": "gpt", "value": "red"},
                ],
            },
            {
                "id": "no-target",
                "image": "a.png",
                "conversations": [
                    {"from": "human", "value": "<image>\n" + "Describe " * 12},
                    {"from": "gpt", "value": "red"},
                ],
            },
            {
                "id": "mismatch",
                "image": ["a.png", "a.png"],
                "conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "red"}],
            },
        ]
        (tmp_path / "data.json").write_text(json.dumps(records))
        from PIL import Image

        Image.new("RGB", (40, 40), "red").save(tmp_path / "a.png")
        config = write_config(
            tmp_path / "sft.yaml",
            model_name_or_path=str(world_model_dir),
            dataset=str(tmp_path / "data.json"),
            image_folder=str(tmp_path),
            output_dir=str(tmp_path / "out"),
            max_steps=2,
            max_length=40,
            per_device_train_batch_size=2,
        )
        trainer = run_recipe(sft, config)
        report = json.loads((tmp_path / "out" / "data_report.json").read_text())
        assert (report["samples"], report["kept"]) == (4, 1)
        assert (report["dropped_cut_image"], report["dropped_no_target"], report["dropped_image_mismatch"]) == (1, 1, 1)
        assert all(entry["loss"] > 0 for entry in trainer.state.log_history if "loss" in entry)  # never a silent 0.0

    def test_unreadable_images_are_skipped_and_counted_or_raise(self, world_model_dir, world, tmp_path):
        records = json.loads(world["captions"].read_text())[:8]
        images = tmp_path / "images"
        images.mkdir()
        for record in records:
            (images / record["image"]).write_bytes((world["images"] / record["image"]).read_bytes())
        (images / records[1]["image"]).write_bytes((images / records[1]["image"]).read_bytes()[:60])  # truncated PNG
        (images / records[5]["image"]).unlink()  # missing
        (tmp_path / "data.json").write_text(json.dumps(records))
        common = dict(
            model_name_or_path=str(world_model_dir),
            dataset=str(tmp_path / "data.json"),
            image_folder=str(images),
            max_steps=2,
            per_device_train_batch_size=4,
        )
        run_recipe(pretrain, write_config(tmp_path / "a.yaml", output_dir=str(tmp_path / "a"), **common))
        report = json.loads((tmp_path / "a" / "data_report.json").read_text())
        assert report["skipped_bad_images"] == 2 and len(report["bad_image_examples"]) == 2

        bad = f"({records[1]['image']}|{records[5]['image']})"  # whichever the shuffled order meets first
        with pytest.raises(ValueError, match=rf"Cannot read an image of sample (1|5) \(.*{bad}\).*skip_bad_images"):
            run_recipe(
                pretrain,
                write_config(tmp_path / "b.yaml", output_dir=str(tmp_path / "b"), skip_bad_images=False, **common),
            )


class Crash(TrainerCallback):
    """Stands in for a kill: the run stops dead at a step, after a checkpoint was written."""

    def __init__(self, at_step):
        self.at_step = at_step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.at_step:
            raise KeyboardInterrupt("killed")


def test_a_killed_run_resumes_to_the_same_weights(pretrained, world, tmp_path):
    common = dict(
        model_name_or_path=str(pretrained),
        dataset=str(world["qa"]),
        image_folder=str(world["images"]),
        max_steps=8,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        save_strategy="steps",
        save_steps=3,
        lr_scheduler_type="cosine",
        warmup_steps=2,
        lora_dropout=0.0,
    )
    run_recipe(sft, write_config(tmp_path / "straight.yaml", output_dir=str(tmp_path / "straight"), **common))
    interrupted = write_config(tmp_path / "killed.yaml", output_dir=str(tmp_path / "killed"), **common)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(sft, interrupted, callbacks=[Crash(at_step=5)])
    assert (tmp_path / "killed" / "checkpoint-3").exists() and not (tmp_path / "killed" / "checkpoint-6").exists()
    run_recipe(
        sft,
        write_config(
            tmp_path / "resumed.yaml", output_dir=str(tmp_path / "killed"), resume_from_checkpoint="true", **common
        ),
    )
    straight, resumed = parameters(tmp_path / "straight"), parameters(tmp_path / "killed")
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert changed(parameters(pretrained), straight)


def sft_in_two_processes(config: Path, output_dir: Path, port: int, env: dict | None = None) -> list[dict]:
    """The SFT recipe under torchrun on two CPU processes (tests/ddp_probe.py); each rank's weight digest."""
    probe = Path(__file__).with_name("ddp_probe.py")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(port),
            str(probe),
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, **(env or {})},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads((output_dir / f"digest-rank{rank}.json").read_text()) for rank in (0, 1)]


@pytest.mark.slow
def test_torchrun_two_processes_train_identical_replicas(pretrained, world, tmp_path):
    config = write_config(
        tmp_path / "ddp.yaml",
        model_name_or_path=str(pretrained),
        dataset=str(world["qa"]),
        image_folder=str(world["images"]),
        output_dir=str(tmp_path / "out"),
        max_steps=4,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        ddp_backend="gloo",
    )
    digests = sft_in_two_processes(config, tmp_path / "out", port=29517)
    assert [d["world_size"] for d in digests] == [2, 2]
    assert digests[0]["parameters"] == digests[1]["parameters"]
    initial = hashlib.sha256(
        b"".join(v.numpy().tobytes() for _, v in sorted(parameters(pretrained).items()))
    ).hexdigest()
    assert digests[0]["parameters"] != initial


@pytest.mark.slow
def test_deepspeed_zero3_trains_with_partitioned_weights(pretrained, world, tmp_path):
    """ZeRO-3 keeps every weight partitioned (empty) except while it is in use. Inside the engine's forward, which
    is how training runs, DeepSpeed gathers a partitioned parameter as soon as a forward reads it and registers it
    with the module running, which gathers it on its later calls too: in training the projector finds `vocab_proj`'s
    weight whole, reads W and b for the fold and gets E by calling the embedding module. Outside the engine's forward
    (the model called directly, as `generate` calls it) and before any training step, only a called module gathers its
    own weights: `vocab_proj`'s weight is empty, so the projector must call the layer (`reads_parameters` false,
    `combine_by_calling`). The probe computes visual tokens that way before training; they must equal the unsharded
    model's. DeepSpeed runs on CPU (gloo) here."""
    pytest.importorskip("deepspeed")
    zero3 = {
        "zero_optimization": {
            "stage": 3,
            "stage3_param_persistence_threshold": 0,  # partition even tiny weights
            "stage3_gather_16bit_weights_on_model_save": True,
        },
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
    }
    (tmp_path / "zero3.json").write_text(json.dumps(zero3))
    config = write_config(
        tmp_path / "zero3.yaml",
        model_name_or_path=str(pretrained),
        dataset=str(world["qa"]),
        image_folder=str(world["images"]),
        output_dir=str(tmp_path / "out"),
        max_steps=3,
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        deepspeed=str(tmp_path / "zero3.json"),
    )
    digests = sft_in_two_processes(config, tmp_path / "out", port=29519, env={"DS_ACCELERATOR": "cpu"})
    assert [d["world_size"] for d in digests] == [2, 2]
    assert digests[0]["parameters"] == hashlib.sha256(b"").hexdigest()  # every weight partitioned away from the module
    changes = changed(parameters(pretrained), parameters(tmp_path / "out"))  # the gathered 16-bit save
    assert "model.multi_modal_projector.vocab_proj.weight" in changes
    assert not any(name.startswith("model.vision_tower.") for name in changes)

    partitioned = torch.load(tmp_path / "out" / "zero3-visual-tokens.pt", weights_only=True)
    assert partitioned["weight_numel_outside_forward"] == 0  # partitioned away
    assert partitioned["vocab_proj_calls"] == 1  # so the projector called the layer instead of reading it
    with torch.no_grad():
        whole = AutoModelForImageTextToText.from_pretrained(pretrained).model.get_image_features(
            pixel_values=partitioned["pixel_values"]
        )
    torch.testing.assert_close(partitioned["visual_tokens"], whole.pooler_output[0], rtol=1e-4, atol=1e-5)


def test_llava_json_in_the_official_layouts_reads_as_chat_samples(tmp_path):
    records = [
        {
            "id": "GCC_train_000000000",
            "image": "00000/000000000.jpg",
            "conversations": [  # blip_laion_cc_sbu_558k
                {"from": "human", "value": "Render a clear and concise summary of the photo.\n<image>"},
                {"from": "gpt", "value": "select luxury furniture 3 - inch gel memory foam mattress topper"},
            ],
        },
        {
            "id": "000000033471",
            "image": "coco/train2017/000000033471.jpg",
            "conversations": [  # llava_v1_5_mix665k
                {"from": "human", "value": "<image>\nWhat are the colors of the bus in the image?"},
                {"from": "gpt", "value": "The bus in the image is white and red."},
                {"from": "human", "value": "What feature can be seen on the back of the bus?"},
                {"from": "gpt", "value": "The back of the bus features an advertisement."},
            ],
        },
        {
            "id": "i6IyJda_0",
            "model": "",
            "conversations": [  # ShareGPT text-only
                {"from": "human", "value": "How to tell if a customer segment is well segmented?"},
                {"from": "gpt", "value": "A well segmented customer segment should be distinct."},
            ],
        },
    ]
    (tmp_path / "mix.json").write_text(json.dumps(records))
    dataset = load_llava_json(tmp_path / "mix.json", "/data/llava")
    assert dataset[0]["images"] == ["/data/llava/00000/000000000.jpg"]
    assert [item["type"] for item in dataset[0]["messages"][0]["content"]] == ["text", "image"]
    assert dataset[0]["messages"][0]["content"][0]["text"] == "Render a clear and concise summary of the photo."
    assert [m["role"] for m in dataset[1]["messages"]] == ["user", "assistant", "user", "assistant"]
    assert dataset[1]["messages"][0]["content"][1]["text"] == "What are the colors of the bus in the image?"
    assert dataset[2]["images"] == [] and dataset[2]["messages"][0]["content"] == [
        {"type": "text", "text": "How to tell if a customer segment is well segmented?"}
    ]


CONFIGURATION = Path(__file__).parent.parent / "configuration"


@pytest.mark.parametrize("recipe", sorted(p.name for p in CONFIGURATION.glob("*.yaml")))
def test_shipped_recipes_parse_into_the_recipe_arguments(recipe, monkeypatch):
    monkeypatch.setattr("transformers.training_args.TrainingArguments._validate_args", lambda self: None)  # no GPU here
    script_args, training_args, model_args = TrlParser(
        (LangBridgeArguments, SFTConfig, ModelConfig)
    ).parse_args_and_config(["--config", str(CONFIGURATION / recipe)])
    assert script_args.dataset.endswith(".json") and training_args.output_dir.startswith("checkpoints/")
    assert model_args.model_name_or_path
    if "qlora" in recipe:
        assert model_args.use_peft and model_args.load_in_4bit
    if model_args.model_name_or_path.endswith(".json"):
        assert (CONFIGURATION.parent / model_args.model_name_or_path).exists()


@pytest.mark.parametrize("launch", sorted(p.name for p in (CONFIGURATION / "accelerate").glob("*.yaml")))
def test_launch_configs_name_a_distributed_type(launch):
    config = yaml.safe_load((CONFIGURATION / "accelerate" / launch).read_text())
    assert config["distributed_type"] in {"MULTI_GPU", "DEEPSPEED", "FSDP"}
    if config["distributed_type"] == "DEEPSPEED":
        assert config["deepspeed_config"]["zero_stage"] in (2, 3)


def test_a_datasets_dataset_with_messages_and_images_trains(world_model_dir, world, tmp_path):
    """The layout of Hub datasets such as HuggingFaceH4/llava-instruct-mix-vsft: `messages` + a list of images."""
    from datasets import Dataset, Sequence
    from datasets import Image as ImageFeature
    from PIL import Image

    records = json.loads(world["qa"].read_text())[:12]
    rows = {"messages": [], "images": []}
    for record in records:
        rows["images"].append([Image.open(world["images"] / record["image"])])
        rows["messages"].append(
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "text": None},
                        {"type": "text", "text": record["conversations"][0]["value"].replace("<image>\n", "")},
                    ],
                },
                {"role": "assistant", "content": [{"type": "text", "text": record["conversations"][1]["value"]}]},
            ]
        )
    dataset = Dataset.from_dict(rows).cast_column("images", Sequence(ImageFeature()))
    (tmp_path / "parquet").mkdir()
    dataset.to_parquet(tmp_path / "parquet" / "train.parquet")
    dataset.save_to_disk(tmp_path / "saved")
    for source in ("parquet", "saved"):
        config = write_config(
            tmp_path / f"{source}.yaml",
            model_name_or_path=str(world_model_dir),
            dataset=str(tmp_path / source),
            output_dir=str(tmp_path / f"out-{source}"),
            max_steps=2,
            per_device_train_batch_size=4,
        )
        trainer = run_recipe(sft, config)
        assert trainer.state.global_step == 2
        assert json.loads((tmp_path / f"out-{source}" / "data_report.json").read_text())["kept"] == 12


def test_an_unfrozen_vision_tower_trains_at_its_own_rate(pretrained, world, tmp_path):
    config = write_config(
        tmp_path / "sft.yaml",
        model_name_or_path=str(pretrained),
        dataset=str(world["qa"]),
        image_folder=str(world["images"]),
        output_dir=str(tmp_path / "out"),
        max_steps=3,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        train_vision_tower=True,
        vision_tower_lr=1e-5,
        projector_lr=5e-4,
    )
    trainer = run_recipe(sft, config)
    rates = {}
    for group in trainer.optimizer.param_groups:
        for parameter in group["params"]:
            rates[id(parameter)] = group["lr"]
    by_part = {}
    for name, parameter in trainer.model.named_parameters():
        part = "vision" if "vision_tower" in name else "projector" if "multi_modal_projector" in name else "llm"
        by_part.setdefault(part, set()).add(rates[id(parameter)])
    assert by_part == {"vision": {1e-5}, "projector": {5e-4}, "llm": {1e-3}}
    changes = changed(parameters(pretrained), parameters(tmp_path / "out"))
    assert any(name.startswith("model.vision_tower.") for name in changes)


def test_a_hub_style_pair_is_composed_before_training(parts, world, tmp_path):
    pair = tmp_path / "pair.json"
    pair.write_text(
        json.dumps(
            {
                "vision_model_name_or_path": str(parts["clip_vision"]),
                "language_model_name_or_path": str(parts["qwen2"]),
                "projector_hidden_size": 32,
                "shared_vocab_size": 64,
                "coefficient_activation": "none",
                "vision_feature_layer": -2,
            }
        )
    )
    out = tmp_path / "out"
    config = write_config(
        tmp_path / "pretrain.yaml",
        model_name_or_path=str(pair),
        dataset=str(world["captions"]),
        image_folder=str(world["images"]),
        output_dir=str(out),
        max_steps=2,
        per_device_train_batch_size=4,
    )
    run_recipe(pretrain, config)
    assert AutoModelForImageTextToText.from_pretrained(out / "composed").config.shared_vocab_size == 64
    assert (out / "adapter" / "langbridge_adapter.json").exists()


@pytest.mark.parametrize("folder_fixture", ["qwen_clip_dir", "llama_siglip_dir"])  # raw-logit and softmax coefficients
def test_bf16_mixed_precision_trains_and_runs_the_combination_in_the_steps_dtype(
    folder_fixture, world, tmp_path, request
):
    """`bf16: true` (as the shipped recipes set) runs the model under autocast: the projector's autograd functions
    must still work, and the combination runs its products in bf16 like the rest of the step (the precision policy
    of projection_langbridge.py), to within bf16's precision of the exact visual tokens, returned in the
    embeddings' dtype."""
    folder = request.getfixturevalue(folder_fixture)
    config = write_config(
        tmp_path / "sft.yaml",
        model_name_or_path=str(folder),
        dataset=str(world["qa"]),
        image_folder=str(world["images"]),
        output_dir=str(tmp_path / "out"),
        max_steps=2,
        per_device_train_batch_size=2,
        bf16=True,
    )
    trainer = run_recipe(sft, config)
    assert trainer.state.global_step == 2 and all(
        math.isfinite(log["loss"]) for log in trainer.state.log_history if "loss" in log
    )
    assert "model.multi_modal_projector.vocab_proj.weight" in changed(parameters(folder), parameters(tmp_path / "out"))

    model = AutoModelForImageTextToText.from_pretrained(folder)
    projector, embed = model.model.multi_modal_projector, model.get_input_embeddings()
    features = torch.randn(2, 400, projector.linear_1.in_features)  # enough tokens that the raw path folds
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = projector.hidden_states(features)  # the MLP itself runs in bf16, as autocast means it to
        visual_tokens = projector(features, embed)
    logits = torch.nn.functional.linear(
        hidden.double(), projector.vocab_proj.weight.double(), projector.vocab_proj.bias.double()
    )
    coefficients = logits.softmax(-1) if projector.coefficient_activation == "softmax" else logits
    expected = coefficients @ projector.vocab_embeddings(embed).double()
    assert visual_tokens.dtype == torch.float32
    error = ((visual_tokens.double() - expected).norm() / expected.norm()).item()
    assert 1e-5 < error < 2e-2  # bf16 products (float32 ones would be ~1e-7), float32 accumulation
