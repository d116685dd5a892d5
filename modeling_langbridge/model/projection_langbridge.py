"""The projector's last step, `coefficients @ E`, without keeping [tokens x T] tensors, at the step's precision.

With `h` the projector's hidden state [N, H], `W`, `b` its vocabulary layer [T, H], [T] and `E` the LLM's
embeddings of the shared vocabulary [T, D]:

- no activation (the official numerics): `(h W^T + b) E = h (W^T E) + b E`. The [H, D] matrix `W^T E` is formed
  once per call (per step in training, once at inference: see `FoldedCache`), so a token costs H*D instead of
  H*T + T*D and no [N, T] tensor exists. `FoldedMatrices` carries the gradients on to W, b and E.
- softmax: attention with fixed keys `W` (bias `b`) and values `E`, over chunks of tokens sized from a memory
  budget. On CUDA, while they fit the budget, the coefficients are kept for backward in the compute dtype (half
  the bytes of the float32 copy plus the low-precision copy the literal product keeps under autocast), through
  PyTorch's fused softmax kernels: no recomputation of the [N x H x T] product. Elsewhere `SoftmaxCombination`
  keeps only the output and each token's log-sum-exp, and backward recomputes a chunk's coefficients.

Precision policy (`combination_dtype`): the large products run in the compute dtype of the step, with float32
accumulation, as every other layer of the step does: under mixed precision (autocast, what `bf16: true` in a
recipe turns on) the autocast dtype; otherwise float32 when `combine_in_float32` (the official numerics,
`projector(x).float() @ E`; on CUDA through TF32 tensor cores, as the official training ran with `--tf32`), else
the hidden state's dtype. Softmax statistics (max, exponentials, sums, log-sum-exp) are always float32.

Carried with checkpoints as remote code, so it imports torch only.
"""

import contextlib

import torch

# Working memory the softmax path may hold at once ([chunk x T] tensors). A GPU step has room for far larger
# chunks than a CPU one, and larger chunks keep its matrix units busy.
SOFTMAX_MEMORY_BUDGET = {"cuda": 4 * 2**30}
DEFAULT_SOFTMAX_MEMORY_BUDGET = 225 * 2**20  # 1,024 tokens at T = 19,200
# Bytes per [chunk x T] entry alive at once. Recomputing: low-precision logits, float32 exponentials and
# gradients, the low-precision coefficients. Keeping (low precision throughout): logits, coefficients, their
# gradients in backward.
SOFTMAX_BYTES_PER_ENTRY = 12
KEPT_SOFTMAX_BYTES_PER_ENTRY = 8


def autocast_off(tensor: torch.Tensor):
    """Run in the dtype the caller chose. Under autocast the products inside the autograd functions below would
    pick their own dtypes and their backward would mix them; the caller casts to the step's compute dtype."""
    device = tensor.device.type
    if torch.amp.is_autocast_available(device):
        return torch.autocast(device, enabled=False)
    return contextlib.nullcontext()


def combination_dtype(hidden: torch.Tensor, combine_in_float32: bool) -> torch.dtype:
    """The dtype the combination's products run in (see the module's precision policy)."""
    device = hidden.device.type
    if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return torch.float32 if combine_in_float32 else hidden.dtype


@contextlib.contextmanager
def tf32_products(device: torch.device, dtype: torch.dtype):
    """float32 products on CUDA through TF32 tensor cores (inputs rounded to a 10-bit mantissa, float32
    accumulation): an order of magnitude faster than IEEE float32 there. Elsewhere, unchanged."""
    if device.type != "cuda" or dtype != torch.float32:
        yield
        return
    matmul = torch.backends.cuda.matmul
    name, value = ("fp32_precision", "tf32") if hasattr(matmul, "fp32_precision") else ("allow_tf32", True)
    previous = getattr(matmul, name)
    setattr(matmul, name, value)
    try:
        yield
    finally:
        setattr(matmul, name, previous)


def statistics_dtype(dtype: torch.dtype) -> torch.dtype:
    """Softmax statistics and cross-chunk sums: float32, or float64 for float64 inputs (the reference checks)."""
    return torch.promote_types(dtype, torch.float32)


def softmax_memory_budget(device: torch.device) -> int:
    return SOFTMAX_MEMORY_BUDGET.get(device.type, DEFAULT_SOFTMAX_MEMORY_BUDGET)


def softmax_chunk_tokens(vocab_size: int, device: torch.device, keep: bool = False) -> int:
    """Tokens per chunk of the softmax path: as many as the device's memory budget holds."""
    per_entry = KEPT_SOFTMAX_BYTES_PER_ENTRY if keep else SOFTMAX_BYTES_PER_ENTRY
    return max(1, softmax_memory_budget(device) // (vocab_size * per_entry))


def keeps_coefficients(tokens: int, vocab_size: int, dtype: torch.dtype, device: torch.device) -> bool:
    """Whether the softmax path keeps the coefficients for backward instead of recomputing them: on CUDA, when
    they fit the budget (there the recomputation's [N x H x T] product costs more than the memory). On CPU the
    memory-lean recomputation stays."""
    return device.type == "cuda" and tokens * vocab_size * dtype.itemsize <= softmax_memory_budget(device)


def naive_combination(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, embeddings: torch.Tensor, activation: str
) -> torch.Tensor:
    """The literal formula: the reference the fast paths are checked against, and the benchmark's baseline."""
    logits = torch.nn.functional.linear(hidden, weight, bias)
    coefficients = logits.softmax(dim=-1) if activation == "softmax" else logits
    return coefficients @ embeddings


class FoldedMatrices(torch.autograd.Function):
    """`W^T E` [H, D] and `b E` [D], with a backward that writes each parameter's gradient once, in its layout:
    dW = E dM^T [T, H] and dE = W dM + b (x) d(bE) [T, D]. Plain autograd gives W a transposed gradient that
    AccumulateGrad copies, and E two [T, D] terms to add: transients the size of the parameters themselves."""

    @staticmethod
    def forward(ctx, weight, bias, embeddings):
        ctx.save_for_backward(weight, bias, embeddings)
        with autocast_off(weight):
            return weight.T @ embeddings, bias @ embeddings

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_mixed, grad_shift):
        weight, bias, embeddings = ctx.saved_tensors
        needs_weight, needs_bias, needs_embeddings = ctx.needs_input_grad
        with autocast_off(weight):
            grad_weight = torch.mm(embeddings, grad_mixed.T) if needs_weight else None
            grad_bias = torch.mv(embeddings, grad_shift) if needs_bias else None
            grad_embeddings = torch.mm(weight, grad_mixed).addr_(bias, grad_shift) if needs_embeddings else None
        return grad_weight, grad_bias, grad_embeddings


def folded_matrices(
    weight: torch.Tensor, bias: torch.Tensor, embeddings: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """`W^T E` [H, D] and `b E` [D]: the whole linear map from h to the visual token."""
    return FoldedMatrices.apply(weight, bias, embeddings)


def folding_pays(
    tokens: int,
    vocab_size: int,
    hidden_size: int,
    embedding_size: int,
    training: bool = False,
    embeddings_trained: bool = False,
) -> bool:
    """Whether folding costs fewer multiply-adds than the literal product, both run in the same dtype (the
    precision policy makes it so). Forward: T*H*D once, then H*D a token, against H*T + T*D a token. Backward
    adds dW = E dM^T (and dE = W dM) once plus 2*H*D a token, against 2*T*H (+ T*D for dE) + T*D a token.
    It pays from a few thousand tokens at the paper's sizes; a cached fold always does."""
    n, t, h, d = tokens, vocab_size, hidden_size, embedding_size
    literal = n * t * (h + d)
    fold = t * h * d + n * h * d
    if training:
        literal += n * t * (2 * h + d) + (n * t * d if embeddings_trained else 0)
        fold += t * h * d + 2 * n * h * d + (t * h * d if embeddings_trained else 0)
    return fold < literal


def linear_combination(hidden: torch.Tensor, mixed: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """`h (W^T E) + b E`, for any leading shape of h."""
    flat = torch.addmm(shift, hidden.reshape(-1, hidden.shape[-1]), mixed)
    return flat.reshape(*hidden.shape[:-1], mixed.shape[-1])


class SoftmaxCombination(torch.autograd.Function):
    """`softmax(h W^T + b) @ E` in chunks of tokens, keeping only the output and each token's log-sum-exp; backward
    recomputes a chunk's coefficients. Products in the inputs' dtype, softmax statistics in float32."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, embeddings, chunk):
        with autocast_off(hidden):
            return SoftmaxCombination.chunked_forward(ctx, hidden, weight, bias, embeddings, chunk)

    @staticmethod
    def backward(ctx, grad_out):
        with autocast_off(grad_out):
            return SoftmaxCombination.chunked_backward(ctx, grad_out)

    @staticmethod
    def chunked_forward(ctx, hidden, weight, bias, embeddings, chunk):
        tokens = hidden.shape[0]
        stats = statistics_dtype(hidden.dtype)
        out = hidden.new_empty(tokens, embeddings.shape[1])
        log_sum_exp = hidden.new_empty(tokens, dtype=stats)
        for start in range(0, tokens, chunk):
            rows = slice(start, start + chunk)
            logits = torch.addmm(bias, hidden[rows], weight.T).to(stats)
            top = logits.amax(dim=-1, keepdim=True)
            unnormalised = logits.sub_(top).exp_()  # one pass of exp; the division waits for the [n, D] product
            total = unnormalised.sum(dim=-1, keepdim=True)
            product = torch.mm(unnormalised.to(hidden.dtype), embeddings)
            out[rows] = product.to(stats).div_(total)
            log_sum_exp[rows] = (top + total.log()).squeeze(-1)
        ctx.save_for_backward(hidden, weight, bias, embeddings, out, log_sum_exp)
        ctx.chunk = chunk
        return out

    @staticmethod
    def chunked_backward(ctx, grad_out):
        hidden, weight, bias, embeddings, out, log_sum_exp = ctx.saved_tensors
        needs_hidden, needs_weight, needs_bias, needs_embeddings = ctx.needs_input_grad[:4]
        dtype = hidden.dtype
        grad_out = grad_out.to(dtype).contiguous()
        accumulate = statistics_dtype(dtype)  # across chunks; within one, the matmul accumulates in float32 itself
        grad_hidden = torch.empty_like(hidden) if needs_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=accumulate, device=weight.device) if needs_weight else None
        grad_bias = torch.zeros(bias.shape, dtype=accumulate, device=bias.device) if needs_bias else None
        grad_embeddings = (
            torch.zeros(embeddings.shape, dtype=accumulate, device=embeddings.device) if needs_embeddings else None
        )
        # d(softmax): dS = P * (dP - rowsum(P * dP)), and rowsum(P * dP) = rowsum(dO * O): no [N, T] sum kept.
        delta = (grad_out.to(accumulate) * out.to(accumulate)).sum(dim=-1)
        for start in range(0, hidden.shape[0], ctx.chunk):
            rows = slice(start, start + ctx.chunk)
            h, g = hidden[rows], grad_out[rows]
            p = torch.addmm(bias, h, weight.T).to(accumulate).sub_(log_sum_exp[rows, None]).exp_()
            if needs_embeddings:
                accumulate_product(grad_embeddings, p.T.to(dtype), g)
            if not (needs_hidden or needs_weight or needs_bias):
                continue
            grad_logits = (g @ embeddings.T).to(accumulate).sub_(delta[rows, None]).mul_(p).to(dtype)
            if needs_hidden:
                torch.mm(grad_logits, weight, out=grad_hidden[rows])
            if needs_weight:
                accumulate_product(grad_weight, grad_logits.T, h)
            if needs_bias:
                grad_bias += grad_logits.to(accumulate).sum(dim=0)
        cast = lambda grad, like: None if grad is None else grad.to(like.dtype)  # noqa: E731
        return grad_hidden, cast(grad_weight, weight), cast(grad_bias, bias), cast(grad_embeddings, embeddings), None


def accumulate_product(total: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """`total += a @ b`, in place when the dtypes agree (no [T x H] temporary), else through the product."""
    if total.dtype == a.dtype:
        total.addmm_(a, b)
    else:
        total += torch.mm(a, b)


def kept_softmax_combination(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, embeddings: torch.Tensor, chunk: int
) -> torch.Tensor:
    """`softmax(h W^T + b) @ E` through PyTorch's fused kernels in the inputs' dtype (softmax and its backward
    accumulate in float32 internally), chunk by chunk: autograd keeps each chunk's coefficients, once."""
    outputs = [
        torch.softmax(torch.addmm(bias, hidden[start : start + chunk], weight.T), dim=-1) @ embeddings
        for start in range(0, hidden.shape[0], chunk)
    ]
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs)


def softmax_combination(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    embeddings: torch.Tensor,
    chunk: int | None = None,
    keep: bool | None = None,
) -> torch.Tensor:
    """`softmax(h W^T + b) @ E` for any leading shape of h, in the inputs' dtype, keeping the coefficients for
    backward when `keep` (default: `keeps_coefficients`) and otherwise no [N x T] tensor. `chunk` defaults to what
    the device's memory budget holds."""
    flat = hidden.reshape(-1, hidden.shape[-1]).contiguous()
    vocab_size = weight.shape[0]
    if keep is None:
        keep = torch.is_grad_enabled() and keeps_coefficients(flat.shape[0], vocab_size, flat.dtype, flat.device)
    if chunk is None:  # equal chunks of at most the budget's size: no short trailing chunk
        pieces = max(1, -(-flat.shape[0] // softmax_chunk_tokens(vocab_size, flat.device, keep)))
        chunk = max(1, -(-flat.shape[0] // pieces))
    with autocast_off(flat):
        if keep:
            out = kept_softmax_combination(flat, weight, bias, embeddings, chunk)
        else:
            out = SoftmaxCombination.apply(flat, weight, bias, embeddings, chunk)
    return out.reshape(*hidden.shape[:-1], embeddings.shape[-1])


class FoldedCache:
    """`W^T E` and `b E` kept between calls that cannot train them (inference), rebuilt as soon as W, b, the
    embedding module's parameters or the vocabulary ids change: replaced, moved, or edited in place (tensor
    version counters). Edits through `.data` bypass version counters: call `clear()` after those."""

    def __init__(self):
        self.key, self.value = None, None

    @staticmethod
    def usable(*tensors: torch.Tensor) -> bool:
        return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))

    @staticmethod
    def key_of(tensors) -> tuple:
        # A sharded (DTensor) parameter reports no storage of its own: its local shard's stands for it.
        local = [getattr(t, "_local_tensor", t) for t in tensors]
        return tuple((t.data_ptr(), t._version, t.dtype, t.device, tuple(t.shape)) for t in local)

    def get(self, tensors, build):
        key = self.key_of(tensors)
        if key != self.key:
            self.value, self.key = build(), key
        return self.value

    def clear(self) -> None:
        self.key, self.value = None, None
