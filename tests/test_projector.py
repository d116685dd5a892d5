"""The projector against the LangBridge formula, computed independently in float64."""

import pytest
import torch
from torch import nn
from transformers import CLIPVisionConfig, Qwen2Config

from modeling_langbridge import LangBridgeConfig, LangBridgeForConditionalGeneration
from modeling_langbridge.model.modeling_langbridge import LangBridgeProjector

VOCAB = [11, 12, 13, [20, 21, 22], 14, [30, 31], 15]


def config(activation, **overrides):
    return LangBridgeConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=16,
            patch_size=8,
        ),
        text_config=Qwen2Config(
            vocab_size=64,
            hidden_size=24,
            intermediate_size=48,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
        ),
        projector_hidden_size=20,
        vocab_token_ids=VOCAB,
        coefficient_activation=activation,
        image_token_id=63,
        **overrides,
    )


def reference(projector: LangBridgeProjector, features: torch.Tensor, embedding_weight: torch.Tensor, activation: str):
    """coefficients(h) @ E in float64, E built by indexing the embedding table by hand."""
    f64 = {name: p.detach().double() for name, p in projector.named_parameters()}
    h = features.double() @ f64["linear_1.weight"].T + f64["linear_1.bias"]
    h = torch.nn.functional.gelu(h)
    h = h @ f64["linear_2.weight"].T + f64["linear_2.bias"]
    logits = h @ f64["vocab_proj.weight"].T + f64["vocab_proj.bias"]
    coefficients = logits.softmax(-1) if activation == "softmax" else logits
    table = embedding_weight.detach().double()
    rows = [table[entry] if isinstance(entry, int) else table[entry].mean(0) for entry in VOCAB]
    return coefficients @ torch.stack(rows)


@pytest.mark.parametrize("activation", ["none", "softmax"])
def test_projector_equals_the_formula_in_float64(activation):
    torch.manual_seed(0)
    cfg = config(activation)
    projector = LangBridgeProjector(cfg)
    for module in projector.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.3)
            nn.init.normal_(module.bias, std=0.3)
    embedding = nn.Embedding(64, 24)
    features = torch.randn(3, 4, 16)

    got = projector(features, embedding)
    expected = reference(projector, features, embedding.weight, activation)
    assert got.shape == (3, 4, 24)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)


def test_softmax_coefficients_are_a_distribution_and_raw_ones_are_not():
    torch.manual_seed(0)
    features = torch.randn(2, 5, 16)
    softmax = LangBridgeProjector(config("softmax")).coefficients(features)
    raw = LangBridgeProjector(config("none")).coefficients(features)
    torch.testing.assert_close(softmax.sum(-1), torch.ones(2, 5))
    assert (softmax >= 0).all() and (raw < 0).any()


def test_embeddings_are_fetched_through_the_embedding_module_never_stored():
    torch.manual_seed(0)
    model = LangBridgeForConditionalGeneration(config("none")).eval()
    projector = model.model.multi_modal_projector
    embed_tokens = model.get_input_embeddings()
    calls = []
    embed_tokens.register_forward_hook(lambda module, args, output: calls.append(args[0].clone()))
    features = torch.randn(1, 4, 16)

    before = projector(features, embed_tokens)
    assert any(torch.equal(ids, torch.tensor([11, 12, 13, 20, 14, 30, 15])) for ids in calls)
    # No copy of E anywhere in the projector's state: only the MLP's weights.
    assert {name for name in projector.state_dict()} == {
        f"{layer}.{kind}" for layer in ("linear_1", "linear_2", "vocab_proj") for kind in ("weight", "bias")
    }
    with torch.no_grad():
        embed_tokens.weight[11] += 1.0  # train the LLM's embedding of one shared token...
    after = projector(features, embed_tokens)
    coefficient = projector.coefficients(features)[..., 0:1]
    torch.testing.assert_close(after - before, coefficient * torch.ones(24))  # ...and visual tokens follow at once


def test_gradients_reach_the_projector_and_the_llm_embeddings():
    torch.manual_seed(0)
    model = LangBridgeForConditionalGeneration(config("softmax"))
    out = model.model.multi_modal_projector(torch.randn(1, 4, 16), model.get_input_embeddings())
    out.sum().backward()
    embedding_grad = model.get_input_embeddings().weight.grad
    assert model.model.multi_modal_projector.vocab_proj.weight.grad.abs().sum() > 0
    assert embedding_grad[[11, 20, 21, 22, 30]].abs().sum(-1).min() > 0  # shared and composed sub-tokens
    assert embedding_grad[[0, 1, 2]].abs().sum() == 0  # tokens outside the vocabulary get nothing


def test_bfloat16_model_combines_in_float32_like_the_official_code():
    torch.manual_seed(0)
    projector = LangBridgeProjector(config("none"))
    embedding = nn.Embedding(64, 24)
    features = torch.randn(2, 4, 16)
    expected = projector(features, embedding)
    projector.to(torch.bfloat16)
    embedding.to(torch.bfloat16)
    coefficients = projector.coefficients(features.bfloat16())
    assert coefficients.dtype == torch.float32
    got = projector(features.bfloat16(), embedding)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), expected, rtol=0.05, atol=0.05)


class PackedLinear(nn.Module):
    """A linear layer as vLLM's CPU build leaves it in a served model: it computes `x W^T + b` when called, but its
    `weight` is an empty tensor (the real one is packed for oneDNN elsewhere)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("packed", linear.weight.detach().T.contiguous())
        self.weight = nn.Parameter(torch.empty(0), requires_grad=False)
        self.bias = nn.Parameter(linear.bias.detach().clone())

    def forward(self, x):
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.packed).reshape(*x.shape[:-1], -1)


@pytest.mark.parametrize("activation", ["none", "softmax"])
@pytest.mark.parametrize("layers", ["packed like an engine's", "weight gathered only when called (ZeRO-3)"])
def test_layers_whose_weights_cannot_be_read_are_called_and_give_the_same_visual_tokens(activation, layers):
    """The fast paths read the vocabulary layer's weight; an inference engine's, a quantized or a ZeRO-3 layer holds
    it in another form. Those are called instead, and the visual tokens are the same."""
    from modeling_langbridge.model.modeling_langbridge import reads_parameters

    torch.manual_seed(0)
    projector = LangBridgeProjector(config(activation)).eval()
    embedding = nn.Embedding(64, 24)
    features = torch.randn(2, 300, 16)  # enough tokens for the fold to pay (the fast path reads the weight)
    with torch.no_grad():
        expected = projector(features, embedding)
    assert all(reads_parameters(layer) for layer in (projector.linear_1, projector.linear_2, projector.vocab_proj))

    for name in ("linear_1", "linear_2", "vocab_proj"):
        layer = getattr(projector, name)
        if layers.startswith("packed"):
            setattr(projector, name, PackedLinear(layer))
        else:
            partition_like_zero3(layer)
    assert not reads_parameters(projector.vocab_proj)
    with torch.no_grad():
        got = projector(features, embedding)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def partition_like_zero3(layer: nn.Linear) -> None:
    """Leave the weight empty except while the layer itself runs, as DeepSpeed ZeRO-3 does with a partitioned
    parameter (gathered by a hook before the module's forward, released after)."""
    full = layer.weight.data.clone()
    layer.weight.data = full.flatten()[:0]

    def gather(module, args):
        module.weight.data = full

    def release(module, args, output):
        module.weight.data = full.flatten()[:0]

    layer.register_forward_pre_hook(gather)
    layer.register_forward_hook(release)
