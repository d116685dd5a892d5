"""The ready configs for real pairs build on the meta device with the parameter counts the README lists.

The LLM counts are the published totals of each checkpoint (Llama-3 gains one embedding and one head row
for `<image>`); the vision tower is CLIP ViT-L/14-336's; the projector, 129,790,720 at T = 19,200 and
H = 5,120, is the same for every LLM because it works in vocabulary space.
"""

from pathlib import Path

import pytest
import torch

from modeling_langbridge import LangBridgeConfig, LangBridgeForConditionalGeneration

HUB_CONFIGS = Path(__file__).parent.parent / "hub_configs"
CLIP_L_336 = 303_507_456
PROJECTOR = 1024 * 5120 + 5120 + 5120 * 5120 + 5120 + 5120 * 19200 + 19200

EXPECTED = {  # file stem: (language model, its parameters in the composed model)
    "qwen2-0.5b-instruct_clip-vit-l-336": ("Qwen/Qwen2-0.5B-Instruct", 494_032_768),
    "qwen2-7b-instruct_clip-vit-l-336": ("Qwen/Qwen2-7B-Instruct", 7_615_616_512),
    "qwen2.5-7b-instruct_clip-vit-l-336": ("Qwen/Qwen2.5-7B-Instruct", 7_615_616_512),
    "qwen2.5-14b-instruct_clip-vit-l-336": ("Qwen/Qwen2.5-14B-Instruct", 14_770_033_664),
    "llama3-8b-instruct_clip-vit-l-336": ("meta-llama/Meta-Llama-3-8B-Instruct", 8_030_261_248 + 2 * 4096),
}


def count(module):
    return sum(p.numel() for p in module.parameters())


def test_every_config_file_is_checked():
    assert {path.stem for path in HUB_CONFIGS.glob("*.json")} == set(EXPECTED)


@pytest.mark.parametrize("stem", sorted(EXPECTED))
def test_hub_config_instantiates_on_meta_with_the_listed_counts(stem):
    config = LangBridgeConfig.from_json_file(HUB_CONFIGS / f"{stem}.json")
    language_model, llm_parameters = EXPECTED[stem]
    assert config.language_model_name_or_path == language_model
    assert config.vision_model_name_or_path == "openai/clip-vit-large-patch14-336"
    assert (config.shared_vocab_size, config.projector_hidden_size, config.coefficient_activation) == (
        19200,
        5120,
        "none",
    )
    with torch.device("meta"):
        model = LangBridgeForConditionalGeneration(config)

    projector = count(model.model.multi_modal_projector)
    assert projector == PROJECTOR == 129_790_720
    assert count(model.model.vision_tower) == CLIP_L_336
    llm = count(model.model.language_model) + (0 if config.tie_word_embeddings else count(model.lm_head))
    assert llm == llm_parameters
    assert count(model) == CLIP_L_336 + PROJECTOR + llm_parameters
    assert config.image_token_id < config.text_config.vocab_size


def hub_config_for(parts, **settings) -> dict:
    """A hub config of the tiny local parts: a real file's keys, every setting given."""
    return {
        "vision_model_name_or_path": str(parts["clip_vision"]),
        "language_model_name_or_path": str(parts["qwen2"]),
        "projector_hidden_size": 24,
        "shared_vocab_size": 48,
        "coefficient_activation": "none",
        "combine_in_float32": True,
        "projector_hidden_act": "gelu",
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        "model_type": "langbridge",
        **settings,
    }


def test_every_key_of_a_hub_config_reaches_the_composed_model(parts, tmp_path):
    """One reader for compose (CLI) and the recipes: the settings the old readers dropped arrive too."""
    import json

    from langbridge_training.models import resolve_model
    from modeling_langbridge.assembly.hub_configs import read_hub_config
    from modeling_langbridge.cli import main

    pair = tmp_path / "pair.json"
    pair.write_text(
        json.dumps(
            hub_config_for(
                parts,
                combine_in_float32=False,
                projector_hidden_act="relu",
                vision_feature_layer=-3,
                coefficient_activation="softmax",
            )
        )
    )
    assert main(["compose", "--config", str(pair), "--out", str(tmp_path / "cli")]) == 0
    for folder in (tmp_path / "cli", resolve_model(str(pair), str(tmp_path / "recipe"))):
        config = LangBridgeConfig.from_pretrained(folder)
        assert config.combine_in_float32 is False and config.projector_hidden_act == "relu"
        assert config.vision_feature_layer == -3 and config.coefficient_activation == "softmax"
        assert config.shared_vocab_size == 48 and config.projector_hidden_size == 24
    # A flag overrides the file; a setting the file leaves out is compose()'s default in both paths.
    assert (
        main(["compose", "--config", str(pair), "--projector-hidden-act", "gelu", "--out", str(tmp_path / "flag")]) == 0
    )
    assert LangBridgeConfig.from_pretrained(tmp_path / "flag").projector_hidden_act == "gelu"
    partial = {k: v for k, v in hub_config_for(parts).items() if k != "combine_in_float32"}
    pair.write_text(json.dumps(partial))
    assert "combine_in_float32" not in read_hub_config(pair)


def test_a_hub_config_with_an_unknown_key_is_refused_by_name(parts, tmp_path, capsys):
    import json

    from modeling_langbridge.cli import main

    pair = tmp_path / "pair.json"
    pair.write_text(json.dumps(hub_config_for(parts, coefficients="softmax")))  # 0.1's flag name, not the config's
    assert main(["compose", "--config", str(pair), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert "does not have: coefficients" in error and "coefficient_activation" in error
    assert not (tmp_path / "out").exists()
