"""Tiling (LLaVA-NeXT "anyres"): official checkpoints convert with their grid and `image_newline` and give the official
visual tokens; composed tiled models answer through the pipeline, count placeholders from the image size, load as
remote code and train with the SFT recipe; `interpret` reads the base view and every tile."""

import copy
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from test_convert_official import official_parts, write_official_checkpoint  # noqa: F401 (a fixture)
from test_remote_code import REMOTE_SCRIPT, generate_locally
from test_training import run_recipe, write_config
from transformers import AutoModelForImageTextToText, AutoProcessor, pipeline

from modeling_langbridge.assembly.tiny import random_shapes_image
from modeling_langbridge.cli import main

# The tiny CLIP's input is 32 px in 8 px patches: 4 x 4 tokens per view. The official fixture's grid, as the
# official code writes it, (width, height): 1 x 2 tiles, 2 x 1, 2 x 2.
OFFICIAL_PINPOINTS_WH = [[32, 64], [64, 32], [64, 64]]
TILE, SIDE = 32, 4
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711])


def picture(width: int, height: int, seed: int = 0) -> Image.Image:
    """A non-square test image: shapes drawn on a square, then resized to (width, height)."""
    return random_shapes_image(seed, size=96).resize((width, height), Image.Resampling.BICUBIC)


# ---------------------------------------------------------------------------------------------------------------
# An independent float64 reading of the official LLaVA-NeXT code (llava/mm_utils.py, llava/model/llava_arch.py).
# Sizes are (width, height) as there; nothing below calls this package.
# ---------------------------------------------------------------------------------------------------------------


def official_best_resolution(size, pinpoints):
    """mm_utils.select_best_resolution: most of the image kept, then the least waste; (width, height)."""
    width, height = size
    best, best_effective, best_waste = None, 0, float("inf")
    for w, h in pinpoints:
        scale = min(w / width, h / height)
        effective = min(int(width * scale) * int(height * scale), width * height)
        waste = w * h - effective
        if effective > best_effective or (effective == best_effective and waste < best_waste):
            best, best_effective, best_waste = (w, h), effective, waste
    return best


def official_views(image, pinpoints):
    """mm_utils.process_anyres_image: the image squashed to one tile (the base view), then the tiles of the image
    resized into the best grid resolution and pasted on black."""
    target_w, target_h = official_best_resolution(image.size, pinpoints)
    scale_w, scale_h = target_w / image.width, target_h / image.height
    if scale_w < scale_h:
        new_w, new_h = target_w, min(math.ceil(image.height * scale_w), target_h)
    else:
        new_w, new_h = min(math.ceil(image.width * scale_h), target_w), target_h
    canvas = Image.new("RGB", (target_w, target_h), (0, 0, 0))
    canvas.paste(image.resize((new_w, new_h)), ((target_w - new_w) // 2, (target_h - new_h) // 2))
    tiles = [
        canvas.crop((x, y, x + TILE, y + TILE)) for y in range(0, target_h, TILE) for x in range(0, target_w, TILE)
    ]
    return [image.resize((TILE, TILE))] + tiles, (target_w // TILE, target_h // TILE)


def official_unpad(feature_map, size):
    """llava_arch.unpad_image on a [D, H, W] map; `size` is (width, height)."""
    width, height = size
    current_h, current_w = feature_map.shape[1:]
    if width / height > current_w / current_h:
        padding = (current_h - int(height * (current_w / width))) // 2
        return feature_map[:, padding : current_h - padding, :]
    padding = (current_w - int(width * (current_h / height))) // 2
    return feature_map[:, :, padding : current_w - padding]


def official_anyres_tokens(image, vision, projector, matrix, newline, aspect_ratio="anyres"):
    """The visual tokens the official code feeds its LLM for one image, in float64: CLIP preprocessing, tower layer
    -2 without CLS, mm_projector, `.float() @ E`, then llava_arch's spatial_unpad merge."""
    views, (columns, rows) = official_views(image, OFFICIAL_PINPOINTS_WH)
    pixels = np.stack([(np.asarray(view, dtype=np.float64) / 255.0 - CLIP_MEAN) / CLIP_STD for view in views])
    pixels = torch.from_numpy(pixels).permute(0, 3, 1, 2)
    vision, projector = copy.deepcopy(vision).double(), copy.deepcopy(projector).double()
    with torch.no_grad():
        features = vision(pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
        tokens = projector(features) @ matrix.double()
    base, tiles = tokens[0], tokens[1:]
    feature_map = tiles.view(rows, columns, SIDE, SIDE, -1).permute(4, 0, 2, 1, 3).flatten(1, 2).flatten(2, 3)
    feature_map = official_unpad(feature_map, image.size)
    if aspect_ratio.startswith("anyres_max_"):
        limit = int(aspect_ratio.rsplit("_", 1)[1])
        d, h, w = feature_map.shape
        times = math.sqrt(h * w / (limit * SIDE**2))
        if times > 1.1:
            feature_map = torch.nn.functional.interpolate(
                feature_map[None], [int(h // times), int(w // times)], mode="bilinear"
            )[0]
    rows_end = newline.double()[:, None, None].expand(feature_map.shape[0], feature_map.shape[1], 1)
    feature_map = torch.cat([feature_map, rows_end], dim=-1)
    return torch.cat([base, feature_map.flatten(1, 2).transpose(0, 1)], dim=0)


@pytest.mark.parametrize("aspect_ratio, size", [("anyres", (45, 70)), ("anyres", (90, 30)), ("anyres_max_1", (45, 70))])
def test_official_anyres_checkpoint_converts_to_the_official_visual_tokens(
    parts,
    official_parts,
    tmp_path,
    aspect_ratio,
    size,
    capsys,
):
    checkpoint, weights = write_official_checkpoint(
        tmp_path / "official", parts, official_parts, layout="llava-next-anyres"
    )
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["image_grid_pinpoints"] == OFFICIAL_PINPOINTS_WH and config["mm_patch_merge_type"] == "spatial_unpad"
    config["image_aspect_ratio"] = aspect_ratio
    (checkpoint / "config.json").write_text(json.dumps(config))
    out = tmp_path / "converted"
    assert (
        main(
            [
                "convert-official",
                "--checkpoint",
                str(checkpoint),
                "--vocab",
                str(checkpoint / "vocab.json"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert f"tiling as trained: {aspect_ratio}, spatial_unpad" in capsys.readouterr().out

    model = AutoModelForImageTextToText.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)
    assert model.config.image_grid_pinpoints == [[64, 32], [32, 64], [64, 64]]  # (height, width), the official order
    assert (model.config.vision_aspect_ratio, model.config.patch_merge_type) == (aspect_ratio, "spatial_unpad")
    assert torch.equal(model.model.image_newline, weights["model.image_newline"])

    image = picture(*size, seed=4)
    inputs = processor(images=[image], text="<image>", return_tensors="pt")
    matrix = torch.load(checkpoint / "embedding_matrix.pt", weights_only=True)
    expected = official_anyres_tokens(
        image,
        official_parts["vision"],
        official_parts["projector"],
        matrix,
        weights["model.image_newline"],
        aspect_ratio,
    )
    with torch.no_grad():
        got = model.get_image_features(inputs["pixel_values"], image_sizes=inputs["image_sizes"]).pooler_output[0]
    assert got.dtype == torch.float32 and got.shape == expected.shape
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-5)

    placeholders = int((inputs["input_ids"] == processor.image_token_id).sum())
    assert (
        placeholders
        == expected.shape[0]
        == processor._get_num_multimodal_tokens(image_sizes=[size[::-1]]).num_image_tokens[0]
    )
    with torch.no_grad():  # and the LLM reads exactly these tokens in place of the placeholders
        hidden = model.model(**inputs, output_hidden_states=True).hidden_states[0][0]
    torch.testing.assert_close(hidden.double(), expected, rtol=1e-4, atol=1e-5)


def test_no_tiling_converts_an_anyres_checkpoint_for_one_view(parts, official_parts, tmp_path, capsys):
    checkpoint, _ = write_official_checkpoint(tmp_path / "official", parts, official_parts, layout="llava-next-anyres")
    out = tmp_path / "single"
    assert (
        main(
            [
                "convert-official",
                "--checkpoint",
                str(checkpoint),
                "--vocab",
                str(checkpoint / "vocab.json"),
                "--no-tiling",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "WARNING: converted for a single view (--no-tiling)" in capsys.readouterr().out
    model = AutoModelForImageTextToText.from_pretrained(out)
    assert model.config.image_grid_pinpoints is None and model.model.image_newline is None

    config = json.loads((checkpoint / "config.json").read_text())
    del config["image_grid_pinpoints"]
    (checkpoint / "config.json").write_text(json.dumps(config))
    assert (
        main(
            [
                "convert-official",
                "--checkpoint",
                str(checkpoint),
                "--vocab",
                str(checkpoint / "vocab.json"),
                "--out",
                str(tmp_path / "refused"),
            ]
        )
        == 2
    )
    assert "has no image_grid_pinpoints" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# Composed tiled models
# ---------------------------------------------------------------------------------------------------------------

SIZES = [(90, 30), (30, 90), (64, 64), (45, 70), (200, 120)]  # (width, height): wide, tall, square, and larger


def test_a_tiled_model_answers_through_the_pipeline_with_the_processors_counts(tiled_dir):
    model = AutoModelForImageTextToText.from_pretrained(tiled_dir).eval()
    processor = AutoProcessor.from_pretrained(tiled_dir)
    assert model.config.image_grid_pinpoints == [[32, 64], [64, 32], [64, 64]] and processor.tiling
    assert model.model.image_newline.shape == (model.config.text_config.hidden_size,)

    counts = processor._get_num_multimodal_tokens(image_sizes=[(h, w) for w, h in SIZES]).num_image_tokens
    assert len(set(counts)) > 2  # the size decides: wide, tall and square images differ
    chat = pipeline("image-text-to-text", model=str(tiled_dir))
    for (width, height), count in zip(SIZES, counts):
        image = picture(width, height)
        inputs = processor(images=[image], text=["<image> What is it?"], return_tensors="pt")
        assert (
            int((inputs["input_ids"] == processor.image_token_id).sum())
            == count
            == processor.num_image_tokens(height, width)
        )
        assert inputs["image_sizes"].tolist() == [[height, width]]
        with torch.no_grad():
            tokens = model.get_image_features(inputs["pixel_values"], image_sizes=inputs["image_sizes"]).pooler_output
        assert [t.shape[0] for t in tokens] == [count]
        message = [
            {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "What is it?"}]}
        ]
        reply = chat(text=message, max_new_tokens=3, return_full_text=False)[0]["generated_text"]
        assert isinstance(reply, str)

    # Several images of different sizes in one batch: their views one after another, each image its own count.
    images = [picture(w, h, seed=n) for n, (w, h) in enumerate(SIZES[:3])]
    batch = processor(
        images=[[images[0]], [images[1], images[2]]],
        text=["<image> a", "<image> b <image> c"],
        padding=True,
        padding_side="right",
        return_tensors="pt",
    )  # the shorter row's logits come first
    views = [processor.num_image_views(h, w) for w, h in SIZES[:3]]
    assert views == [3, 3, 5] and batch["pixel_values"].shape[0] == sum(views)
    assert processor._get_num_multimodal_tokens(image_sizes=[(h, w) for w, h in SIZES[:3]]).num_image_patches == views
    assert (batch["input_ids"] == processor.image_token_id).sum(dim=1).tolist() == [counts[0], counts[1] + counts[2]]
    with torch.no_grad():
        batched = model(**batch).logits
        alone = model(**processor(images=[images[0]], text=["<image> a"], return_tensors="pt")).logits
    torch.testing.assert_close(batched[0, : alone.shape[1]], alone[0], rtol=1e-4, atol=1e-4)

    # The pipeline batches chats whose images have different numbers of tiles, and text-only chats with them.
    chats = [
        [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "What?"}]}]
        for image in images
    ] + [[{"role": "user", "content": [{"type": "text", "text": "Hello"}]}]]
    replies = chat(text=chats, max_new_tokens=3, return_full_text=False, batch_size=4)
    assert len(replies) == 4 and all(isinstance(r[0]["generated_text"], str) for r in replies)


def test_tiled_generation_modes_agree(tiled_dir):
    model = AutoModelForImageTextToText.from_pretrained(tiled_dir).eval()
    processor = AutoProcessor.from_pretrained(tiled_dir)
    inputs = processor(images=[picture(90, 30)], text=["<image> Describe the image."], return_tensors="pt")
    with torch.no_grad():
        plain = model.generate(**inputs, max_new_tokens=5, do_sample=False)
        chunked = model.generate(**inputs, max_new_tokens=5, do_sample=False, prefill_chunk_size=16)
        beams = model.generate(**inputs, max_new_tokens=5, do_sample=False, num_beams=2)
    assert torch.equal(plain, chunked)
    assert beams.shape[1] == plain.shape[1]


def test_a_tiled_model_needs_image_sizes_and_says_so(tiled_dir):
    model = AutoModelForImageTextToText.from_pretrained(tiled_dir).eval()
    processor = AutoProcessor.from_pretrained(tiled_dir)
    inputs = processor(images=[picture(90, 30)], text=["<image> a"], return_tensors="pt")
    with pytest.raises(ValueError, match="needs image_sizes"):
        model(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"])
    with pytest.raises(ValueError, match="depends on the image's size"):
        model(
            input_ids=inputs["input_ids"][:, 5:], pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"]
        )


def test_a_tiled_folder_loads_and_generates_without_the_package(tiled_dir, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for mode in ("RGB", "RGBA", "L", "P"):  # not square, so the tiles and the unpadding matter
        random_shapes_image(seed=3, size=96, mode=mode).crop((0, 0, 96, 40)).save(images / f"{mode.lower()}.png")
    env = dict(os.environ, HF_MODULES_CACHE=str(tmp_path / "modules_cache"), HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_SCRIPT, str(tiled_dir), str(images)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert all(module.startswith("transformers_modules") for module in report["classes"]), report["classes"]
    assert len(report["batch_replies"]) == 2

    local, _ = generate_locally(tiled_dir, images / "rgb.png")
    assert report["generated"] == local.tolist()  # the remote copy tiles exactly as the package does


# ---------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------

TRAIN_SIZES = [(90, 30), (30, 90), (64, 64), (200, 120), (45, 70), (120, 50)]


def write_llava_json(root, sizes):
    """A LLaVA JSON file whose images have the given (width, height) sizes."""
    (root / "images").mkdir(parents=True)
    records = []
    for n, (width, height) in enumerate(sizes):
        picture(width, height, seed=n).save(root / "images" / f"{n}.png")
        records.append(
            {
                "id": str(n),
                "image": f"{n}.png",
                "conversations": [
                    {"from": "human", "value": "<image>\nWhat is in the picture?"},
                    {"from": "gpt", "value": ["a red circle.", "a blue square.", "a green star."][n % 3]},
                ],
            }
        )
    (root / "data.json").write_text(json.dumps(records))
    return root / "data.json", root / "images"


def test_fit_to_length_counts_each_tiled_image_by_its_size(tiled_dir, tmp_path):
    from langbridge_training.data import DataReport, fit_to_length, load_llava_json

    processor = AutoProcessor.from_pretrained(tiled_dir)
    data, images = write_llava_json(tmp_path, [(90, 30), (64, 64), (30, 90), (64, 64)])
    counts = [processor.num_image_tokens(h, w) for w, h in [(90, 30), (64, 64), (30, 90)]]
    assert counts[1] > counts[0] + 40 and counts[1] > counts[2] + 40
    message = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the picture?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "a red circle."}]},
    ]
    text_tokens = (
        len(
            processor.tokenizer.apply_chat_template(
                message, chat_template=processor.chat_template, tokenize=True, return_dict=True
            )["input_ids"]
        )
        - 1
    )
    report = DataReport()
    kept = fit_to_length(
        load_llava_json(data, images), processor, 16, text_tokens + max(counts[0], counts[2]) + 20, "chat", report
    )
    assert (report.kept, report.dropped_cut_image) == (
        2,
        2,
    )  # the square images take more tokens than the wide and tall
    assert [sample["images"][0].rsplit("/", 1)[1] for sample in kept] == ["0.png", "2.png"]


def test_the_sft_recipe_trains_a_tiled_model_on_llava_json(tiled_dir, tmp_path):
    from langbridge_training import sft

    data, images = write_llava_json(tmp_path / "data", TRAIN_SIZES)
    out = tmp_path / "sft"
    config = write_config(
        tmp_path / "sft.yaml",
        model_name_or_path=str(tiled_dir),
        dataset=str(data),
        image_folder=str(images),
        output_dir=str(out),
        max_steps=4,
        per_device_train_batch_size=3,
        learning_rate=1e-3,
        max_length=200,
    )
    trainer = run_recipe(sft, config)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 4 and all(math.isfinite(loss) for loss in losses)
    assert json.loads((out / "data_report.json").read_text())["kept"] == len(TRAIN_SIZES)

    before = AutoModelForImageTextToText.from_pretrained(tiled_dir).state_dict()
    trained = AutoModelForImageTextToText.from_pretrained(out).eval()
    after = trained.state_dict()
    assert not torch.equal(before["model.image_newline"], after["model.image_newline"])  # the row end learns too
    assert not torch.equal(
        before["model.multi_modal_projector.vocab_proj.weight"], after["model.multi_modal_projector.vocab_proj.weight"]
    )
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("model.vision_tower."))

    processor = AutoProcessor.from_pretrained(out)
    assert processor.tiling
    inputs = processor(images=[picture(120, 50)], text=["<image> What is in the picture?"], return_tensors="pt")
    with torch.no_grad():
        assert trained.generate(**inputs, max_new_tokens=3, do_sample=False).shape[1] > inputs["input_ids"].shape[1]


def test_interpret_reads_the_base_view_and_every_tile(tiled_dir, tmp_path, capsys):
    image_file = tmp_path / "wide.png"
    picture(90, 40, seed=2).save(image_file)
    reading_file, overlay = tmp_path / "reading.json", tmp_path / "overlay.png"
    assert (
        main(
            [
                "interpret",
                str(image_file),
                "--model",
                str(tiled_dir),
                "--top-k",
                "2",
                "--out",
                str(overlay),
                "--json",
                str(reading_file),
            ]
        )
        == 0
    )
    assert "4x4 patches; and 1x2 tiles" in capsys.readouterr().out
    reading = json.loads(reading_file.read_text())
    assert reading["base"]["grid"] == [4, 4] and reading["tiles"]["grid"] == [4, 8] and reading["tile_grid"] == [1, 2]
    assert reading["canvas"] == [32, 64] and reading["placement"][1] == 0  # a wide image fills the width
    with Image.open(overlay) as drawn:
        assert drawn.height > drawn.width / 2  # the base view above, the tiles below

    # Each patch's words are its own view's largest coefficients: base view first, then tile (0, 1) at columns 4-7.
    model = AutoModelForImageTextToText.from_pretrained(tiled_dir).eval()
    processor = AutoProcessor.from_pretrained(tiled_dir)
    pixel_values = processor(images=[Image.open(image_file)], text="<image>", return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        coefficients = model.model.multi_modal_projector.coefficients(model.model.get_vision_features(pixel_values))
    top = coefficients.topk(2, dim=-1).indices  # [views, 16, 2]
    assert reading["base"]["token_ids"] == top[0].tolist()
    second_tile = [reading["tiles"]["token_ids"][row * 8 + 4 + column] for row in range(4) for column in range(4)]
    assert second_tile == top[2].tolist()


def test_nearest_words_and_alignment_read_a_tiled_model(tiled_dir):
    from modeling_langbridge.analysis.alignment import measure, read_nearest

    model = AutoModelForImageTextToText.from_pretrained(tiled_dir).eval()
    processor = AutoProcessor.from_pretrained(tiled_dir)
    image = picture(90, 30)
    reading = read_nearest(model, processor, image, top_k=1)
    assert len(reading.tokens) == processor.num_image_tokens(30, 90)  # every visual token, newline rows included
    point = measure(model, processor, [image, picture(30, 90)], ["a red circle", "a blue square"])
    assert point.patches == processor.num_image_tokens(30, 90) + processor.num_image_tokens(90, 30)


# ---------------------------------------------------------------------------------------------------------------
# Settings: off by default, asked for by compose and by hub configs through the recipes, refused when wrong
# ---------------------------------------------------------------------------------------------------------------


def test_single_view_models_have_no_tiling(qwen_clip_dir):
    config = json.loads((qwen_clip_dir / "config.json").read_text())
    assert config.get("image_grid_pinpoints") is None
    model = AutoModelForImageTextToText.from_pretrained(qwen_clip_dir)
    processor = AutoProcessor.from_pretrained(qwen_clip_dir)
    assert not model.config.tiling and model.model.image_newline is None
    assert not any("image_newline" in name for name in model.state_dict())
    assert not processor.tiling and "image_sizes" not in processor(
        images=[picture(90, 30)], text="<image>", return_tensors="pt"
    )


def test_a_hub_config_asks_the_recipes_for_tiling(parts, tmp_path):
    from langbridge_training.models import resolve_model

    hub_config = tmp_path / "pair.json"
    hub_config.write_text(
        json.dumps(
            {
                "vision_model_name_or_path": str(parts["clip"]),
                "language_model_name_or_path": str(parts["qwen2"]),
                "projector_hidden_size": 32,
                "shared_vocab_size": 64,
                "coefficient_activation": "none",
                "vision_feature_layer": -2,
                "image_grid_pinpoints": [[32, 64], [64, 32]],
                "vision_aspect_ratio": "anyres_max_2",
                "patch_merge_type": "spatial_unpad",
            }
        )
    )
    folder = resolve_model(str(hub_config), str(tmp_path / "run"))
    config = AutoModelForImageTextToText.from_pretrained(folder).config
    assert (config.image_grid_pinpoints, config.vision_aspect_ratio) == ([[32, 64], [64, 32]], "anyres_max_2")
    assert AutoProcessor.from_pretrained(folder).vision_aspect_ratio == "anyres_max_2"


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--image-grid-pinpoints", "1x2,2x0"], "positive number of rows and columns"),
        (
            ["--image-grid-pinpoints", "1x2", "--vision-aspect-ratio", "anyres_max"],
            "vision_aspect_ratio 'anyres_max' is not understood",
        ),
        (["--image-grid-pinpoints", "wide"], "cannot read the grids 'wide'"),
    ],
)
def test_compose_refuses_wrong_tiling_settings(parts, tmp_path, capsys, flags, message):
    out = tmp_path / "model"
    assert (
        main(
            [
                "compose",
                "--vision-model",
                str(parts["clip"]),
                "--language-model",
                str(parts["qwen2"]),
                "--projector-hidden-size",
                "32",
                "--vocab-size",
                "64",
                "--out",
                str(out),
                *flags,
            ]
        )
        == 2
    )
    assert message in capsys.readouterr().err
    assert not out.exists()
