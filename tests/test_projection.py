"""The fast projection paths against the literal formula: outputs and gradients, gradcheck, the inference cache."""

import pytest
import torch

from modeling_langbridge.model.projection_langbridge import (
    folded_matrices,
    folding_pays,
    linear_combination,
    naive_combination,
    softmax_combination,
)

N, H, T, D = 300, 32, 500, 48  # 300 tokens in chunks of 64: four whole chunks and a partial one


def inputs(dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    make = lambda *shape, scale=1.0: (torch.randn(*shape, generator=generator, dtype=torch.float64) * scale).to(dtype)  # noqa: E731
    return [
        make(N, H).requires_grad_(),
        make(T, H, scale=0.3).requires_grad_(),
        make(T, scale=0.3).requires_grad_(),
        make(T, D).requires_grad_(),
    ]


def fast(activation, hidden, weight, bias, embeddings):
    if activation == "softmax":
        return softmax_combination(hidden, weight, bias, embeddings, chunk=64)
    return linear_combination(hidden, *folded_matrices(weight, bias, embeddings))


def relative_error(got: torch.Tensor, reference: torch.Tensor) -> float:
    return ((got.double() - reference).norm() / reference.norm()).item()


@pytest.mark.parametrize("activation", ["none", "softmax"])
def test_fast_path_matches_float64_reference_in_outputs_and_gradients(activation):
    reference_inputs = inputs(torch.float64)
    reference = naive_combination(*reference_inputs, activation)
    upstream = torch.randn(N, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    reference_grads = torch.autograd.grad(reference, reference_inputs, upstream)

    fast_inputs = inputs(torch.float32)
    out = fast(activation, *fast_inputs)
    grads = torch.autograd.grad(out, fast_inputs, upstream.float())
    naive_inputs = inputs(torch.float32)
    naive = naive_combination(*naive_inputs, activation)
    naive_grads = torch.autograd.grad(naive, naive_inputs, upstream.float())

    assert relative_error(out, reference) < 1e-5
    for name, got, naive_grad, expected in zip(("input", "W", "b", "E"), grads, naive_grads, reference_grads):
        error = relative_error(got, expected)
        assert error < 1e-5, (name, error)
        assert error <= 10 * max(relative_error(naive_grad, expected), 1e-7), (name, error)  # as good as naive float32


@pytest.mark.parametrize("activation", ["none", "softmax"])
def test_frozen_embeddings_get_no_gradient_and_the_rest_stay_exact(activation):
    """Stage 1 (the LLM frozen): E needs no gradient; the input, W and b still get theirs."""
    hidden, weight, bias, embeddings = inputs(torch.float64)
    embeddings.requires_grad_(False)
    upstream = torch.randn(N, D, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    expected = torch.autograd.grad(
        naive_combination(hidden, weight, bias, embeddings, activation), (hidden, weight, bias), upstream
    )
    fast(activation, hidden, weight, bias, embeddings).backward(upstream)
    assert embeddings.grad is None
    for tensor, reference in zip((hidden, weight, bias), expected):
        assert relative_error(tensor.grad, reference) < 1e-10


@pytest.mark.parametrize("activation", ["none", "softmax"])
def test_gradcheck_in_float64(activation):
    generator = torch.Generator().manual_seed(2)
    small = [
        torch.randn(*shape, generator=generator, dtype=torch.float64, requires_grad=True)
        for shape in ((7, 4), (9, 4), (9,), (9, 5))
    ]
    if activation == "softmax":
        function = lambda h, w, b, e: softmax_combination(h, w, b, e, chunk=3)  # noqa: E731
    else:
        function = lambda h, w, b, e: linear_combination(h, *folded_matrices(w, b, e))  # noqa: E731
    assert torch.autograd.gradcheck(function, small)


@pytest.mark.parametrize("activation", ["none", "softmax"])
def test_autograd_functions_compute_in_their_inputs_dtype_under_autocast(activation):
    """A Trainer's bf16 mixed precision runs the model under autocast; the functions keep float32 inputs float32."""
    tensors = inputs(torch.float32)

    def outputs_and_grads():
        if activation == "softmax":
            outputs = (softmax_combination(*tensors, chunk=64),)
        else:
            outputs = folded_matrices(*tensors[1:])
        return outputs, torch.autograd.grad(sum(o.sum() for o in outputs), tensors, allow_unused=True)

    plain, plain_grads = outputs_and_grads()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under, grads = outputs_and_grads()
    for got, expected in zip(under, plain):
        assert got.dtype == torch.float32 and torch.equal(got, expected)
    for got, expected in zip(grads, plain_grads):
        assert (got is None) == (expected is None) and (got is None or torch.equal(got, expected))


def test_softmax_path_keeps_no_tokens_by_vocabulary_tensor():
    """What autograd keeps for backward: the inputs, the output and a log-sum-exp per token, nothing [N x T]."""
    hidden, weight, bias, embeddings = inputs(torch.float32)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(tuple(t.shape)) or t, lambda t: t):
        softmax_combination(hidden, weight, bias, embeddings, chunk=64)
    assert (N, T) not in saved and (64, T) not in saved and (N,) in saved and (N, D) in saved
    naive_saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: naive_saved.append(tuple(t.shape)) or t, lambda t: t):
        naive_combination(hidden, weight, bias, embeddings, "softmax")
    assert (N, T) in naive_saved  # the tensors the chunked path avoids


def test_folding_is_chosen_when_it_saves_work():
    assert folding_pays(8192, 19200, 1024, 896) and folding_pays(2048, 19200, 1024, 896)
    assert not folding_pays(576, 19200, 5120, 3584)  # one image at the paper's sizes: literal product, unless cached
    assert folding_pays(32 * 576, 19200, 5120, 3584)


def test_projector_inference_cache_follows_weight_and_embedding_changes(qwen_clip_dir):
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(qwen_clip_dir).eval()
    projector = model.model.multi_modal_projector
    embed = model.get_input_embeddings()
    features = torch.randn(2, 9, projector.linear_1.in_features)

    def literal():
        with torch.no_grad():
            return naive_combination(
                projector.hidden_states(features).float(),
                projector.vocab_proj.weight.float(),
                projector.vocab_proj.bias.float(),
                projector.vocab_embeddings(embed).float(),
                "none",
            )

    with torch.no_grad():
        first = projector(features, embed)
        assert projector.folded_cache.value is not None
        cached = projector.folded_cache.value[0]
        torch.testing.assert_close(projector(features, embed), first)
        assert projector.folded_cache.value[0] is cached  # reused, not rebuilt
        torch.testing.assert_close(first, literal(), rtol=1e-5, atol=1e-5)

        projector.vocab_proj.weight.mul_(2)  # an optimizer-style in-place update
        torch.testing.assert_close(projector(features, embed), literal(), rtol=1e-5, atol=1e-5)
        embed.weight[projector.vocab_token_ids[0]] += 1.0  # the LLM's embeddings change
        after = projector(features, embed)
        torch.testing.assert_close(after, literal(), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(after, first)

    model.train()
    assert projector.folded_cache.value is None
    out = projector(features, embed)  # training: folded afresh with gradients, nothing cached
    out.sum().backward()
    assert projector.vocab_proj.weight.grad is not None and embed.weight.grad is not None
    assert projector.folded_cache.value is None


TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2}  # relative to a float64 reference, outputs and gradients


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("embeddings_trained", [True, False], ids=["E-trained", "E-frozen"])
@pytest.mark.parametrize(
    "activation, keep",
    [("none", False), ("softmax", False), ("softmax", True)],
    ids=["fold", "softmax-recomputed", "softmax-kept"],
)
def test_numerics_per_dtype_against_float64(activation, keep, dtype, embeddings_trained):
    """The fast paths in the step's compute dtype: within the dtype's tolerance of float64 and no worse than the
    literal product run in that dtype (softmax statistics stay float32 either way)."""
    reference_inputs = inputs(torch.float64)
    reference_inputs[3].requires_grad_(embeddings_trained)
    upstream = torch.randn(N, D, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    reference = naive_combination(*reference_inputs, activation)
    wanted = [t for t in reference_inputs if t.requires_grad]
    reference_grads = torch.autograd.grad(reference, wanted, upstream)

    def run(path):
        tensors = [t.detach().to(dtype).requires_grad_(t.requires_grad) for t in reference_inputs]
        if path == "naive":
            out = naive_combination(*tensors, activation)
        elif activation == "softmax":
            out = softmax_combination(*tensors, chunk=64, keep=keep)
        else:
            out = linear_combination(tensors[0], *folded_matrices(*tensors[1:]))
        assert out.dtype == dtype
        return out, torch.autograd.grad(out, [t for t in tensors if t.requires_grad], upstream.to(dtype))

    (out, grads), (naive_out, naive_grads) = run("fast"), run("naive")
    tolerance = TOLERANCE[dtype]
    assert relative_error(out, reference) < tolerance
    assert relative_error(out, reference) <= 2 * max(relative_error(naive_out, reference), tolerance / 10)
    for got, naive_grad, expected in zip(grads, naive_grads, reference_grads):
        assert got.dtype == dtype
        assert relative_error(got, expected) < tolerance
        assert relative_error(got, expected) <= 2 * max(relative_error(naive_grad, expected), tolerance / 10)


def test_kept_coefficients_are_the_only_tokens_by_vocabulary_tensor_saved():
    """Kept, the coefficients are saved once, in the inputs' dtype (CUDA's autocast makes the literal product save
    a float32 copy and a bf16 one)."""
    hidden, weight, bias, embeddings = (t.detach().bfloat16().requires_grad_() for t in inputs(torch.float32))
    saved = {}

    def record(tensor):
        if tuple(tensor.shape) == (N, T):
            saved.setdefault(tensor.untyped_storage().data_ptr(), tensor.dtype)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(record, lambda t: t):
        softmax_combination(hidden, weight, bias, embeddings, chunk=N, keep=True)
    assert list(saved.values()) == [torch.bfloat16]


@pytest.mark.parametrize("activation", ["none", "softmax"])
def test_projector_runs_its_products_in_the_autocast_dtype(qwen_clip_dir, activation):
    """Under a Trainer's bf16 mixed precision the combination follows autocast (bf16 products, float32 weights
    untouched); outside it, `combine_in_float32` runs them in float32."""
    from transformers import AutoModelForImageTextToText

    from modeling_langbridge.model.projection_langbridge import combination_dtype

    model = AutoModelForImageTextToText.from_pretrained(qwen_clip_dir)
    projector = model.model.multi_modal_projector
    projector.coefficient_activation = activation
    features = torch.randn(2, 16, projector.linear_1.in_features)
    embed = model.get_input_embeddings()
    assert combination_dtype(features, True) == torch.float32
    plain = projector(features, embed)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert combination_dtype(features, True) == torch.bfloat16
        mixed = projector(features, embed)
    assert plain.dtype == mixed.dtype == torch.float32  # the embeddings' dtype
    assert not torch.equal(plain, mixed)  # the bf16 products really ran
    assert relative_error(mixed, plain.double()) < TOLERANCE[torch.bfloat16]


def test_chunks_come_from_a_memory_budget():
    from modeling_langbridge.model.projection_langbridge import (
        SOFTMAX_BYTES_PER_ENTRY,
        keeps_coefficients,
        softmax_chunk_tokens,
        softmax_memory_budget,
    )

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert softmax_chunk_tokens(19200, cpu) * 19200 * SOFTMAX_BYTES_PER_ENTRY <= softmax_memory_budget(cpu)
    assert softmax_chunk_tokens(19200, cuda) > softmax_chunk_tokens(19200, cpu) >= 1000
    assert softmax_chunk_tokens(1000, cpu) > softmax_chunk_tokens(19200, cpu)  # a smaller vocabulary: more tokens
    assert not keeps_coefficients(2048, 19200, torch.bfloat16, cpu)
    assert keeps_coefficients(18432, 19200, torch.bfloat16, cuda)
    assert not keeps_coefficients(200_000, 19200, torch.bfloat16, cuda)
    assert softmax_chunk_tokens(19200, cuda, keep=True) >= 18432  # the paper's 32 images in one chunk


def test_folding_counts_the_backward_when_training():
    # One image at the paper's sizes with E trained: folding's fixed T*H*D costs weigh three times in training.
    assert not folding_pays(576, 19200, 5120, 896, training=True, embeddings_trained=True)
    assert folding_pays(2048, 19200, 5120, 896, training=True, embeddings_trained=True)
    assert folding_pays(2048, 19200, 5120, 896, training=True, embeddings_trained=False)
