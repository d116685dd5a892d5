"""Tiny stand-ins for real checkpoints, built locally: tokenizers trained with `tokenizers`, small
randomly initialised LLMs and vision towers, saved as ordinary transformers folders.

They let tests, the quickstart, the demo and CI exercise the real loading code (`from_pretrained(path)`) with no
Hub access. Two LLM families on purpose: Qwen2-style (byte-level BPE, ChatML tokens) and Llama-style
(SentencePiece-style BPE with `▁` and byte fallback), with different hidden sizes.
"""

import json
import random
import re
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    SiglipImageProcessor,
    SiglipVisionConfig,
    SiglipVisionModel,
)

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]
SHAPES = ["circle", "square", "triangle", "star", "cross", "diamond"]
PLACES = ["left", "right", "top", "bottom", "centre", "middle"]
NUMBERS = ["one", "two", "three", "four", "five", "no"]


def tiny_corpus(size: int = 600, seed: int = 0) -> list[str]:
    """Captions, questions and plain phrasing about shapes, enough for a tokenizer to learn words."""
    rng = random.Random(seed)
    templates = [
        "a {c} {s} is on the {p} of the image.",
        "There is a {c} {s} in the {p}.",
        "How many {s}s are there? {n}.",
        "What colour is the {s}? It is {c}.",
        "Is there a {c} {s}? Yes, there is.",
        "The picture shows {n} {c} shapes and a {s}.",
        "Describe the image. A small {c} {s} next to a large {c2} {s2}.",
        "Where is the {s}? The {s} is at the {p}.",
    ]
    lines = []
    for _ in range(size):
        lines.append(
            rng.choice(templates).format(
                c=rng.choice(COLOURS),
                c2=rng.choice(COLOURS),
                s=rng.choice(SHAPES),
                s2=rng.choice(SHAPES),
                p=rng.choice(PLACES),
                n=rng.choice(NUMBERS),
            )
        )
    return lines


def byte_level_bpe_tokenizer(corpus: list[str], vocab_size: int = 600) -> PreTrainedTokenizerFast:
    """A Qwen2-style tokenizer: byte-level BPE (`Ġ` spaces) with ChatML special tokens."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )


def sentencepiece_style_tokenizer(corpus: list[str], vocab_size: int = 500) -> PreTrainedTokenizerFast:
    """A Llama-2-style tokenizer: BPE over `▁`-marked words, `<0xNN>` byte-fallback tokens at ids 3-258
    (ordinary tokens, as in Llama's vocabulary), `<s>` prepended."""
    specials = ["<unk>", "<s>", "</s>"]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    # Newlines stand apart, as in Llama's tokenizer (`<0x0A>`): no piece spans two lines.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split("\n", behavior="isolated"),
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first"),
        ]
    )
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    tokenizer.train_from_iterator(corpus, trainer)

    # Renumber: specials, then the 256 byte tokens, then the learned pieces (merges refer to strings, not ids).
    spec = json.loads(tokenizer.to_str())
    learned = [t for t, _ in sorted(spec["model"]["vocab"].items(), key=lambda item: item[1]) if t not in specials]
    ordered = (
        specials
        + [f"<0x{i:02X}>" for i in range(256)]
        + [t for t in learned if not re.fullmatch(r"<0x[0-9A-F]{2}>", t)]
    )
    spec["model"]["vocab"] = {token: i for i, token in enumerate(ordered)}
    spec["decoder"] = {
        "type": "Sequence",
        "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0},
        ],
    }
    spec["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [
            {"SpecialToken": {"id": "<s>", "type_id": 0}},
            {"Sequence": {"id": "A", "type_id": 0}},
            {"SpecialToken": {"id": "<s>", "type_id": 1}},
            {"Sequence": {"id": "B", "type_id": 1}},
        ],
        "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}},
    }
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<unk>",
    )


def save_qwen2_style_llm(
    folder: str | Path,
    tokenizer=None,
    hidden_size: int = 64,
    num_layers: int = 2,
    seed: int = 0,
    tie_word_embeddings: bool = True,
    initializer_range: float = 0.02,
) -> Path:
    """A small Qwen2 causal LM with a byte-level BPE tokenizer, saved as a transformers folder. Ties its output
    head to its embeddings by default, as Qwen2-0.5B does. A larger `initializer_range` than transformers' 0.02 gives
    an untrained model whose greedy tokens vary with its input (at 0.02 they are one token over and over)."""
    tokenizer = tokenizer or byte_level_bpe_tokenizer(tiny_corpus())
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=tie_word_embeddings,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=initializer_range,
    )
    return _save_llm(Qwen2ForCausalLM, config, tokenizer, folder, seed)


def save_llama_style_llm(
    folder: str | Path, tokenizer=None, hidden_size: int = 48, num_layers: int = 2, seed: int = 0
) -> Path:
    """A small Llama causal LM with a SentencePiece-style tokenizer, saved as a transformers folder."""
    tokenizer = tokenizer or sentencepiece_style_tokenizer(tiny_corpus())
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return _save_llm(LlamaForCausalLM, config, tokenizer, folder, seed)


def _save_llm(model_class, config, tokenizer, folder, seed: int) -> Path:
    torch.manual_seed(seed)
    folder = Path(folder)
    model_class(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_clip_vision(
    folder: str | Path,
    image_size: int = 32,
    patch_size: int = 8,
    hidden_size: int = 32,
    full_clip: bool = False,
    seed: int = 0,
) -> Path:
    """A small CLIP vision tower (with CLS) and its image processor.

    `full_clip=True` saves a whole `CLIPModel` (text + vision), the layout of `openai/clip-vit-*` repos.
    """
    torch.manual_seed(seed)
    vision = dict(
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=hidden_size,
    )
    if full_clip:
        text = dict(
            vocab_size=64,
            hidden_size=hidden_size,
            intermediate_size=2 * hidden_size,
            num_hidden_layers=1,
            num_attention_heads=4,
            max_position_embeddings=16,
            projection_dim=hidden_size,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=hidden_size))
    else:
        model = CLIPVisionModel(CLIPVisionConfig(**vision))
    folder = Path(folder)
    model.save_pretrained(folder)
    CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    ).save_pretrained(folder)
    return folder


def save_siglip_vision(
    folder: str | Path, image_size: int = 32, patch_size: int = 8, hidden_size: int = 32, seed: int = 0
) -> Path:
    """A small SigLIP vision tower (no CLS token) and its image processor."""
    torch.manual_seed(seed)
    config = SiglipVisionConfig(
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
    )
    folder = Path(folder)
    SiglipVisionModel(config).save_pretrained(folder)
    SiglipImageProcessor(size={"height": image_size, "width": image_size}).save_pretrained(folder)
    return folder


def random_shapes_image(seed: int = 0, size: int = 64, mode: str = "RGB"):
    """A PIL image with a few coloured rectangles, for prompts that need a picture."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x, y = rng.randrange(size - 16), rng.randrange(size - 16)
        draw.rectangle([x, y, x + 8 + rng.randrange(8), y + 8 + rng.randrange(8)], fill=rng.choice(COLOURS))
    return image.convert(mode)


__all__ = [
    "byte_level_bpe_tokenizer",
    "random_shapes_image",
    "save_clip_vision",
    "save_llama_style_llm",
    "save_qwen2_style_llm",
    "save_siglip_vision",
    "sentencepiece_style_tokenizer",
    "tiny_corpus",
]
