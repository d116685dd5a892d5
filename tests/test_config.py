import pytest
from transformers import AutoConfig, CLIPVisionConfig, LlamaConfig, Qwen2Config

from modeling_langbridge import LangBridgeConfig


def tiny_text(vocab_size=100):
    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2
    )


def test_defaults_describe_clip_l_336_with_qwen2_and_the_papers_sizes():
    config = LangBridgeConfig()
    assert isinstance(config.vision_config, CLIPVisionConfig)
    assert (config.vision_config.hidden_size, config.vision_config.image_size, config.vision_config.patch_size) == (
        1024,
        336,
        14,
    )
    assert isinstance(config.text_config, Qwen2Config) and config.text_config.hidden_size == 896
    assert (config.shared_vocab_size, config.projector_hidden_size) == (19200, 5120)
    assert config.coefficient_activation == "none" and config.combine_in_float32
    assert config.vision_feature_layer == -2 and config.vision_feature_select_strategy == "default"
    assert config.image_seq_length == (336 // 14) ** 2
    assert config.tie_word_embeddings  # Qwen2-0.5B ties its head to its embeddings


def test_round_trip_through_json_and_auto_config(tmp_path):
    config = LangBridgeConfig(
        text_config=tiny_text(), vocab_token_ids=[5, 6, [7, 8], 9], image_token_id=99, coefficient_activation="softmax"
    )
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, LangBridgeConfig)
    assert loaded.vocab_token_ids == [5, 6, [7, 8], 9]
    assert loaded.shared_vocab_size == 4
    assert loaded.coefficient_activation == "softmax"
    assert loaded.text_config.vocab_size == 100


def test_ids_outside_the_llm_vocabulary_are_refused_with_the_fix():
    with pytest.raises(
        ValueError, match=r"outside the LLM's vocabulary.*vocab_size = 100.*entry 1: id 150.*langbridge transfer"
    ):
        LangBridgeConfig(text_config=tiny_text(), vocab_token_ids=[3, 150, [4, -1]], image_token_id=99)


def test_image_token_in_the_vocabulary_is_refused():
    with pytest.raises(ValueError, match="image placeholder id 99 is in the shared vocabulary"):
        LangBridgeConfig(text_config=tiny_text(), vocab_token_ids=[3, 99], image_token_id=99)


def test_image_token_outside_the_vocabulary_is_refused():
    with pytest.raises(ValueError, match="image_token_id 151646 is outside the LLM's vocabulary"):
        LangBridgeConfig(text_config=tiny_text())


def test_size_mismatch_and_empty_composed_entries_are_refused():
    with pytest.raises(ValueError, match="3 entries but shared_vocab_size is 4"):
        LangBridgeConfig(text_config=tiny_text(), vocab_token_ids=[1, 2, 3], shared_vocab_size=4, image_token_id=99)
    with pytest.raises(ValueError, match="empty lists"):
        LangBridgeConfig(text_config=tiny_text(), vocab_token_ids=[1, []], image_token_id=99)


def test_unknown_coefficient_activation_is_refused():
    with pytest.raises(Exception, match="coefficient_activation"):
        LangBridgeConfig(coefficient_activation="relu")
