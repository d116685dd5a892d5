"""Tensor parallelism on two CPU processes (gloo): a saved LangBridge folder loaded with transformers'
`tp_plan="auto"` (tests/tp_probe.py) gives the unsharded model's logits and greedy tokens, with the LLM's layers,
embeddings and head really split between the ranks."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fsdp_probe import image_inputs
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

from modeling_langbridge.assembly.compose import compose
from modeling_langbridge.assembly.tiny import save_llama_style_llm, save_qwen2_style_llm

PROBE = Path(__file__).with_name("tp_probe.py")
LAYER = "model.language_model.layers.0."


def tiny_llm(save, folder: Path, seed: int) -> Path:
    """A tiny LLM whose embedding table is padded to a multiple of 64 rows (spare rows past the tokenizer, as Qwen2's
    151,936 are), so every size the plan shards (heads, KV heads, intermediate, vocabulary) divides by 2. Its matrices
    are drawn wider than transformers' 0.02 so that, untrained, its greedy tokens vary with the input."""
    save(folder)
    torch.manual_seed(seed)
    llm = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        for p in llm.parameters():
            if p.dim() == 2:
                p.normal_(std=0.3)
    llm.resize_token_embeddings(llm.config.vocab_size + 1, pad_to_multiple_of=64, mean_resizing=False)
    llm.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module", params=["qwen2-tied-none", "llama-untied-softmax"])
def tp_model_dir(request, parts, tmp_path_factory):
    """Qwen2-style LLM with tied embeddings and raw-logit coefficients (CLIP), or Llama-style with untied ones and
    softmax coefficients (SigLIP). The tokenizer plus `<image>` fits in the padded table, so compose keeps it."""
    root = tmp_path_factory.mktemp(request.param)
    if request.param.startswith("qwen2"):
        llm = tiny_llm(lambda f: save_qwen2_style_llm(f, hidden_size=64), root / "llm", seed=0)
        torch.manual_seed(0)
        composed = compose(str(parts["clip"]), str(llm), projector_hidden_size=64, shared_vocab_size=96)
    else:
        llm = tiny_llm(lambda f: save_llama_style_llm(f, hidden_size=48), root / "llm", seed=1)
        torch.manual_seed(1)
        composed = compose(
            str(parts["siglip"]),
            str(llm),
            projector_hidden_size=48,
            shared_vocab_size=80,
            coefficient_activation="softmax",
        )
    text = composed.model.config.text_config
    assert text.vocab_size % 2 == text.num_key_value_heads % 2 == text.intermediate_size % 2 == 0
    assert text.tie_word_embeddings == request.param.startswith("qwen2")
    return composed.save(root / "langbridge")


def run_probe(model_dir: Path, out: Path) -> dict:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29525",
            str(PROBE),
            str(model_dir),
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return torch.load(out, weights_only=True)


def test_the_plan_names_every_llm_layer_and_the_head(tp_model_dir):
    """The plan transformers applies under `tp_plan="auto"`: the LLM's own (its config's, under
    `model.language_model.`), its input embeddings on the vocabulary, and LangBridge's head; nothing of the vision
    tower or the projector, which stay whole on every rank."""
    model = AutoModelForImageTextToText.from_pretrained(tp_model_dir)
    plan = model.tp_plan
    text_plan = model.config.text_config.base_model_tp_plan
    assert text_plan and {f"model.language_model.{k}": v for k, v in text_plan.items()}.items() <= plan.items()
    assert plan["model.language_model.embed_tokens"] == "embedding_rowwise"
    assert plan["lm_head"] == "colwise_gather_output"
    assert not [k for k in plan if k.startswith(("model.vision_tower", "model.multi_modal_projector"))]


@pytest.mark.slow
def test_tensor_parallel_logits_and_greedy_tokens_equal_the_unsharded_models(tp_model_dir, tmp_path):
    sharded = run_probe(tp_model_dir, tmp_path / "tp.pt")
    assert sharded["world_size"] == 2

    # The LLM really is split: each rank holds half of every planned weight, the vision tower and projector whole.
    halves = {
        LAYER + "self_attn.q_proj.weight": 0,  # colwise: output rows
        LAYER + "self_attn.k_proj.weight": 0,
        LAYER + "self_attn.o_proj.weight": 1,  # rowwise: input columns
        LAYER + "mlp.gate_proj.weight": 0,
        LAYER + "mlp.down_proj.weight": 1,
        "model.language_model.embed_tokens.weight": 0,  # vocabulary rows
    }
    unsharded = AutoModelForImageTextToText.from_pretrained(tp_model_dir)
    tied = unsharded.config.text_config.tie_word_embeddings
    if not tied:  # tied: one parameter, listed once, under the embeddings' name
        halves["lm_head.weight"] = 0
    for rank in sharded["ranks"]:
        shapes = rank["shapes"]
        for name, dim in halves.items():
            assert shapes[name]["dtensor"], name
            expected = list(shapes[name]["full"])
            expected[dim] //= 2
            assert shapes[name]["local"] == expected, (name, shapes[name])
        whole = [n for n, s in shapes.items() if n.startswith(("model.vision_tower.", "model.multi_modal_projector."))]
        assert whole and all(shapes[n]["local"] == shapes[n]["full"] for n in whole)
        assert rank["tied"] == tied
        assert rank["plan"] == unsharded.tp_plan  # the plan test_the_plan_names_every_llm_layer_and_the_head reads

    model = AutoModelForImageTextToText.from_pretrained(tp_model_dir, dtype=torch.float32).eval()
    inputs = image_inputs(tp_model_dir)
    with torch.no_grad():
        logits = model(**inputs).logits
        generated = model.generate(**inputs, max_new_tokens=8, do_sample=False)[:, inputs["input_ids"].shape[1] :]
    assert sharded["logits"].shape == logits.shape
    # float32 throughout; the split matrix products and all-reduces only change the summation order. The tolerance is
    # 1e-5 of the logits' scale: these tiny LLMs' float32 logits differ from float64's by up to ~4e-6 of it.
    torch.testing.assert_close(sharded["logits"], logits, rtol=1e-5, atol=1e-5 * logits.abs().max().item())
    assert torch.equal(sharded["generated"], generated)
    assert generated.shape[1] > 1 and len(set(generated[0].tolist())) > 1  # greedy tokens that depend on something
