"""`langbridge compose`: pretrained parts in, a loadable LangBridge folder out, their weights untouched."""

import json

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    CLIPVisionModel,
)

from modeling_langbridge.assembly.vocab import SharedVocabulary, TokenizerVocabulary
from modeling_langbridge.cli import main


def same_weights(module, reference, prefix=""):
    reference_state = reference.state_dict()
    for name, tensor in module.state_dict().items():
        assert torch.equal(tensor, reference_state[prefix + name]), name


def test_cli_compose_keeps_pretrained_weights_and_picks_ordinary_tokens(parts, tmp_path, capsys):
    out = tmp_path / "composed"
    code = main(
        [
            "compose",
            "--vision-model",
            str(parts["clip"]),
            "--language-model",
            str(parts["qwen2"]),
            "--out",
            str(out),
            "--projector-hidden-size",
            "32",
            "--vocab-size",
            "100",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "the first 100 ordinary tokens" in printed and "skipping" in printed

    model = AutoModelForImageTextToText.from_pretrained(out)
    llm = AutoModelForCausalLM.from_pretrained(parts["qwen2"])
    vision = CLIPVisionModel.from_pretrained(parts["clip"])
    same_weights(model.model.vision_tower, vision)
    # The LLM: every weight as pretrained, except the row added for <image>.
    embeddings = model.get_input_embeddings().weight
    assert torch.equal(embeddings[: llm.config.vocab_size], llm.get_input_embeddings().weight)
    for name, tensor in model.model.language_model.state_dict().items():
        if "embed_tokens" not in name:
            assert torch.equal(tensor, llm.model.state_dict()[name]), name

    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = model.config.vocab_token_ids
    assert len(ids) == 100 and len(set(ids)) == 100
    special = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    assert not special & set(ids)
    assert ids == TokenizerVocabulary(tokenizer).word_like_ids()[:100]
    assert model.config.image_token_id == tokenizer.convert_tokens_to_ids("<image>")
    assert model.config.language_model_name_or_path == str(parts["qwen2"])


def test_vision_only_checkpoint_and_a_llama_that_needs_a_new_embedding_row(parts, tmp_path):
    out = tmp_path / "composed"
    assert (
        main(
            [
                "compose",
                "--vision-model",
                str(parts["clip_vision"]),
                "--language-model",
                str(parts["llama"]),
                "--out",
                str(out),
                "--projector-hidden-size",
                "24",
                "--vocab-size",
                "50",
                "--coefficients",
                "softmax",
            ]
        )
        == 0
    )
    model = AutoModelForImageTextToText.from_pretrained(out)
    llama = AutoModelForCausalLM.from_pretrained(parts["llama"])
    same_weights(model.model.vision_tower, CLIPVisionModel.from_pretrained(parts["clip_vision"]))
    assert model.config.text_config.vocab_size == llama.config.vocab_size + 1  # room for <image>
    assert model.config.image_token_id == llama.config.vocab_size
    assert torch.equal(model.lm_head.weight[:-1], llama.lm_head.weight)  # an untied head keeps its rows
    assert model.config.coefficient_activation == "softmax"
    processor = AutoProcessor.from_pretrained(out)
    assert processor.tokenizer.eos_token == "</s>" and "USER: " in processor.chat_template


def test_compose_from_a_vocabulary_file_and_a_hub_style_config(parts, tmp_path):
    tokens = [" red", " green", " blue", " circle", " square", " star"]
    vocab_file = SharedVocabulary(tokens=tokens).save(tmp_path / "vocab.json")
    config_file = tmp_path / "pair.json"
    config_file.write_text(
        json.dumps(
            {
                "vision_model_name_or_path": str(parts["clip"]),
                "language_model_name_or_path": str(parts["qwen2"]),
                "projector_hidden_size": 40,
                "shared_vocab_size": 19200,
                "coefficient_activation": "softmax",
                "vision_feature_layer": -1,
            }
        )
    )
    out = tmp_path / "composed"
    assert main(["compose", "--config", str(config_file), "--vocab", str(vocab_file), "--out", str(out)]) == 0
    model = AutoModelForImageTextToText.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert [tokenizer.convert_ids_to_tokens(i) for i in model.config.vocab_token_ids] == [
        "Ġred",
        "Ġgreen",
        "Ġblue",
        "Ġcircle",
        "Ġsquare",
        "Ġstar",
    ]
    assert model.config.projector_hidden_size == 40
    assert (model.config.coefficient_activation, model.config.vision_feature_layer) == ("softmax", -1)


def test_compose_refuses_what_it_cannot_build(parts, tmp_path, capsys):
    vocab_file = SharedVocabulary(tokens=[" red", " zebra-unicorn"]).save(tmp_path / "vocab.json")
    out = tmp_path / "never"
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
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert "Only 50.0% of the shared vocabulary is in" in capsys.readouterr().err
    assert (
        main(
            [
                "compose",
                "--vision-model",
                str(parts["clip"]),
                "--language-model",
                str(parts["qwen2"]),
                "--vocab-size",
                "100000",
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert "has only" in capsys.readouterr().err
    (tmp_path / "not-a-vocab.json").write_text('{"hello": 1}')
    assert (
        main(
            [
                "compose",
                "--vision-model",
                str(parts["clip"]),
                "--language-model",
                str(parts["qwen2"]),
                "--vocab",
                str(tmp_path / "not-a-vocab.json"),
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert "is not a shared-vocabulary file" in capsys.readouterr().err
    assert main(["compose", "--vision-model", str(parts["clip"]), "--out", str(out)]) == 2
    assert "--language-model required" in capsys.readouterr().err
    assert not out.exists()  # nothing partial written


@pytest.mark.parametrize("style", ["qwen2", "llama"])
def test_default_vocabulary_tokens_are_words_never_special_or_bytes(parts, style):
    tokenizer = AutoTokenizer.from_pretrained(parts[style])
    vocabulary = TokenizerVocabulary(tokenizer)
    ids = vocabulary.word_like_ids()
    assert not set(ids) & set(tokenizer.all_special_ids)
    texts = [vocabulary.text_of[i] for i in ids]
    assert all(t.strip() and not t.startswith("<0x") for t in texts)
    assert " circle" in texts  # `Ġcircle` and `▁circle` both read as " circle"
    assert len(tokenizer.get_vocab()) - len(ids) >= (128 if style == "qwen2" else 256)  # bytes skipped
