"""Adapters and pretraining-free transfer to another LLM family and hidden size."""

import json
import shutil

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, AutoTokenizer, pipeline

from modeling_langbridge.assembly.adapter import LangBridgeAdapter
from modeling_langbridge.assembly.tiny import random_shapes_image, save_clip_vision, tiny_corpus
from modeling_langbridge.assembly.vocab import SharedVocabulary
from modeling_langbridge.cli import main


@pytest.fixture(scope="module")
def qwen_adapter(qwen_clip_dir, tmp_path_factory):
    """The adapter of the Qwen2 + CLIP model (vocabulary: Qwen's own first 96 word tokens)."""
    out = tmp_path_factory.mktemp("adapters") / "qwen"
    assert main(["export-adapter", "--model", str(qwen_clip_dir), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def wide_qwen_adapter(parts, tmp_path_factory):
    """An adapter over Qwen's first 240 word tokens: enough to include some the Llama tokenizer lacks
    (sentence-initial words such as `What`, which SentencePiece only has as `▁What`)."""
    root = tmp_path_factory.mktemp("wide")
    assert (
        main(
            [
                "compose",
                "--vision-model",
                str(parts["clip"]),
                "--language-model",
                str(parts["qwen2"]),
                "--vocab-size",
                "240",
                "--projector-hidden-size",
                "40",
                "--out",
                str(root / "model"),
            ]
        )
        == 0
    )
    assert main(["export-adapter", "--model", str(root / "model"), "--out", str(root / "adapter")]) == 0
    return root / "adapter"


def coefficients_float64(adapter: LangBridgeAdapter, features: torch.Tensor, activation: str) -> torch.Tensor:
    w = {k: v.double() for k, v in adapter.weights.items()}
    h = torch.nn.functional.gelu(features.double() @ w["linear_1.weight"].T + w["linear_1.bias"])
    h = h @ w["linear_2.weight"].T + w["linear_2.bias"]
    logits = h @ w["vocab_proj.weight"].T + w["vocab_proj.bias"]
    return logits.softmax(-1) if activation == "softmax" else logits


def test_adapter_round_trips_with_its_strings_and_facts(qwen_clip_dir, qwen_adapter):
    adapter = LangBridgeAdapter.from_pretrained(qwen_adapter)
    model = AutoModelForImageTextToText.from_pretrained(qwen_clip_dir)
    for name, tensor in model.model.multi_modal_projector.state_dict().items():
        assert torch.equal(adapter.weights[name], tensor), name
    tokenizer = AutoTokenizer.from_pretrained(qwen_clip_dir)
    spelled = [
        tokenizer.convert_tokens_to_string([tokenizer.convert_ids_to_tokens(i)]) for i in model.config.vocab_token_ids
    ]
    assert adapter.vocabulary.tokens == spelled
    assert (adapter.vision_feature_size, adapter.projector_hidden_size, adapter.shared_vocab_size) == (32, 64, 96)
    facts = adapter.facts
    assert (facts.vision_feature_layer, facts.vision_feature_select_strategy, facts.coefficient_activation) == (
        -2,
        "default",
        "none",
    )
    assert facts.trained_with == model.config.language_model_name_or_path


def test_transfer_to_another_family_and_width_mixes_the_new_llms_embeddings(wide_qwen_adapter, parts, tmp_path, capsys):
    out = tmp_path / "llama-transferred"
    assert (
        main(
            [
                "transfer",
                "--adapter",
                str(wide_qwen_adapter),
                "--language-model",
                str(parts["llama"]),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "Coverage of 240 shared-vocabulary tokens" in printed

    adapter = LangBridgeAdapter.from_pretrained(wide_qwen_adapter)
    model = AutoModelForImageTextToText.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)
    tokenizer = processor.tokenizer
    assert model.config.text_config.model_type == "llama" and model.config.text_config.hidden_size == 48
    entries = model.config.vocab_token_ids
    composed = [e for e in entries if isinstance(e, list)]
    assert composed and len(composed) < len(entries)  # some tokens Llama lacks, composed from its pieces

    # Independently: the Llama embedding of each string, by its SentencePiece spelling or its pieces' mean.
    table = model.get_input_embeddings().weight.detach().double()
    rows = []
    for text, entry in zip(adapter.vocabulary.tokens, entries):
        spelled = text.replace(" ", "▁")
        if spelled not in tokenizer.get_vocab() and len(text.encode()) == 1:
            spelled = f"<0x{text.encode()[0]:02X}>"  # a character SentencePiece only has as its byte token
        if spelled in tokenizer.get_vocab():
            assert entry == tokenizer.convert_tokens_to_ids(spelled)
            rows.append(table[entry])
        else:
            assert "".join(tokenizer.convert_ids_to_tokens(entry)).replace("▁", " ") == text
            rows.append(table[entry].mean(0))
    embeddings = torch.stack(rows)

    pixel_values = processor(images=[random_shapes_image(5)], text="<image>", return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        visual = model.get_image_features(pixel_values).pooler_output[0]
        features = model.model.get_vision_features(pixel_values)[0]
    expected = coefficients_float64(adapter, features, "none") @ embeddings
    torch.testing.assert_close(visual.double(), expected, rtol=1e-5, atol=1e-6)

    chat = pipeline("image-text-to-text", model=str(out), trust_remote_code=True)
    reply = chat(
        text=[
            {
                "role": "user",
                "content": [
                    {"type": "image", "image": random_shapes_image(1)},
                    {"type": "text", "text": "What is it?"},
                ],
            }
        ],
        max_new_tokens=4,
        return_full_text=False,
    )
    assert isinstance(reply[0]["generated_text"], str)


def without_tokens(folder, removed: set[str], out):
    """A copy of an LLM folder whose tokenizer lacks `removed` (SentencePiece spellings), merges included."""
    shutil.copytree(folder, out)
    spec = json.loads((out / "tokenizer.json").read_text())
    model = spec["model"]
    model["vocab"] = {t: i for t, i in model["vocab"].items() if t not in removed}

    def keep(merge):
        left, right = merge.split(" ") if isinstance(merge, str) else merge
        return not {left, right, left + right} & removed

    model["merges"] = [m for m in model["merges"] if keep(m)]
    (out / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False))
    return out


def test_a_target_lacking_a_tenth_gets_those_composed_and_a_threshold_guards(parts, tmp_path, capsys):
    qwen, llama = (AutoTokenizer.from_pretrained(parts[k]) for k in ("qwen2", "llama"))
    vocabulary = SharedVocabulary.build([qwen, llama], iter(tiny_corpus(300, seed=3)), size=60, progress=False)
    vocab_file = vocabulary.save(tmp_path / "shared.json")
    assert (
        main(
            [
                "compose",
                "--vision-model",
                str(parts["clip"]),
                "--language-model",
                str(parts["qwen2"]),
                "--vocab",
                str(vocab_file),
                "--projector-hidden-size",
                "32",
                "--out",
                str(tmp_path / "qwen"),
            ]
        )
        == 0
    )
    assert main(["export-adapter", "--model", str(tmp_path / "qwen"), "--out", str(tmp_path / "adapter")]) == 0

    lacking = [t for t in vocabulary.tokens if len(t.strip()) > 2][:6]  # a known tenth: six whole words
    reduced = without_tokens(parts["llama"], {t.replace(" ", "▁") for t in lacking}, tmp_path / "llama-reduced")
    capsys.readouterr()

    out = tmp_path / "ok"
    assert (
        main(["transfer", "--adapter", str(tmp_path / "adapter"), "--language-model", str(reduced), "--out", str(out)])
        == 0
    )
    report = capsys.readouterr().out
    assert "90.0% found exactly" in report and "composed from sub-tokens: 6" in report
    for token in lacking:
        assert repr(token) in report
    model = AutoModelForImageTextToText.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    composed = {vocabulary.tokens[n] for n, e in enumerate(model.config.vocab_token_ids) if isinstance(e, list)}
    assert composed == set(lacking)
    for n, entry in enumerate(model.config.vocab_token_ids):
        if isinstance(entry, list):
            assert "".join(tokenizer.convert_ids_to_tokens(entry)).replace("▁", " ") == vocabulary.tokens[n]

    refused = tmp_path / "refused"
    assert (
        main(
            [
                "transfer",
                "--adapter",
                str(tmp_path / "adapter"),
                "--language-model",
                str(reduced),
                "--out",
                str(refused),
                "--min-coverage",
                "0.95",
            ]
        )
        == 2
    )
    error = capsys.readouterr().err
    assert "Only 90.0% of the shared vocabulary" in error and "--min-coverage" in error and "--force" in error
    assert not refused.exists()
    assert (
        main(
            [
                "transfer",
                "--adapter",
                str(tmp_path / "adapter"),
                "--language-model",
                str(reduced),
                "--out",
                str(refused),
                "--min-coverage",
                "0.95",
                "--force",
            ]
        )
        == 0
    )


class TestBadInputWritesNothing:
    def test_a_vision_model_of_another_width(self, qwen_adapter, parts, tmp_path, capsys):
        narrow = save_clip_vision(tmp_path / "narrow-clip", hidden_size=24)
        out = tmp_path / "out"
        assert (
            main(
                [
                    "transfer",
                    "--adapter",
                    str(qwen_adapter),
                    "--language-model",
                    str(parts["llama"]),
                    "--vision-model",
                    str(narrow),
                    "--out",
                    str(out),
                ]
            )
            == 2
        )
        error = capsys.readouterr().err
        assert "takes 32-wide vision features but" in error and "gives 24" in error
        assert not out.exists() and not list(tmp_path.glob(".out.partial-*"))

    def test_a_vocabulary_file_that_is_not_one(self, qwen_adapter, parts, tmp_path, capsys):
        broken = tmp_path / "adapter"
        shutil.copytree(qwen_adapter, broken)
        (broken / "shared_vocabulary.json").write_text('{"the": 1, "a": 2}')
        out = tmp_path / "out"
        assert (
            main(["transfer", "--adapter", str(broken), "--language-model", str(parts["llama"]), "--out", str(out)])
            == 2
        )
        assert "is not a shared-vocabulary file" in capsys.readouterr().err
        assert not out.exists()

    def test_a_model_folder_given_as_an_adapter(self, qwen_clip_dir, parts, tmp_path, capsys):
        out = tmp_path / "out"
        assert (
            main(
                [
                    "transfer",
                    "--adapter",
                    str(qwen_clip_dir),
                    "--language-model",
                    str(parts["llama"]),
                    "--out",
                    str(out),
                ]
            )
            == 2
        )
        assert "export its adapter with `langbridge export-adapter`" in capsys.readouterr().err

    def test_an_existing_output_folder_is_not_overwritten(self, qwen_adapter, parts, tmp_path, capsys):
        out = tmp_path / "out"
        out.mkdir()
        (out / "keep.txt").write_text("mine")
        assert (
            main(
                ["transfer", "--adapter", str(qwen_adapter), "--language-model", str(parts["llama"]), "--out", str(out)]
            )
            == 2
        )
        assert "already exists and is not empty" in capsys.readouterr().err
        assert (out / "keep.txt").read_text() == "mine"
