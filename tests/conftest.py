"""Shared fixtures: tiny real parts built locally once per session, and models composed from them."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import PreTrainedModel  # noqa: E402

from modeling_langbridge.assembly.compose import compose  # noqa: E402
from modeling_langbridge.assembly.tiny import (  # noqa: E402
    save_clip_vision,
    save_llama_style_llm,
    save_qwen2_style_llm,
    save_siglip_vision,
)


@pytest.fixture(scope="session")
def parts(tmp_path_factory):
    """Folders of tiny pretrained-style parts: two LLM families, a CLIP (dual encoder and vision-only) and a SigLIP."""
    root = tmp_path_factory.mktemp("parts")
    return {
        "qwen2": save_qwen2_style_llm(root / "qwen2", hidden_size=64),
        "llama": save_llama_style_llm(root / "llama", hidden_size=48),
        "clip": save_clip_vision(root / "clip", full_clip=True),
        "clip_vision": save_clip_vision(root / "clip_vision", full_clip=False, seed=1),
        "siglip": save_siglip_vision(root / "siglip"),
    }


@pytest.fixture(scope="session")
def qwen_clip_dir(parts, tmp_path_factory):
    """A saved LangBridge folder: CLIP (CLS dropped) + Qwen2-style LLM, raw-logit coefficients."""
    torch.manual_seed(0)
    composed = compose(str(parts["clip"]), str(parts["qwen2"]), projector_hidden_size=64, shared_vocab_size=96)
    folder = tmp_path_factory.mktemp("qwen_clip")
    composed.model.save_pretrained(folder)
    composed.processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def llama_siglip_dir(parts, tmp_path_factory):
    """A saved LangBridge folder: SigLIP (no CLS) + Llama-style LLM, softmax coefficients."""
    torch.manual_seed(1)
    composed = compose(
        str(parts["siglip"]),
        str(parts["llama"]),
        projector_hidden_size=48,
        shared_vocab_size=80,
        coefficient_activation="softmax",
    )
    folder = tmp_path_factory.mktemp("llama_siglip")
    composed.model.save_pretrained(folder)
    composed.processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiled_dir(parts, tmp_path_factory):
    """A composed LangBridge folder that tiles: CLIP + Qwen2-style LLM, grids of 1 x 2, 2 x 1 and 2 x 2 tiles."""
    torch.manual_seed(0)
    composed = compose(
        str(parts["clip"]),
        str(parts["qwen2"]),
        projector_hidden_size=64,
        shared_vocab_size=96,
        image_grid_pinpoints="1x2,2x1,2x2",
    )
    return composed.save(tmp_path_factory.mktemp("tiled") / "model")


@pytest.fixture(params=["qwen_clip_dir", "llama_siglip_dir"])
def model_dir(request):
    """Each composed folder in turn: two LLM families, two vision towers, both coefficient activations."""
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """A small shapes world in LLaVA's layout: captions (stage 1) and question-answer conversations (stage 2)."""
    from langbridge_training.demo.world import write_llava_dataset

    root = tmp_path_factory.mktemp("world")
    return {
        "root": root,
        "captions": write_llava_dataset(root, 64, seed=0, kind="caption"),
        "qa": write_llava_dataset(root, 64, seed=1, kind="qa"),
        "images": root / "images",
    }


@pytest.fixture(scope="session")
def world_model_dir(tmp_path_factory, parts):
    """A LangBridge folder whose LLM knows the world's language (a tiny Qwen2-style LM trained on its texts)."""
    import random

    from langbridge_training.demo.text_lm import train_causal_lm
    from langbridge_training.demo.world import caption, questions, random_scene
    from modeling_langbridge.assembly.tiny import byte_level_bpe_tokenizer

    rng = random.Random(7)
    texts = []  # documents of several lines, as real LLMs read: a caption, then questions and answers
    for _ in range(1500):
        scene = random_scene(rng)
        texts.append("\n".join([caption(scene)] + [f"{q} {a}." for _, q, a in questions(scene, rng)]))
    root = tmp_path_factory.mktemp("world_model")
    llm = save_qwen2_style_llm(root / "llm", byte_level_bpe_tokenizer(texts), hidden_size=64)
    train_causal_lm(llm, texts, steps=300, progress=False)
    torch.manual_seed(0)
    composed = compose(str(parts["clip_vision"]), str(llm), projector_hidden_size=64, shared_vocab_size=128)
    return composed.save(root / "langbridge")


@pytest.fixture
def kernel_requests(monkeypatch):
    """What each `from_pretrained` asked of transformers' kernel switch (kernelizing itself needs a Hub)."""
    requests = []

    def record(self, use_kernels, *args, **kwargs):
        requests.append((type(self).__name__, bool(use_kernels)))

    monkeypatch.setattr(PreTrainedModel, "set_use_kernels", record)
    return requests
