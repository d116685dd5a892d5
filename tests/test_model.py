"""The full model on composed folders: generation, caching, save/load, loss, attention backends, bad input."""

import importlib.util

import pytest
import torch
from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor

from modeling_langbridge import LangBridgeForConditionalGeneration, LangBridgeModel
from modeling_langbridge.assembly.tiny import random_shapes_image


def load(folder, **kwargs):
    model = AutoModelForImageTextToText.from_pretrained(folder, **kwargs).eval()
    processor = AutoProcessor.from_pretrained(folder)
    return model, processor


def chat_inputs(processor, questions=("What colour is the star?",), images_per_prompt=1):
    texts, images = [], []
    for n, question in enumerate(questions):
        content = [{"type": "image"}] * images_per_prompt + [{"type": "text", "text": question}]
        texts.append(processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True))
        images += [random_shapes_image(seed=n * 10 + k) for k in range(images_per_prompt)]
    processor.tokenizer.padding_side = "left"
    return processor(images=images, text=texts, return_tensors="pt", padding=True)


def test_auto_classes_resolve_to_langbridge(qwen_clip_dir):
    model, processor = load(qwen_clip_dir)
    assert isinstance(model, LangBridgeForConditionalGeneration)
    assert isinstance(AutoModel.from_pretrained(qwen_clip_dir), LangBridgeModel)
    assert type(processor).__name__ == "LangBridgeProcessor"
    # LLaVA's module names, so PEFT regexes and quantization skip lists carry over.
    names = {name for name, _ in model.named_modules()}
    assert {"model.vision_tower", "model.multi_modal_projector", "model.language_model", "lm_head"} <= names


def test_generate_with_cache_equals_greedy_without_cache(model_dir):
    torch.manual_seed(0)
    model, processor = load(model_dir)
    inputs = chat_inputs(processor, ["What colour is the star?", "How many shapes?"])
    with torch.no_grad():
        cached = model.generate(**inputs, max_new_tokens=8, do_sample=False, use_cache=True)
        uncached = model.generate(**inputs, max_new_tokens=8, do_sample=False, use_cache=False)
    assert cached.shape[1] > inputs["input_ids"].shape[1]
    assert torch.equal(cached, uncached)


def test_greedy_generation_matches_a_manual_argmax_loop(qwen_clip_dir):
    """generate() with cache gives exactly the tokens of repeated full forwards."""
    model, processor = load(qwen_clip_dir)
    inputs = chat_inputs(processor)
    model.generation_config.suppress_tokens = None  # compare raw argmax
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=6, do_sample=False, eos_token_id=None)
        ids = inputs["input_ids"]
        mask = inputs["attention_mask"]
        for _ in range(6):
            logits = model(input_ids=ids, attention_mask=mask, pixel_values=inputs["pixel_values"]).logits
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    assert torch.equal(generated, ids)


def test_save_and_load_give_identical_logits(model_dir, tmp_path):
    model, processor = load(model_dir)
    inputs = chat_inputs(processor)
    with torch.no_grad():
        before = model(**inputs).logits
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    assert torch.equal(
        reloaded.model.multi_modal_projector.vocab_token_ids, model.model.multi_modal_projector.vocab_token_ids
    )
    with torch.no_grad():
        after = reloaded(**inputs).logits
    assert torch.equal(before, after)


def test_image_features_reach_the_llm_at_the_placeholders(qwen_clip_dir):
    model, processor = load(qwen_clip_dir)
    inputs = chat_inputs(processor)
    with torch.no_grad():
        out = model(**inputs)
        features = model.get_image_features(inputs["pixel_values"]).pooler_output[0]
        other_image = chat_inputs(processor, ["What colour is the star?"])  # same text, different seed below
        other_image["pixel_values"] = torch.randn_like(other_image["pixel_values"])
        out_other = model(**other_image)
    torch.testing.assert_close(out.image_hidden_states, features)
    assert features.shape[0] == model.config.image_seq_length
    assert not torch.allclose(out.logits[:, -1], out_other.logits[:, -1])  # the image changes the answer


def test_loss_ignores_image_and_padding_positions(qwen_clip_dir):
    model, processor = load(qwen_clip_dir)
    inputs = chat_inputs(processor, ["What colour is the star?", "How many shapes are in this picture?"])
    labels = inputs["input_ids"].clone()  # naive labels: a copy of the inputs, image tokens and padding included
    with torch.no_grad():
        out = model(**inputs, labels=labels)
    logits = out.logits[:, :-1].reshape(-1, out.logits.shape[-1]).double()
    targets = labels[:, 1:].reshape(-1)
    trainable = (targets != model.config.image_token_id) & (inputs["attention_mask"][:, 1:].reshape(-1) == 1)
    expected = torch.nn.functional.cross_entropy(logits[trainable], targets[trainable])
    assert (~trainable).sum() > model.config.image_seq_length  # image and padding positions exist and are skipped
    torch.testing.assert_close(out.loss.double(), expected, rtol=1e-5, atol=1e-6)


def test_base_model_output_is_what_trainers_put_their_head_on(qwen_clip_dir):
    """TRL calls the base model and applies lm_head itself: that path must carry the images too."""
    model, processor = load(qwen_clip_dir)
    inputs = chat_inputs(processor)
    with torch.no_grad():
        hidden = model.model(**inputs).last_hidden_state
        logits = model(**inputs).logits
    torch.testing.assert_close(model.lm_head(hidden), logits)


def test_eager_and_sdpa_attention_agree(model_dir):
    eager, processor = load(model_dir, attn_implementation="eager")
    sdpa, _ = load(model_dir, attn_implementation="sdpa")
    assert eager.config.text_config._attn_implementation == "eager"
    assert sdpa.config.text_config._attn_implementation == "sdpa"
    inputs = chat_inputs(processor, ["What colour is the star?", "Where?"])
    real = inputs["attention_mask"].bool()  # padded rows attend to nothing: backends may fill them differently
    with torch.no_grad():
        torch.testing.assert_close(eager(**inputs).logits[real], sdpa(**inputs).logits[real], rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(
    importlib.util.find_spec("flash_attn") is None or not torch.cuda.is_available(),
    reason="flash_attention_2 needs the flash-attn package and a CUDA GPU (extra: langbridge-hf[gpu])",
)
def test_flash_attention_2_agrees_with_sdpa(qwen_clip_dir):
    flash, processor = load(
        qwen_clip_dir, attn_implementation="flash_attention_2", dtype=torch.bfloat16, device_map="cuda"
    )
    sdpa, _ = load(qwen_clip_dir, attn_implementation="sdpa", dtype=torch.bfloat16, device_map="cuda")
    inputs = chat_inputs(processor).to("cuda")
    with torch.no_grad():
        torch.testing.assert_close(flash(**inputs).logits, sdpa(**inputs).logits, rtol=2e-2, atol=2e-2)


class TestBadInputIsRefused:
    def test_more_images_than_placeholders(self, qwen_clip_dir):
        model, processor = load(qwen_clip_dir)
        inputs = chat_inputs(processor)
        two_images = torch.cat([inputs["pixel_values"]] * 2)
        with pytest.raises(
            ValueError, match=r"16 <image> placeholder tokens \(room for 1 image\(s\) of 16 tokens\) but 2 image\(s\)"
        ):
            model(input_ids=inputs["input_ids"], pixel_values=two_images)

    def test_pixel_values_without_placeholders(self, qwen_clip_dir):
        model, processor = load(qwen_clip_dir)
        inputs = chat_inputs(processor)
        text_only = processor.tokenizer("no image here", return_tensors="pt")
        with pytest.raises(
            ValueError, match="1 image\\(s\\) were given \\(pixel_values\\) but input_ids hold no <image> placeholder"
        ):
            model(input_ids=text_only["input_ids"], pixel_values=inputs["pixel_values"])

    def test_placeholders_without_images(self, qwen_clip_dir):
        model, processor = load(qwen_clip_dir)
        inputs = chat_inputs(processor)
        with pytest.raises(ValueError, match="16 <image> placeholder tokens but no image was given"):
            model(input_ids=inputs["input_ids"])
        with pytest.raises(ValueError, match="no image was given"):
            model.generate(input_ids=inputs["input_ids"], max_new_tokens=2)

    def test_a_cut_image(self, qwen_clip_dir):
        model, processor = load(qwen_clip_dir)
        inputs = chat_inputs(processor)
        image_token = model.config.image_token_id
        first = int((inputs["input_ids"][0] == image_token).nonzero()[0])
        cut = torch.cat([inputs["input_ids"][:, : first + 5], inputs["input_ids"][:, first + 16 :]], dim=1)
        with pytest.raises(ValueError, match="5 <image> placeholder tokens"):
            model(input_ids=cut, pixel_values=inputs["pixel_values"])

    def test_text_only_input_works(self, qwen_clip_dir):
        model, processor = load(qwen_clip_dir)
        inputs = processor(text=["Describe a red circle."], return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        assert out.shape[1] > inputs["input_ids"].shape[1]
