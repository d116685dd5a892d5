"""The current transformers contract: generation modes, outputs, the attention interface, what an inference engine
asks of the processor, and the Hub-kernels policy of every loading path."""

import warnings

import pytest
import torch
from transformers import AttentionInterface, AutoModelForImageTextToText, AutoProcessor
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from modeling_langbridge.assembly.tiny import random_shapes_image
from modeling_langbridge.model.modeling_langbridge import hub_kernels_wanted


def load(folder):
    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    return model, AutoProcessor.from_pretrained(folder)


def one_question(processor, seed=0):
    content = [{"type": "image"}, {"type": "text", "text": "What is in the picture?"}]
    text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    return processor(images=[random_shapes_image(seed=seed)], text=[text], return_tensors="pt")


GENERATION_MODES = {
    "greedy": {},
    "sampling": {"do_sample": True, "top_k": 20},
    "beam": {"num_beams": 3},
    "static cache": {"cache_implementation": "static"},
    "prompt lookup": {"prompt_lookup_num_tokens": 3},
    "prefill chunking": {"prefill_chunk_size": 8},
    "assisted": "assistant",
}


def test_every_generation_mode_runs_and_the_exact_ones_agree(world_model_dir):
    """Greedy, sampling, beam, static cache, prompt lookup, prefill chunking and assisted decoding all run; the modes
    that must reproduce greedy do, and nothing warns of a deprecated API (FutureWarning / DeprecationWarning)."""
    model, processor = load(world_model_dir)
    inputs = one_question(processor)
    prompt_length = inputs["input_ids"].shape[1]
    settings = {"max_new_tokens": 12, "min_new_tokens": 12, "do_sample": False}
    answers = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for mode, extra in GENERATION_MODES.items():
            extra = {"assistant_model": model} if extra == "assistant" else extra
            torch.manual_seed(0)
            with torch.no_grad():
                generated = model.generate(**inputs, **(settings | extra))
            answers[mode] = generated[0, prompt_length:].tolist()
    assert all(len(tokens) == 12 for tokens in answers.values()), answers
    assert len(set(answers["greedy"])) > 1, "a degenerate answer would hide disagreements"
    for mode in ("static cache", "prompt lookup", "prefill chunking", "assisted"):
        assert answers[mode] == answers["greedy"], mode
    deprecations = [w for w in caught if issubclass(w.category, (FutureWarning, DeprecationWarning))]
    assert not deprecations, [f"{w.category.__name__}: {w.message}" for w in deprecations]


def test_outputs_follow_transformers_multimodal_outputs(qwen_clip_dir):
    """`cache` and `image_outputs` as in transformers' LLaVA; `image_hidden_states` stays for earlier callers."""
    model, processor = load(qwen_clip_dir)
    inputs = one_question(processor)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        with torch.no_grad():
            out = model(**inputs, use_cache=True)
    assert out.cache is not None and out.cache.get_seq_length() == inputs["input_ids"].shape[1]
    visual_tokens = out.image_outputs.pooler_output
    assert len(visual_tokens) == 1
    torch.testing.assert_close(out.image_hidden_states, visual_tokens[0])
    as_tuple = model(**inputs, return_dict=False)
    torch.testing.assert_close(as_tuple[0], out.logits)


def test_attention_goes_through_transformers_attention_interface(qwen_clip_dir):
    """An engine registers its attention with `AttentionInterface`; every LLM layer must call it (the vision
    tower may too), with the kwargs the model was given passed down."""
    calls = []

    def recording_attention(module, query, key, value, attention_mask, **kwargs):
        calls.append((type(module).__name__, kwargs.get("engine_marker")))
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register("langbridge_test_recording", recording_attention)
    model, processor = load(qwen_clip_dir)
    model.set_attn_implementation("langbridge_test_recording")
    inputs = one_question(processor)
    with torch.no_grad():
        reference = model(**inputs).logits
        calls.clear()
        logits = model(**inputs, engine_marker="passed-down").logits
    llm_layers = model.config.text_config.num_hidden_layers
    llm_calls = [marker for name, marker in calls if name.startswith("Qwen2")]
    assert len(llm_calls) == llm_layers
    assert set(llm_calls) == {"passed-down"}
    torch.testing.assert_close(logits, reference)


@pytest.mark.parametrize("folder", ["qwen_clip_dir", "llama_siglip_dir"])
def test_processor_reports_the_placeholders_an_image_becomes(folder, request):
    """`_get_num_multimodal_tokens` (what vLLM asks before processing) equals the placeholders the processor
    writes for images of several sizes and aspect ratios."""
    processor = AutoProcessor.from_pretrained(request.getfixturevalue(folder))
    sizes = [(64, 64), (40, 120), (200, 50), (17, 33)]
    reported = processor._get_num_multimodal_tokens(image_sizes=sizes)
    assert reported.num_image_patches == [1] * len(sizes)
    for (height, width), count in zip(sizes, reported.num_image_tokens):
        image = random_shapes_image(seed=height).resize((width, height))
        ids = processor(images=[image], text=[processor.image_token], return_tensors="pt")["input_ids"]
        assert int((ids == processor.image_token_id).sum()) == count
    assert processor.image_token == "<image>"
    assert processor.image_token_id == processor.tokenizer.convert_tokens_to_ids("<image>")


def test_hub_kernels_only_when_asked_or_reachable(monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "is_offline_mode", lambda: True)
    assert hub_kernels_wanted() is False
    assert hub_kernels_wanted(True) is True
    monkeypatch.setattr(huggingface_hub, "is_offline_mode", lambda: False)
    assert hub_kernels_wanted() is True
    assert hub_kernels_wanted(False) is False


def test_offline_loads_ask_for_no_hub_kernels(qwen_clip_dir, parts, kernel_requests, tmp_path):
    """Under HF_HUB_OFFLINE=1 (set for the tests) the Auto classes, compose and the recipes' loader ask for no
    Hub kernels, where transformers' default would ask for them and fail on a GPU without a cache; so does the
    recipes' loader for the demo's LLaVA baseline, which is no LangBridge class."""
    from trl import ModelConfig

    from langbridge_training.demo.llava_baseline import compose_llava
    from langbridge_training.models import load_for_stage
    from modeling_langbridge.assembly.compose import compose

    AutoModelForImageTextToText.from_pretrained(qwen_clip_dir)
    compose(str(parts["clip"]), str(parts["qwen2"]), projector_hidden_size=16, shared_vocab_size=32)
    llava = compose_llava(str(parts["clip"]), str(parts["qwen2"])).save(tmp_path / "llava")
    load_for_stage(ModelConfig(model_name_or_path=str(llava)), "pretrain", False, str(tmp_path / "out"))
    loaded = {name for name, _ in kernel_requests}
    assert {"LangBridgeForConditionalGeneration", "LlavaForConditionalGeneration", "Qwen2ForCausalLM"} <= loaded
    assert not any(asked for _, asked in kernel_requests), kernel_requests


def test_an_explicit_kernels_setting_reaches_every_load(qwen_clip_dir, parts, tmp_path, kernel_requests):
    from trl import ModelConfig

    from langbridge_training.models import load_for_stage
    from modeling_langbridge.assembly.compose import compose

    compose(str(parts["clip"]), str(parts["qwen2"]), projector_hidden_size=16, shared_vocab_size=32, use_kernels=True)
    assert {name for name, asked in kernel_requests if asked} >= {"Qwen2ForCausalLM", "CLIPVisionModel"}
    kernel_requests.clear()
    load_for_stage(
        ModelConfig(model_name_or_path=str(qwen_clip_dir)), "pretrain", False, str(tmp_path), use_kernels=True
    )
    assert ("LangBridgeForConditionalGeneration", True) in kernel_requests


@pytest.mark.parametrize("switch", ["--use-kernels", "--no-use-kernels"])
def test_every_command_that_loads_a_model_takes_an_explicit_kernels_switch(
    switch, qwen_clip_dir, parts, tmp_path, kernel_requests, monkeypatch, capsys
):
    """compose, transfer, interpret, eval and alignment pass `--use-kernels` / `--no-use-kernels` to every load.
    Each switch is tried where the default would be the other: offline (no kernels) and reachable (kernels)."""
    import json

    from modeling_langbridge.cli import main
    from modeling_langbridge.model import modeling_langbridge

    wanted = switch == "--use-kernels"
    if not wanted:  # the Hub reachable: the default would ask for kernels
        monkeypatch.setattr(modeling_langbridge.huggingface_hub, "is_offline_mode", lambda: False)
    random_shapes_image(seed=3).save(tmp_path / "shapes.png")
    question = {"image": "shapes.png", "question": "What colour?", "answers": ["red"]}
    (tmp_path / "q.jsonl").write_text(json.dumps(question) + "\n")
    assert main(["export-adapter", "--model", str(qwen_clip_dir), "--out", str(tmp_path / "adapter")]) == 0
    parts_of = ["--vision-model", str(parts["clip"]), "--language-model", str(parts["qwen2"])]
    commands = {
        "compose": ["compose", *parts_of, "--out", str(tmp_path / "c"), "--shared-vocab-size", "32"],
        "transfer": ["transfer", "--adapter", str(tmp_path / "adapter"), *parts_of, "--out", str(tmp_path / "t")],
        "interpret": ["interpret", str(tmp_path / "shapes.png"), "--model", str(qwen_clip_dir)]
        + ["--out", str(tmp_path / "o.png")],
        "eval": ["eval", "--model", str(qwen_clip_dir), "--data", str(tmp_path / "q.jsonl")]
        + ["--out", str(tmp_path / "e"), "--max-new-tokens", "2"],
        "alignment": ["alignment", "--checkpoints", str(qwen_clip_dir), str(tmp_path / "t")]
        + ["--images", str(tmp_path / "shapes.png"), "--out", str(tmp_path / "a.png")],
    }
    for name, arguments in commands.items():
        kernel_requests.clear()
        assert main([*arguments, switch]) == 0, (name, capsys.readouterr().err)
        assert kernel_requests and {asked for _, asked in kernel_requests} == {wanted}, (name, kernel_requests)


# ---------------------------------------------------------------- what vLLM's Transformers backend asks


def test_processor_answers_what_an_inference_engine_asks(qwen_clip_dir):
    """vLLM's Transformers backend calls the processor with `return_mm_token_type_ids=True`, splits the image
    positions by `_get_num_multimodal_tokens`, profiles with 10,000 x 10,000 images, and (newer versions) asks for
    the text replacement offsets."""
    processor = AutoProcessor.from_pretrained(qwen_clip_dir)
    images = [random_shapes_image(seed=1).resize((90, 30)), random_shapes_image(seed=2)]
    text = f"First {processor.image_token} then {processor.image_token}."
    out = processor(text=[text], images=images, return_mm_token_type_ids=True, return_tensors="pt")
    image_positions = out["input_ids"] == processor.image_token_id
    assert torch.equal(out["mm_token_type_ids"].bool(), image_positions)
    counts = processor._get_num_multimodal_tokens(image_sizes=[(30, 90), (64, 64)])
    positions = torch.where(out["mm_token_type_ids"][0] == 1)[0]
    assert [len(p) for p in torch.split(positions, counts["num_image_tokens"])] == counts["num_image_tokens"]
    assert out["pixel_values"].shape[0] == sum(counts["num_image_patches"])
    assert (
        processor._get_num_multimodal_tokens(image_sizes=([10000, 10000],))["num_image_tokens"]
        == counts["num_image_tokens"][:1]
    )
    offsets = processor(text=[text], images=images, return_text_replacement_offsets=True)["text_replacement_offsets"][0]
    assert [o["replacement"].count(processor.image_token) for o in offsets] == counts["num_image_tokens"]
    assert not hasattr(processor, "audio_token")


def test_base_model_runs_as_an_engine_drives_it(qwen_clip_dir):
    """The engine builds the base model from `auto_map["AutoModel"]`, encodes images with `get_image_features`,
    writes them into the embeddings itself, and runs the backbone on `inputs_embeds` with `return_dict=False`:
    the hidden states equal the full model's."""
    import json

    from transformers import AutoModel

    from modeling_langbridge import LangBridgeModel

    config = json.loads((qwen_clip_dir / "config.json").read_text())
    assert config["auto_map"]["AutoModel"].endswith("LangBridgeModel")
    base = AutoModel.from_pretrained(qwen_clip_dir).eval()
    assert base.config.get_text_config() is base.config.text_config and base._supports_attention_backend
    processor = AutoProcessor.from_pretrained(qwen_clip_dir)
    inputs = one_question(processor)
    with torch.no_grad():
        features = base.get_image_features(inputs["pixel_values"]).pooler_output
        embeddings = base.get_input_embeddings()(inputs["input_ids"])
        embeddings[inputs["input_ids"] == processor.image_token_id] = torch.cat(list(features))
        positions = torch.arange(inputs["input_ids"].shape[1])[None]
        hidden = base(inputs_embeds=embeddings, position_ids=positions, use_cache=False, return_dict=False)[0]
        expected = base(**inputs).last_hidden_state
    torch.testing.assert_close(hidden, expected)
    fresh = LangBridgeModel(base.config)  # an engine allocates parameters but keeps the buffers __init__ made
    assert fresh.multi_modal_projector.vocab_token_ids.tolist() == base.config.vocab_token_ids
