"""Padding-free and packed training of image-text samples (training/packing.py): a packed batch gives the padded
batch's per-token losses and gradients, in both recipes' formats and with tiled images; a packed sample is blind to
the others in its row; packed recipe runs follow the padded runs' loss curves (with LoRA, gradient checkpointing, the
caption-word loss, two DDP processes); and what cannot work is refused in one sentence before any work.

Several tests carry their own negative control: the same check on a batch packed wrongly (positions running on
across samples, so each sample attends to the ones before it) must fail, so the check can tell."""

import json
import math
import re

import pytest
import torch
import yaml
from test_training import (  # noqa: F401 (pretrained: a fixture)
    changed,
    parameters,
    pretrained,
    run_recipe,
    sft_in_two_processes,
    write_config,
)
from transformers import AutoModelForImageTextToText, AutoProcessor
from trl.trainer.utils import add_fused_lm_head

from langbridge_training import pretrain, sft
from langbridge_training.arguments import SettingError, packing_of, parse_recipe
from langbridge_training.caption_words import CaptionWordLoss
from langbridge_training.collator import LangBridgeCollator
from langbridge_training.data import DataReport, fit_to_length, load_llava_json, with_lazy_images
from langbridge_training.packing import Packing, best_fit_decreasing, check_model_packs, row_layout
from modeling_langbridge.assembly.tiny import random_shapes_image
from modeling_langbridge.cli import main as cli
from modeling_langbridge.errors import LangBridgeUsageError

PADDING_FREE = Packing("padding_free")


# ---------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------


def samples(data_file, image_folder, count: int) -> list[dict]:
    dataset, _ = with_lazy_images(load_llava_json(data_file, image_folder))
    return [dataset[i] for i in range(count)]


def text_only(question: str, answer: str) -> dict:
    return {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": question}]},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]},
        ],
        "images": [],
    }


def tiled_samples(tmp_path) -> list[dict]:
    """Chat samples with images of different sizes, so of different token counts, one with two images."""
    from PIL import Image

    images = []
    for n, (width, height) in enumerate([(90, 30), (64, 64), (30, 90), (45, 70)]):
        image = random_shapes_image(n, size=96).resize((width, height), Image.Resampling.BICUBIC)
        image.save(tmp_path / f"{n}.png")
        images.append(str(tmp_path / f"{n}.png"))
    records = [
        {"image": images[0], "q": "<image>\nWhat is in the picture?", "a": "a red circle."},
        {"image": [images[1], images[2]], "q": "<image> and <image>: which is taller?", "a": "the second one."},
        {"image": images[3], "q": "<image>\nDescribe it.", "a": "a blue square on black."},
    ]
    (tmp_path / "tiled.json").write_text(
        json.dumps(
            [
                {
                    "image": r["image"],
                    "conversations": [{"from": "human", "value": r["q"]}, {"from": "gpt", "value": r["a"]}],
                }
                for r in records
            ]
        )
    )
    return samples(tmp_path / "tiled.json", None, 3) + [text_only("Say hello.", "hello.")]


# ---------------------------------------------------------------------------------------------------------------
# A packed batch computes what the padded batch computes
# ---------------------------------------------------------------------------------------------------------------


def positions_running_on(batch: dict) -> dict:
    """The negative control: the same packed batch with positions running on across its samples, as if the row were
    one sequence (each sample then attends to those before it)."""
    broken = dict(batch)
    rows, width = batch["input_ids"].shape
    broken["position_ids"] = torch.arange(width).expand(rows, width).clone()
    return broken


def per_token(model, batch: dict, spans: list[tuple[int, int, int]]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Each sample's per-token log-probabilities of its labels through TRL's fused LM head (the recipes' loss), and
    the loss the trainer takes (their sum over the labelled tokens), whose gradients are left in the parameters."""
    model.zero_grad(set_to_none=True)
    inputs = {k: v for k, v in batch.items() if k != "sample_spans"}
    out = model(**inputs, fused_lm_head=True)
    loss = -out.log_probs.sum() / out.label_mask.sum()
    loss.backward()
    # log_probs[r, t - 1] scores the label at t
    return [out.log_probs[r, s : s + n - 1].detach() for r, s, n in spans], loss.detach()


def padded_spans(batch: dict) -> list[tuple[int, int, int]]:
    return [(i, 0, int(n)) for i, n in enumerate(batch["attention_mask"].sum(dim=1))]


def gradients(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_packed_equals_padded(model, processor, examples, mode, max_length, one_row):
    padded = LangBridgeCollator(processor, max_length, mode)(examples)
    packed = LangBridgeCollator(processor, max_length, mode, Packing("padding_free", one_row=one_row))(examples)
    assert "attention_mask" not in packed
    spans = [tuple(span) for span in packed["sample_spans"].tolist()]
    rows = packed["input_ids"].shape[0]
    assert (rows == 1) if one_row else (rows > 1)  # several rows, and samples moved between them, are what is tested

    # The rows hold the samples whole, in the layout's order (captions can repeat, so tokens cannot tell which)
    lengths = padded["attention_mask"].sum(dim=1).tolist()
    sample_of_span = [i for row in row_layout(lengths, None, max_length, one_row) for i in row]
    for (r, s, n), i in zip(spans, sample_of_span):
        assert n == lengths[i] and torch.equal(padded["input_ids"][i, :n], packed["input_ids"][r, s : s + n])
    assert sorted(sample_of_span) == list(range(len(examples)))
    assert one_row or sample_of_span != sorted(sample_of_span)  # samples (and their images) moved between rows
    for (r, s, n), i in zip(spans, sample_of_span):
        assert packed["labels"][r, s] == -100  # never predicted from the sample before it
        assert torch.equal(packed["labels"][r, s + 1 : s + n], padded["labels"][i, 1:n])
        assert torch.equal(packed["position_ids"][r, s : s + n], torch.arange(n))

    padded_tokens, padded_loss = per_token(model, padded, padded_spans(padded))
    padded_gradients = gradients(model)
    packed_tokens, packed_loss = per_token(model, packed, spans)
    packed_gradients = gradients(model)
    for span_tokens, i in zip(packed_tokens, sample_of_span):
        torch.testing.assert_close(span_tokens, padded_tokens[i], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(packed_loss, padded_loss, rtol=1e-6, atol=1e-6)
    assert packed_gradients.keys() == padded_gradients.keys()
    for name, grad in packed_gradients.items():
        torch.testing.assert_close(grad, padded_gradients[name], rtol=1e-4, atol=1e-6, msg=name)

    # Negative control: packed without restarting the positions, the same comparison fails.
    wrong_tokens, _ = per_token(model, positions_running_on(packed), spans)
    worst = max((wrong - padded_tokens[i]).abs().max().item() for wrong, i in zip(wrong_tokens, sample_of_span))
    assert worst > 1e-3, worst


@pytest.mark.parametrize("one_row", [False, True], ids=["rows", "one-row"])
def test_packed_captions_give_the_padded_batchs_losses_and_gradients(world_model_dir, world, one_row):
    """Stage 1's `plain` format, every part trained (the vision tower too), float32."""
    model = AutoModelForImageTextToText.from_pretrained(world_model_dir, dtype=torch.float32)
    model.requires_grad_(True)
    add_fused_lm_head(model)  # what SFTTrainer does to the model
    processor = AutoProcessor.from_pretrained(world_model_dir)
    examples = samples(world["captions"], world["images"], 7)
    # rows of at most 2 captions (each is 16 image tokens + the caption)
    longest = max(LangBridgeCollator(processor, None, "plain")(examples)["attention_mask"].sum(dim=1).tolist())
    assert_packed_equals_padded(model, processor, examples, "plain", 2 * longest + 1, one_row)


@pytest.mark.parametrize("one_row", [False, True], ids=["rows", "one-row"])
def test_packed_conversations_give_the_padded_batchs_losses_and_gradients(world_model_dir, world, one_row):
    """Stage 2's `chat` format: multi-turn conversations with an image, and a text-only sample among them."""
    model = AutoModelForImageTextToText.from_pretrained(world_model_dir, dtype=torch.float32)
    model.requires_grad_(True)
    add_fused_lm_head(model)
    processor = AutoProcessor.from_pretrained(world_model_dir)
    examples = samples(world["qa"], world["images"], 5)
    examples.insert(2, text_only("How many shapes are there?", "There are two shapes."))
    lengths = LangBridgeCollator(processor, None, "chat")(examples)["attention_mask"].sum(dim=1).tolist()
    assert_packed_equals_padded(model, processor, examples, "chat", max(lengths) + min(lengths), one_row)


def test_packed_tiled_images_give_the_padded_batchs_losses_and_gradients(tiled_dir, tmp_path):
    """Tiled images of different sizes (so different token and view counts), two in one sample: each sample's views
    and `image_sizes` follow it into its row."""
    model = AutoModelForImageTextToText.from_pretrained(tiled_dir, dtype=torch.float32)
    model.requires_grad_(True)
    add_fused_lm_head(model)
    processor = AutoProcessor.from_pretrained(tiled_dir)
    examples = tiled_samples(tmp_path)
    lengths = LangBridgeCollator(processor, None, "chat")(examples)["attention_mask"].sum(dim=1).tolist()
    assert len(set(lengths)) == len(lengths)
    assert_packed_equals_padded(model, processor, examples, "chat", max(lengths) + min(lengths), one_row=False)


def test_changing_one_packed_sample_changes_no_other_samples_logits(world_model_dir, world):
    model = AutoModelForImageTextToText.from_pretrained(world_model_dir, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(world_model_dir)
    examples = samples(world["qa"], world["images"], 4)
    collate = LangBridgeCollator(processor, None, "chat", PADDING_FREE)  # one row: every sample beside every other
    changed_examples = list(examples)
    changed_examples[1] = samples(world["qa"], world["images"], 9)[8]  # another image and conversation
    assert changed_examples[1]["messages"] != examples[1]["messages"]

    def logits(batch):
        with torch.no_grad():
            inputs = {k: v for k, v in batch.items() if k != "sample_spans"}
            return model(**inputs).logits

    def others(batch, out):  # the logits of samples 0, 2 and 3, each by its own span
        spans = batch["sample_spans"].tolist()
        return [out[r, s : s + n] for k, (r, s, n) in enumerate(spans) if k != 1]

    before, after = collate(examples), collate(changed_examples)
    assert before["input_ids"].shape[0] == 1
    for a, b in zip(others(before, logits(before)), others(after, logits(after))):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)

    # Negative control: with positions running on, the samples after the changed one see it.
    wrong_before = others(before, logits(positions_running_on(before)))
    wrong_after = others(after, logits(positions_running_on(after)))
    assert max((a - b).abs().max().item() for a, b in zip(wrong_before, wrong_after)) > 1e-3


def test_the_caption_word_loss_maps_each_image_to_its_own_caption_when_packed(world_model_dir, world):
    model = AutoModelForImageTextToText.from_pretrained(world_model_dir, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(world_model_dir)
    examples = samples(world["captions"], world["images"], 6)
    words = CaptionWordLoss(model)
    longest = max(LangBridgeCollator(processor, None, "plain")(examples)["attention_mask"].sum(dim=1).tolist())

    def caption_word_loss(batch):
        inputs = {k: v for k, v in batch.items() if k != "sample_spans"}
        with words.capture(), torch.no_grad():
            model(**inputs)
        return words(inputs["labels"], batch.get("sample_spans"))

    padded = caption_word_loss(LangBridgeCollator(processor, None, "plain")(examples))
    packed_batch = LangBridgeCollator(processor, 3 * longest, "plain", PADDING_FREE)(examples)
    assert packed_batch["input_ids"].shape[0] == 2  # rows of three captions
    torch.testing.assert_close(caption_word_loss(packed_batch), padded, rtol=1e-6, atol=1e-6)

    # Read by rows instead of samples, the images would not match their captions.
    inputs = {k: v for k, v in packed_batch.items() if k != "sample_spans"}
    with words.capture(), torch.no_grad():
        model(**inputs)
    with pytest.raises(LangBridgeUsageError, match="6 images for 2 samples"):
        words(inputs["labels"])


# ---------------------------------------------------------------------------------------------------------------
# Lengths and rows
# ---------------------------------------------------------------------------------------------------------------


def test_best_fit_decreasing_packs_as_trl_does():
    """Our best-fit decreasing (on lengths measured before training) against TRL's own `pack_dataset(..., "bfd")` on
    token lists of the same lengths: the same rows."""
    from datasets import Dataset
    from trl import pack_dataset

    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 120, (300,), generator=generator).tolist()
    ours = best_fit_decreasing(lengths, 128)
    assert sorted(n for row in ours for n in row) == list(range(len(lengths)))
    assert all(sum(lengths[n] for n in row) <= 128 for row in ours)
    dataset = Dataset.from_dict({"input_ids": [[n] * length for n, length in enumerate(lengths)]})
    theirs = pack_dataset(dataset, 128, "bfd", {"batch_size": len(lengths)})
    trl_rows = [sorted({token for token in row}) for row in theirs["input_ids"]]
    assert sorted(sorted(row) for row in ours) == sorted(trl_rows)


def test_row_layout_keeps_planned_rows_and_fits_a_batch_into_balanced_rows():
    assert row_layout([5, 6, 7, 3], None, 10, one_row=False) == [[2], [1], [0, 3]]
    assert row_layout([88] * 8, None, 512, one_row=False) == [[0, 2, 4, 6], [1, 3, 5, 7]]  # not 5 + 3 samples
    assert row_layout([5, 6, 7, 3], None, 10, one_row=True) == [[0, 1, 2, 3]]
    assert row_layout([5, 6, 7, 3], None, None, one_row=False) == [[0, 1, 2, 3]]
    # planned rows keep their samples; one that no longer fits (a replaced sample) starts a row of its own
    assert row_layout([5, 4, 7, 3], [0, 0, 1, 1], 10, one_row=False) == [[0, 1], [2, 3]]
    assert row_layout([5, 6, 7, 3], [0, 0, 1, 1], 10, one_row=False) == [[0], [1], [2, 3]]


@pytest.mark.parametrize("mode", ["plain", "chat"])
def test_measured_lengths_are_the_collators_token_counts(world_model_dir, world, mode):
    """Packing plans rows from the lengths `fit_to_length` measures without opening an image: they must be the
    token counts the collator builds (after truncation)."""
    processor = AutoProcessor.from_pretrained(world_model_dir)
    data = world["captions" if mode == "plain" else "qa"]
    for max_length in (None, 60):
        kept = fit_to_length(load_llava_json(data, world["images"]), processor, 16, max_length, mode, DataReport())
        dataset, loader = with_lazy_images(kept)
        batch = LangBridgeCollator(processor, max_length, mode)([dataset[i] for i in range(16)])
        assert loader.lengths[:16] == batch["attention_mask"].sum(dim=1).tolist()


def test_measured_lengths_count_tiled_images_by_their_size(tiled_dir, tmp_path):
    processor = AutoProcessor.from_pretrained(tiled_dir)
    tiled_samples(tmp_path)
    kept = fit_to_length(load_llava_json(tmp_path / "tiled.json"), processor, 16, None, "chat", DataReport())
    dataset, loader = with_lazy_images(kept)
    batch = LangBridgeCollator(processor, None, "chat")([dataset[i] for i in range(3)])
    assert loader.lengths == batch["attention_mask"].sum(dim=1).tolist()


# ---------------------------------------------------------------------------------------------------------------
# Recipe runs
# ---------------------------------------------------------------------------------------------------------------


def logged(trainer, key: str = "loss") -> list[float]:
    return [entry[key] for entry in trainer.state.log_history if key in entry]


def test_a_padding_free_sft_run_follows_the_padded_runs_loss_curve_with_lora_and_checkpointing(
    pretrained, world, tmp_path
):
    """The same samples in the same steps: padding-free changes the layout only, so every step's loss (and TRL's
    token count) is the padded run's, here through PEFT's LoRA and gradient checkpointing."""
    common = dict(
        model_name_or_path=str(pretrained),
        dataset=str(world["qa"]),
        image_folder=str(world["images"]),
        max_steps=6,
        per_device_train_batch_size=6,
        learning_rate=3e-3,
        use_peft=True,
        lora_r=8,
        lora_alpha=16,
        lora_dropout=0.0,
        merge_lora=False,
        activation_checkpointing=True,
    )
    padded = run_recipe(sft, write_config(tmp_path / "a.yaml", output_dir=str(tmp_path / "padded"), **common))
    free = run_recipe(
        sft, write_config(tmp_path / "b.yaml", output_dir=str(tmp_path / "free"), padding_free=True, **common)
    )
    assert len(logged(free)) == 6 and logged(free)[-1] < logged(free)[0]
    assert logged(free) == pytest.approx(logged(padded), rel=1e-4)
    assert logged(free, "num_tokens") == logged(padded, "num_tokens")


def test_a_packed_sft_run_learns_as_the_padded_run_does(pretrained, world, tmp_path):
    """Packing (best fit into rows of max_length) changes which samples share a step; over the same epochs both
    runs end near the same loss."""
    common = dict(
        model_name_or_path=str(pretrained),
        dataset=str(world["qa"]),
        image_folder=str(world["images"]),
        num_train_epochs=3,
        learning_rate=1e-3,
        max_length=320,
    )
    padded = run_recipe(
        sft,
        write_config(tmp_path / "a.yaml", output_dir=str(tmp_path / "padded"), per_device_train_batch_size=4, **common),
    )
    packed = run_recipe(
        sft,
        write_config(
            tmp_path / "b.yaml",
            output_dir=str(tmp_path / "packed"),
            packing=True,
            per_device_train_batch_size=1,
            **common,
        ),
    )
    report = json.loads((tmp_path / "packed" / "data_report.json").read_text())
    assert report["kept"] == 64 and report["packed_rows"] < 64 / 2
    assert logged(packed, "num_tokens")[-1] == logged(padded, "num_tokens")[-1]  # the same tokens, 3 epochs
    first, last = logged(padded), logged(packed)
    padded_end = sum(first[-4:]) / 4
    packed_end = sum(last[-4:]) / 4
    assert packed_end < 0.8 * last[0] and padded_end < 0.8 * first[0]
    assert abs(packed_end - padded_end) < 0.25 * padded_end, (padded_end, packed_end)


def test_a_packed_stage_one_run_with_the_coefficient_losses_matches_the_padded_run(world_model_dir, world, tmp_path):
    common = dict(
        model_name_or_path=str(world_model_dir),
        dataset=str(world["captions"]),
        image_folder=str(world["images"]),
        max_steps=4,
        per_device_train_batch_size=8,
        learning_rate=3e-3,
        caption_word_loss=0.1,
        coefficient_spread_loss=0.1,
        max_length=64,
    )
    padded = run_recipe(pretrain, write_config(tmp_path / "a.yaml", output_dir=str(tmp_path / "padded"), **common))
    free = run_recipe(
        pretrain, write_config(tmp_path / "b.yaml", output_dir=str(tmp_path / "free"), padding_free=True, **common)
    )
    assert len(logged(free, "caption_word_loss")) == 4
    for loss in ("caption_word_loss", "coefficient_spread_loss"):
        assert logged(free, loss) == pytest.approx(logged(padded, loss), rel=1e-4)
    assert logged(free) == pytest.approx(logged(padded), rel=1e-4)


def test_a_packed_qlora_run_trains_its_adapters(pretrained, world, tmp_path):
    out = tmp_path / "qlora"
    config = write_config(
        tmp_path / "q.yaml",
        model_name_or_path=str(pretrained),
        dataset=str(world["qa"]),
        image_folder=str(world["images"]),
        output_dir=str(out),
        max_steps=3,
        per_device_train_batch_size=2,
        learning_rate=3e-3,
        use_peft=True,
        load_in_4bit=True,
        lora_r=8,
        lora_alpha=16,
        packing=True,
        max_length=400,
    )
    trainer = run_recipe(sft, config)
    assert len(logged(trainer)) == 3 and all(math.isfinite(loss) for loss in logged(trainer))
    changes = changed(parameters(pretrained), parameters(out / "merged"))
    assert any("language_model" in name for name in changes)


def test_a_packed_run_skips_and_counts_unreadable_images(world_model_dir, world, tmp_path):
    """A planned row whose sample has a missing or broken image takes the next readable sample instead, as a padded
    batch does; a replacement that no longer fits the row starts another."""
    records = json.loads(world["captions"].read_text())[:12]
    images = tmp_path / "images"
    images.mkdir()
    for record in records:
        (images / record["image"]).write_bytes((world["images"] / record["image"]).read_bytes())
    (images / records[1]["image"]).write_bytes((images / records[1]["image"]).read_bytes()[:60])  # truncated PNG
    (images / records[5]["image"]).unlink()  # missing
    (tmp_path / "data.json").write_text(json.dumps(records))
    config = write_config(
        tmp_path / "p.yaml",
        model_name_or_path=str(world_model_dir),
        dataset=str(tmp_path / "data.json"),
        image_folder=str(images),
        output_dir=str(tmp_path / "out"),
        max_steps=3,
        per_device_train_batch_size=1,
        packing=True,
        max_length=80,
    )
    trainer = run_recipe(pretrain, config)
    report = json.loads((tmp_path / "out" / "data_report.json").read_text())
    assert report["skipped_bad_images"] == 2 and report["packed_rows"] <= 12 // 3  # captions of ~25 tokens in 80
    assert len(logged(trainer)) == 3 and all(math.isfinite(loss) for loss in logged(trainer))


@pytest.mark.slow
def test_torchrun_two_processes_pack_their_own_batches_into_identical_replicas(pretrained, world, tmp_path):
    config = write_config(
        tmp_path / "ddp.yaml",
        model_name_or_path=str(pretrained),
        dataset=str(world["qa"]),
        image_folder=str(world["images"]),
        output_dir=str(tmp_path / "out"),
        max_steps=3,
        per_device_train_batch_size=1,
        learning_rate=1e-3,
        ddp_backend="gloo",
        packing=True,
        max_length=320,
    )
    digests = sft_in_two_processes(config, tmp_path / "out", port=29523)
    assert [d["world_size"] for d in digests] == [2, 2]
    assert digests[0]["parameters"] == digests[1]["parameters"]
    assert json.loads((tmp_path / "out" / "data_report.json").read_text())["packed_rows"] < 32


def test_length_grouped_sampling_reads_the_measured_lengths(pretrained, world, tmp_path):
    from transformers.trainer_pt_utils import LengthGroupedSampler

    config = write_config(
        tmp_path / "g.yaml",
        model_name_or_path=str(pretrained),
        dataset=str(world["qa"]),
        image_folder=str(world["images"]),
        output_dir=str(tmp_path / "out"),
        max_steps=1,
        per_device_train_batch_size=4,
        train_sampling_strategy="group_by_length",
    )
    trainer = run_recipe(sft, config)
    sampler = trainer._get_train_sampler()
    assert isinstance(sampler, LengthGroupedSampler)
    assert sampler.lengths == trainer.image_loader.lengths and len(sampler.lengths) == 64


# ---------------------------------------------------------------------------------------------------------------
# Refusals
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"packing": True, "packing_strategy": "wrapped"}, "packing_strategy (in recipe .*) is 'wrapped'; give bfd"),
        ({"packing": True, "packing_strategy": "bfd_split"}, "would split an image's tokens from its pixels"),
        ({"packing": True, "max_length": None}, "max_length (in recipe .*) is None; give the length of a packed row"),
        (
            {"padding_free": True, "attn_implementation": "paged|sdpa"},
            "attn_implementation (in recipe .*) is 'paged|sdpa'; give sdpa, eager, flex_attention",
        ),
    ],
    ids=["wrapped", "bfd_split", "no-max-length", "paged-attention"],
)
def test_what_cannot_pack_is_refused_when_the_recipe_is_read(settings, message, world, tmp_path, capsys):
    config = tmp_path / "recipe.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model_name_or_path": str(tmp_path / "never-loaded"),
                "dataset": str(world["qa"]),
                "output_dir": str(tmp_path / "out"),
                "use_cpu": True,
                "report_to": [],
                **settings,
            }
        )
    )
    pattern = message.replace("(", r"\(").replace(")", r"\)").replace("|", r"\|")
    with pytest.raises(SettingError, match=pattern):
        parse_recipe(config)
    assert cli(["train", "sft", "--config", str(config)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("langbridge train: error: ") and re.search(pattern, error) and error.count("\n") == 1
    assert not (tmp_path / "out").exists()  # before any work


def test_a_model_that_cannot_keep_packed_samples_apart_is_refused(world_model_dir):
    from transformers import BloomConfig, BloomModel

    model = AutoModelForImageTextToText.from_pretrained(world_model_dir)
    assert check_model_packs(model) == "sdpa"
    assert Packing("packed").for_model(model) == Packing("packed", one_row=False)

    model.config.text_config._attn_implementation = "flash_attention_2"  # only read here: one row, varlen
    assert Packing("packed").for_model(model) == Packing("packed", one_row=True)
    model.config.text_config._attn_implementation = "paged|sdpa"
    with pytest.raises(LangBridgeUsageError, match="runs 'paged\\|sdpa'. Load it with attn_implementation"):
        Packing("padding_free").for_model(model)
    model.config.text_config._attn_implementation = "sdpa"

    bloom = BloomModel(BloomConfig(vocab_size=32, hidden_size=16, n_layer=1, n_head=2))
    model.model.language_model = bloom
    with pytest.raises(LangBridgeUsageError, match="BloomModel.*does not build its attention masks from position_ids"):
        Packing("packed").for_model(model)
    assert Packing().for_model(model) == Packing()  # padded batches need nothing of it


def test_the_trainer_refuses_a_collator_that_does_not_pack_what_the_settings_ask(world_model_dir, world, tmp_path):
    from trl import SFTConfig

    from langbridge_training.trainer import LangBridgeTrainer

    model = AutoModelForImageTextToText.from_pretrained(world_model_dir)
    processor = AutoProcessor.from_pretrained(world_model_dir)
    dataset, _ = with_lazy_images(load_llava_json(world["qa"], world["images"]))
    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], padding_free=True)
    with pytest.raises(LangBridgeUsageError, match="padding_free is True but the data collator builds padded batches"):
        LangBridgeTrainer(
            model=model,
            args=args,
            train_dataset=dataset,
            data_collator=LangBridgeCollator(processor, None, "chat"),
            processing_class=processor,
        )
    assert packing_of(args) == PADDING_FREE
