"""What transformers' own model suites expect of a LangBridge model, checked with the public API (the suites
themselves run in test_transformers_mixins.py where their files can be had): the vision tower's outputs from
`get_image_features`, a tensor-parallel plan for the head, the tower's own initialisation of missing weights, and a
decode step that compiles as one graph."""

import pytest
import torch
from test_transformers_contract import one_question
from transformers import AutoModelForImageTextToText, AutoProcessor, CompileConfig

from modeling_langbridge.model.modeling_langbridge import LangBridgeForConditionalGeneration


def test_image_features_carry_the_towers_outputs_as_llava_gives_them(qwen_clip_dir):
    model = AutoModelForImageTextToText.from_pretrained(qwen_clip_dir, attn_implementation="eager").eval()
    pixel_values = one_question(AutoProcessor.from_pretrained(qwen_clip_dir))["pixel_values"]
    layers = model.config.vision_config.num_hidden_layers
    with torch.no_grad():
        plain = model.get_image_features(pixel_values)
        full = model.get_image_features(pixel_values, output_hidden_states=True, output_attentions=True)
        as_tuple = model.get_image_features(pixel_values, return_dict=False)
        tower = model.model.vision_tower(pixel_values)

    assert plain.hidden_states is None and plain.attentions is None  # only when asked
    assert len(full.hidden_states) == layers + 1 and len(full.attentions) == layers
    torch.testing.assert_close(full.last_hidden_state, tower.last_hidden_state)
    torch.testing.assert_close(full.pooler_output[0], plain.pooler_output[0])
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[1][0], plain.pooler_output[0])

    model.config.output_hidden_states = True  # the config's default answers when the argument is not given
    with torch.no_grad():
        assert len(model.get_image_features(pixel_values).hidden_states) == layers + 1


def test_tensor_parallel_plan_shards_the_head_as_the_tied_embeddings(qwen_clip_dir):
    """With tied embeddings (Qwen2-0.5B's), the LLM's plan shards the embedding table by vocabulary rows; the head
    that shares it must be sharded the same way, its logits gathered, as LLaVA's plan says."""
    model = AutoModelForImageTextToText.from_pretrained(qwen_clip_dir)
    assert model.config.tie_word_embeddings
    plan = model.tp_plan
    assert plan.get("lm_head") == "colwise_gather_output"
    assert plan.get("model.language_model.embed_tokens") == "embedding_rowwise"
    assert LangBridgeForConditionalGeneration._tp_plan == {"lm_head": "colwise_gather_output"}


def test_weights_missing_from_a_checkpoint_get_the_vision_towers_own_initialisation(qwen_clip_dir, tmp_path):
    """A folder saved without some of CLIP's weights: they are re-initialised with CLIP's scheme (its MLP's fc1 std
    (2 * hidden)^-0.5), not transformers' generic std of 0.02."""
    from safetensors.torch import load_file, save_file

    model = AutoModelForImageTextToText.from_pretrained(qwen_clip_dir)
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    fc1 = [name for name in weights if name.endswith("mlp.fc1.weight") and "vision" in name]
    assert fc1
    save_file({k: v for k, v in weights.items() if k not in fc1}, tmp_path / "model.safetensors", {"format": "pt"})

    torch.manual_seed(0)
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path)
    config = reloaded.config.vision_config
    expected_std = (2 * config.hidden_size) ** -0.5 * config.initializer_factor
    stds = [reloaded.get_parameter(name).std().item() for name in fc1]
    assert all(abs(std - expected_std) < 0.35 * expected_std for std in stds), (stds, expected_std)
    assert all(abs(std - 0.02) > 0.35 * expected_std for std in stds)


@pytest.mark.slow
def test_static_cache_compiled_generation_gives_eagers_greedy_tokens(world_model_dir):
    """transformers' compiled decode step (`cache_implementation="static"`, `CompileConfig(fullgraph=True)`): the
    step is captured as one graph and gives eager's tokens."""
    model = AutoModelForImageTextToText.from_pretrained(world_model_dir).eval()
    inputs = one_question(AutoProcessor.from_pretrained(world_model_dir))
    length = inputs["input_ids"].shape[1]
    settings = {"max_new_tokens": 10, "min_new_tokens": 10, "do_sample": False}
    with torch.no_grad():
        eager = model.generate(**inputs, **settings)
        torch.compiler.reset()
        compile_config = CompileConfig(fullgraph=True, dynamic=False)  # a graph break or dynamic shape fails
        compile_config._compile_all_devices = True  # transformers compiles on accelerators only unless told so
        compiled = model.generate(**inputs, **settings, cache_implementation="static", compile_config=compile_config)
    assert hasattr(model, "_compiled_call"), "generate did not compile the decode step"
    assert len(set(eager[0, length:].tolist())) > 1, "a degenerate answer would hide disagreements"
    assert compiled[0, length:].tolist() == eager[0, length:].tolist()
