"""Shared fixtures: tiny real parts built locally once per session, and models composed from them."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from modeling_langbridge.compose import compose  # noqa: E402
from modeling_langbridge.tiny import (  # noqa: E402
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
    composed = compose(str(parts["clip"]), str(parts["qwen2"]), projector_hidden_size=64, vocab_size=96)
    folder = tmp_path_factory.mktemp("qwen_clip")
    composed.model.save_pretrained(folder)
    composed.processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def llama_siglip_dir(parts, tmp_path_factory):
    """A saved LangBridge folder: SigLIP (no CLS) + Llama-style LLM, softmax coefficients."""
    torch.manual_seed(1)
    composed = compose(
        str(parts["siglip"]), str(parts["llama"]), projector_hidden_size=48, vocab_size=80, coefficients="softmax"
    )
    folder = tmp_path_factory.mktemp("llama_siglip")
    composed.model.save_pretrained(folder)
    composed.processor.save_pretrained(folder)
    return folder


@pytest.fixture(params=["qwen_clip_dir", "llama_siglip_dir"])
def model_dir(request):
    """Each composed folder in turn: two LLM families, two vision towers, both coefficient activations."""
    return request.getfixturevalue(request.param)
