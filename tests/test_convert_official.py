"""Conversion of the official code's files, built here in its layout (LLaVA fork, mm_projector_type "mm_vocab")
with random weights, checked against the official formula `projector(features).float() @ E`."""

import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    CLIPVisionModel,
)

from modeling_langbridge.assembly.tiny import random_shapes_image
from modeling_langbridge.assembly.vocab import TokenizerVocabulary
from modeling_langbridge.cli import main

HIDDEN, VOCAB = 40, 50


def official_projector(seed=0) -> nn.Sequential:
    """The official `build_vision_projector` for mm_vocab, with random weights."""
    torch.manual_seed(seed)
    projector = nn.Sequential(nn.Linear(32, HIDDEN), nn.GELU(), nn.Linear(HIDDEN, HIDDEN), nn.Linear(HIDDEN, VOCAB))
    for p in projector.parameters():
        nn.init.normal_(p, std=0.2)
    return projector


def official_vocabulary(tokenizer) -> dict[str, int]:
    """An official vocabulary file's content: byte-level token string -> id, most frequent first."""
    ids = TokenizerVocabulary(tokenizer).word_like_ids()[:VOCAB]
    return {tokenizer.convert_ids_to_tokens(i): i for i in ids}


def official_visual_tokens(projector, vision, pixel_values, matrix) -> torch.Tensor:
    """llava_arch.encode_images: CLIPVisionTower (layer -2, patch tokens) -> mm_projector -> .float() @ E."""
    with torch.no_grad():
        features = vision(pixel_values, output_hidden_states=True).hidden_states[-2][:, 1:]
        return projector(features).float() @ matrix.float()


@pytest.fixture(scope="module")
def official_parts(parts):
    qwen = AutoModelForCausalLM.from_pretrained(parts["qwen2"])
    return {
        "qwen": qwen,
        "tokenizer": AutoTokenizer.from_pretrained(parts["qwen2"]),
        "vision": CLIPVisionModel.from_pretrained(parts["clip"]).eval(),
        "projector": official_projector(),
    }


def write_official_checkpoint(folder, parts, official_parts, *, layout="llava-1.5", drift=False, shards="safetensors"):
    """A full checkpoint folder as the official code saves it (tokenizer, config.json, weights, E matrix)."""
    folder.mkdir()
    qwen, tokenizer, vision, projector = (official_parts[k] for k in ("qwen", "tokenizer", "vision", "projector"))
    vocab = official_vocabulary(tokenizer)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    base_embeddings = qwen.get_input_embeddings().weight.detach()
    torch.save(base_embeddings[list(vocab.values())].clone(), folder / "embedding_matrix.pt")

    weights = {k: v.clone() for k, v in qwen.state_dict().items() if k != "lm_head.weight"}  # tied head
    if drift:  # full SFT trained the embeddings; the official E matrix stayed the base LLM's
        torch.manual_seed(5)
        weights["model.embed_tokens.weight"] += 0.05 * torch.randn_like(weights["model.embed_tokens.weight"])
    weights.update({f"model.mm_projector.{k}": v.clone() for k, v in projector.state_dict().items()})
    weights.update({f"model.vision_tower.vision_tower.{k}": v.clone() for k, v in vision.state_dict().items()})
    config = qwen.config.to_dict() | {
        "architectures": ["LlavaQwenForCausalLM"],
        "model_type": "llava_qwen",
        "mm_projector_type": "mm_vocab",
        "mm_vocab_size": VOCAB,
        "mlp_hidden_size": HIDDEN,
        "mm_hidden_size": 32,
        "mm_vision_tower": str(parts["clip"]),
        "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch",
        "mm_vocab_matrix": "embedding_matrix.pt",
        "mm_use_im_start_end": False,
        "use_mm_proj": True,
        "tune_mm_mlp_adapter": False,
        "image_aspect_ratio": "pad",
        "mm_patch_merge_type": "flat",
        "tokenizer_model_max_length": 2048,
        "tokenizer_padding_side": "right",
    }
    if layout.startswith("llava-next"):
        config |= {
            "mm_tunable_parts": "mm_vision_tower,mm_mlp_adapter,mm_language_model",
            "mm_vision_tower_lr": 2e-6,
            "image_aspect_ratio": "square",
        }
        weights["model.image_newline"] = torch.randn(qwen.config.hidden_size)
    if layout == "llava-next-anyres":
        config |= {
            "image_aspect_ratio": "anyres",
            "mm_patch_merge_type": "spatial_unpad",
            "image_grid_pinpoints": [[32, 64], [64, 32], [64, 64]],
        }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    if shards == "safetensors":
        save_file(weights, folder / "model.safetensors")
    else:  # two pytorch_model-*.bin shards and their index
        names = sorted(weights)
        halves = {"pytorch_model-00001-of-00002.bin": names[::2], "pytorch_model-00002-of-00002.bin": names[1::2]}
        for file, keys in halves.items():
            torch.save({k: weights[k] for k in keys}, folder / file)
        index = {"weight_map": {k: file for file, keys in halves.items() for k in keys}}
        (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    tokenizer.save_pretrained(folder)
    return folder, weights


def test_stage1_projector_converts_to_an_adapter_that_keeps_the_official_numerics(parts, official_parts, tmp_path):
    tokenizer, qwen, vision, projector = (official_parts[k] for k in ("tokenizer", "qwen", "vision", "projector"))
    vocab = official_vocabulary(tokenizer)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    torch.save({f"model.mm_projector.{k}": v for k, v in projector.state_dict().items()}, tmp_path / "mm_projector.bin")

    assert (
        main(
            [
                "convert-official",
                "--projector",
                str(tmp_path / "mm_projector.bin"),
                "--vocab",
                str(tmp_path / "vocab.json"),
                "--trained-with",
                "Qwen/Qwen2-0.5B-Instruct",
                "--out",
                str(tmp_path / "adapter"),
            ]
        )
        == 0
    )
    facts = json.loads((tmp_path / "adapter" / "langbridge_adapter.json").read_text())
    assert (
        facts["vision_feature_layer"],
        facts["vision_feature_select_strategy"],
        facts["coefficient_activation"],
    ) == (-2, "default", "none")
    assert facts["combine_in_float32"] and facts["vision_model_name_or_path"] == "openai/clip-vit-large-patch14-336"

    out = tmp_path / "model"
    assert (
        main(
            [
                "transfer",
                "--adapter",
                str(tmp_path / "adapter"),
                "--language-model",
                str(parts["qwen2"]),
                "--vision-model",
                str(parts["clip"]),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    model = AutoModelForImageTextToText.from_pretrained(out).eval()
    assert model.config.vocab_token_ids == list(vocab.values())  # the strings land on the ids the official code used
    pixel_values = AutoProcessor.from_pretrained(out)(
        images=[random_shapes_image(2)], text="<image>", return_tensors="pt"
    )["pixel_values"]
    matrix = qwen.get_input_embeddings().weight[list(vocab.values())]
    expected = official_visual_tokens(projector, vision, pixel_values, matrix)
    with torch.no_grad():
        got = model.get_image_features(pixel_values).pooler_output[0]
    torch.testing.assert_close(got, expected[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shards", ["safetensors", "bin"])
def test_full_llava_checkpoint_converts_and_matches_the_official_code(parts, official_parts, tmp_path, shards, capsys):
    checkpoint, weights = write_official_checkpoint(tmp_path / "official", parts, official_parts, shards=shards)
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
    assert "equals the checkpoint's embeddings: E read live" in capsys.readouterr().out

    model = AutoModelForImageTextToText.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)
    assert not model.config.frozen_vocab_embeddings
    assert (model.config.coefficient_activation, model.config.combine_in_float32) == ("none", True)
    image = random_shapes_image(4, size=48).crop((0, 0, 48, 30))  # not square: LLaVA-1.5 pads it
    assert processor.image_processor.do_pad
    pixel_values = processor(images=[image], text="<image>", return_tensors="pt")["pixel_values"]
    matrix = torch.load(checkpoint / "embedding_matrix.pt", weights_only=True)
    expected = official_visual_tokens(official_parts["projector"], official_parts["vision"], pixel_values, matrix)
    with torch.no_grad():
        got = model.get_image_features(pixel_values).pooler_output[0]
    torch.testing.assert_close(got, expected[0], rtol=1e-5, atol=1e-5)

    # The LLM is the checkpoint's: same logits on text.
    text = official_parts["tokenizer"]("a red circle is on the left", return_tensors="pt")
    with torch.no_grad():
        ours = model(**text).logits
        official = official_parts["qwen"](**text).logits
    torch.testing.assert_close(ours[..., : official.shape[-1]], official)

    # The official qwen_1_5 conversation template, system prompt included.
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}], add_generation_prompt=True
    )
    assert prompt == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>\nHi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_a_checkpoint_without_its_vision_tower_loads_the_tower_with_the_kernels_setting(
    parts, official_parts, tmp_path, kernel_requests
):
    """The tower is loaded by its name when the checkpoint does not carry it: the one load, so the one place
    `--use-kernels` applies (offline, the default would ask for none)."""
    checkpoint, weights = write_official_checkpoint(tmp_path / "official", parts, official_parts)
    save_file({k: v for k, v in weights.items() if ".vision_tower." not in k}, checkpoint / "model.safetensors")
    command = ["convert-official", "--checkpoint", checkpoint, "--vocab", checkpoint / "vocab.json"]
    assert main([*map(str, command), "--out", str(tmp_path / "converted"), "--use-kernels"]) == 0
    assert kernel_requests == [("CLIPVisionModel", True)]
    converted = AutoModelForImageTextToText.from_pretrained(tmp_path / "converted")
    tower = converted.model.vision_tower.state_dict()
    assert all(torch.equal(tower[k], v) for k, v in official_parts["vision"].state_dict().items())


def test_an_sft_checkpoint_with_trained_embeddings_keeps_the_official_frozen_matrix(
    parts, official_parts, tmp_path, capsys
):
    checkpoint, weights = write_official_checkpoint(tmp_path / "official", parts, official_parts, drift=True)
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
    assert "keeping the official frozen copy" in capsys.readouterr().out
    model = AutoModelForImageTextToText.from_pretrained(out).eval()
    assert model.config.frozen_vocab_embeddings
    assert torch.equal(
        model.get_input_embeddings().weight[:430], weights["model.embed_tokens.weight"]
    )  # SFT'd table kept
    pixel_values = AutoProcessor.from_pretrained(out)(
        images=[random_shapes_image(6)], text="<image>", return_tensors="pt"
    )["pixel_values"]
    matrix = torch.load(checkpoint / "embedding_matrix.pt", weights_only=True)
    expected = official_visual_tokens(official_parts["projector"], official_parts["vision"], pixel_values, matrix)
    with torch.no_grad():
        got = model.get_image_features(pixel_values).pooler_output[0]
    torch.testing.assert_close(got, expected[0], rtol=1e-5, atol=1e-5)


def test_llava_next_layouts(parts, official_parts, tmp_path, capsys):
    flat, _ = write_official_checkpoint(tmp_path / "next-flat", parts, official_parts, layout="llava-next")
    assert (
        main(
            [
                "convert-official",
                "--checkpoint",
                str(flat),
                "--vocab",
                str(flat / "vocab.json"),
                "--out",
                str(tmp_path / "a"),
            ]
        )
        == 0
    )

    assert not AutoModelForImageTextToText.from_pretrained(tmp_path / "a").config.tiling  # square: one view

    # anyres checkpoints convert tiled (their numerics: tests/test_tiling.py); unknown variants are refused
    tiled, _ = write_official_checkpoint(tmp_path / "next-anyres", parts, official_parts, layout="llava-next-anyres")
    assert (
        main(
            [
                "convert-official",
                "--checkpoint",
                str(tiled),
                "--vocab",
                str(tiled / "vocab.json"),
                "--out",
                str(tmp_path / "b"),
            ]
        )
        == 0
    )
    assert AutoModelForImageTextToText.from_pretrained(tmp_path / "b").config.tiling
    config = json.loads((tiled / "config.json").read_text())
    (tiled / "config.json").write_text(json.dumps(config | {"mm_patch_merge_type": "maxpool2x2"}))
    refused = tmp_path / "c"
    assert (
        main(
            [
                "convert-official",
                "--checkpoint",
                str(tiled),
                "--vocab",
                str(tiled / "vocab.json"),
                "--out",
                str(refused),
            ]
        )
        == 2
    )
    assert "mm_patch_merge_type='maxpool2x2'" in capsys.readouterr().err
    assert not refused.exists()


class TestBadOfficialInput:
    def test_a_projector_file_with_missing_keys(self, official_parts, tmp_path, capsys):
        state = {
            f"model.mm_projector.{k}": v
            for k, v in official_parts["projector"].state_dict().items()
            if not k.startswith("3.")
        }
        torch.save(state, tmp_path / "mm_projector.bin")
        (tmp_path / "vocab.json").write_text(json.dumps(official_vocabulary(official_parts["tokenizer"])))
        out = tmp_path / "adapter"
        assert (
            main(
                [
                    "convert-official",
                    "--projector",
                    str(tmp_path / "mm_projector.bin"),
                    "--vocab",
                    str(tmp_path / "vocab.json"),
                    "--out",
                    str(out),
                ]
            )
            == 2
        )
        error = capsys.readouterr().err
        assert "lacks the official projector weights ['mm_projector.3.weight', 'mm_projector.3.bias']" in error
        assert not out.exists()

    def test_a_vocabulary_of_another_tokenizer(self, parts, official_parts, tmp_path, capsys):
        checkpoint, _ = write_official_checkpoint(tmp_path / "official", parts, official_parts)
        vocab = json.loads((checkpoint / "vocab.json").read_text())
        shifted = {token: i + 1 for token, i in vocab.items()}
        (tmp_path / "other-vocab.json").write_text(json.dumps(shifted, ensure_ascii=False))
        out = tmp_path / "converted"
        assert (
            main(
                [
                    "convert-official",
                    "--checkpoint",
                    str(checkpoint),
                    "--vocab",
                    str(tmp_path / "other-vocab.json"),
                    "--out",
                    str(out),
                ]
            )
            == 2
        )
        assert "does not belong to this checkpoint's tokenizer" in capsys.readouterr().err
        assert not out.exists()

    def test_a_vocabulary_size_that_does_not_fit_the_projector(self, official_parts, tmp_path, capsys):
        torch.save(
            {f"model.mm_projector.{k}": v for k, v in official_parts["projector"].state_dict().items()},
            tmp_path / "p.bin",
        )
        vocab = dict(list(official_vocabulary(official_parts["tokenizer"]).items())[: VOCAB - 1])
        (tmp_path / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
        assert (
            main(
                [
                    "convert-official",
                    "--projector",
                    str(tmp_path / "p.bin"),
                    "--vocab",
                    str(tmp_path / "vocab.json"),
                    "--out",
                    str(tmp_path / "a"),
                ]
            )
            == 2
        )
        assert f"output layer has {VOCAB} rows but its vocabulary lists {VOCAB - 1} tokens" in capsys.readouterr().err

    def test_not_a_vocabulary_and_not_a_state_dict(self, tmp_path, capsys):
        (tmp_path / "vocab.json").write_text('["just", "a", "list"]')
        torch.save(torch.zeros(3), tmp_path / "tensor.bin")
        assert (
            main(
                [
                    "convert-official",
                    "--projector",
                    str(tmp_path / "tensor.bin"),
                    "--vocab",
                    str(tmp_path / "vocab.json"),
                    "--out",
                    str(tmp_path / "a"),
                ]
            )
            == 2
        )
        assert "not a state dict" in capsys.readouterr().err
