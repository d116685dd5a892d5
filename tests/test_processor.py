"""The processor: placeholder expansion, chat template, and the inputs it refuses."""

import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, AutoTokenizer

from modeling_langbridge import LangBridgeProcessor
from modeling_langbridge.assembly.tiny import random_shapes_image


def user_turn(text, images=1):
    return {"role": "user", "content": [{"type": "image"}] * images + [{"type": "text", "text": text}]}


@pytest.mark.parametrize(
    ("folder", "tokens_per_image"),
    [("qwen_clip_dir", 16), ("llama_siglip_dir", 16)],  # CLIP: 17 tokens, CLS dropped; SigLIP: 16 patches, no CLS
)
def test_each_image_placeholder_expands_to_the_models_visual_tokens(request, folder, tokens_per_image):
    processor = AutoProcessor.from_pretrained(request.getfixturevalue(folder))
    text = processor.apply_chat_template([user_turn("Compare them.", images=2)], add_generation_prompt=True)
    assert text.count("<image>") == 2
    inputs = processor(images=[random_shapes_image(0), random_shapes_image(1)], text=text, return_tensors="pt")
    assert (inputs["input_ids"] == processor.image_token_id).sum() == 2 * tokens_per_image
    assert inputs["pixel_values"].shape == (2, 3, 32, 32)


def test_any_image_size_and_mode_becomes_the_towers_input(qwen_clip_dir):
    processor = AutoProcessor.from_pretrained(qwen_clip_dir)
    images = [random_shapes_image(0, size=100, mode=mode) for mode in ("RGB", "RGBA", "L", "P")]
    images.append(Image.new("RGB", (17, 300), "red"))
    inputs = processor(images=images, text=["<image>"] * len(images), return_tensors="pt")
    assert inputs["pixel_values"].shape == (5, 3, 32, 32)


def test_chat_template_marks_assistant_replies_for_assistant_only_loss(model_dir):
    processor = AutoProcessor.from_pretrained(model_dir)
    conversation = [
        user_turn("What colour is the star?"),
        {"role": "assistant", "content": [{"type": "text", "text": "The star is red."}]},
        {"role": "user", "content": [{"type": "text", "text": "And the circle?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "It is blue."}]},
    ]
    out = processor.tokenizer.apply_chat_template(
        conversation, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids, mask = out["input_ids"], out["assistant_masks"]
    trained = processor.tokenizer.decode([i for i, m in zip(ids, mask) if m])
    assert "red" in trained and "blue" in trained
    assert "colour" not in trained and "circle" not in trained  # user turns are not trained on
    eos = processor.tokenizer.eos_token_id
    assert [i for i, m in zip(ids, mask) if m].count(eos) == 2  # every reply ends with the end-of-turn token


def test_videos_and_audio_are_accepted_and_ignored(qwen_clip_dir):
    processor = AutoProcessor.from_pretrained(qwen_clip_dir)
    image = random_shapes_image(0)
    plain = processor(images=[image], text="<image> hi", return_tensors="pt")
    harness = processor(images=[image], text="<image> hi", videos=None, audios=None, return_tensors="pt")
    with_media = processor(images=[image], text="<image> hi", videos=[[image]], audio=[0.0] * 10, return_tensors="pt")
    for other in (harness, with_media):
        assert set(other) == set(plain)
        assert torch.equal(other["input_ids"], plain["input_ids"])


def test_image_and_placeholder_counts_must_match(qwen_clip_dir):
    processor = AutoProcessor.from_pretrained(qwen_clip_dir)
    image = random_shapes_image(0)
    with pytest.raises(ValueError, match="2 <image> tokens and 1 images"):
        processor(images=[image], text="<image> and <image>")
    with pytest.raises(ValueError, match="Found 1 <image> tokens in the text but no images"):
        processor(text="<image> alone")


def test_truncation_that_would_cut_an_image_is_refused(qwen_clip_dir):
    processor = AutoProcessor.from_pretrained(qwen_clip_dir)
    text = "Describe this picture in a few words please: <image>"
    with pytest.raises(ValueError, match=r"Truncation would cut the <image> tokens of an image \(max_length=12\)"):
        processor(images=[random_shapes_image(0)], text=text, truncation=True, max_length=12)
    kept = processor(
        images=[random_shapes_image(0)], text="<image> short", truncation=True, max_length=64, return_tensors="pt"
    )
    assert (kept["input_ids"] == processor.image_token_id).sum() == 16


def test_a_tokenizer_without_the_image_token_is_refused(parts):
    tokenizer = AutoTokenizer.from_pretrained(parts["qwen2"])
    with pytest.raises(ValueError, match="The tokenizer has no '<image>' token.*langbridge compose"):
        LangBridgeProcessor(image_processor=None, tokenizer=tokenizer, patch_size=8)


def dialect_tokenizer(specials, **kwargs):
    """A byte-level tokenizer whose only special tokens are the given ones."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from modeling_langbridge.assembly.tiny import tiny_corpus

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(tiny_corpus(100), trainers.BpeTrainer(vocab_size=300, show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend)
    tokenizer.add_special_tokens({"additional_special_tokens": specials, **kwargs})
    return tokenizer


@pytest.mark.parametrize(
    ("specials", "kwargs", "system", "expected"),
    [
        (
            ["<|im_start|>", "<|im_end|>"],
            {},
            None,
            "<|im_start|>user\n<image>\nWhat is it?<|im_end|>\n<|im_start|>assistant\nA star.<|im_end|>\n",
        ),
        (
            ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
            {"bos_token": "<|begin_of_text|>"},
            "Be brief.",
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user"
            "<|end_header_id|>\n\n<image>\nWhat is it?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nA star.<|eot_id|>",
        ),
        (
            [],
            {"bos_token": "<s>", "eos_token": "</s>"},
            None,
            "<s>USER: <image>\nWhat is it?\nASSISTANT: A star.</s>\n",
        ),
    ],
    ids=["chatml", "llama3", "plain"],
)
def test_each_chat_dialect_renders_exactly(specials, kwargs, system, expected):
    from modeling_langbridge.assembly.chat_templates import chat_format_for
    from modeling_langbridge.assembly.compose import prepare_tokenizer

    tokenizer = dialect_tokenizer(specials, **kwargs)
    chat = chat_format_for(tokenizer)
    prepare_tokenizer(tokenizer, chat.with_default_system(system) if system else chat)
    conversation = [user_turn("What is it?"), {"role": "assistant", "content": "A star."}]
    assert tokenizer.apply_chat_template(conversation, tokenize=False) == expected
    out = tokenizer.apply_chat_template(
        conversation, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    trained = [i for i, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    reply = " A star." if chat.name == "plain" else "A star."  # plain: "ASSISTANT:" then the reply's own space
    assert tokenizer.decode(trained) == reply + tokenizer.eos_token
