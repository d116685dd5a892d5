"""The projector's last step, `coefficients @ E`, without keeping [tokens x T] tensors.

With `h` the projector's hidden state [N, H], `W`, `b` its vocabulary layer [T, H], [T] and `E` the LLM's
embeddings of the shared vocabulary [T, D]:

- no activation (the official numerics): `(h W^T + b) E = h (W^T E) + b E`. The [H, D] matrix `W^T E` is formed
  once per call (per step in training, once at inference: see `FoldedCache`), so a token costs H*D instead of
  H*T + T*D and no [N, T] tensor exists. `FoldedMatrices` carries the gradients on to W, b and E.
- softmax: attention with fixed keys `W` (bias `b`) and values `E`. `SoftmaxCombination` runs over chunks of
  tokens and keeps only the output and each token's log-sum-exp; backward recomputes a chunk's coefficients.

Carried with checkpoints as remote code, so it imports torch only.
"""

import contextlib

import torch

DEFAULT_CHUNK_TOKENS = 1024


def autocast_off(tensor: torch.Tensor):
    """Run in the dtype the caller chose. Under autocast (a Trainer's bf16 mixed precision) the products inside
    the autograd functions below would come out bf16 and their backward would mix dtypes; and the float32
    combination (`combine_in_float32`, the official numerics) would silently run in bf16."""
    device = tensor.device.type
    if torch.amp.is_autocast_available(device):
        return torch.autocast(device, enabled=False)
    return contextlib.nullcontext()


def naive_combination(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, embeddings: torch.Tensor,
                      activation: str) -> torch.Tensor:
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


def folded_matrices(weight: torch.Tensor, bias: torch.Tensor, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`W^T E` [H, D] and `b E` [D]: the whole linear map from h to the visual token."""
    return FoldedMatrices.apply(weight, bias, embeddings)


def folding_pays(tokens: int, vocab_size: int, hidden_size: int, embedding_size: int) -> bool:
    """Whether folding (T*H*D once, then H*D a token) costs fewer multiply-adds than the literal product
    (H*T + T*D a token). It does from a few thousand tokens at the paper's sizes; a cached fold always does."""
    return tokens * vocab_size * (hidden_size + embedding_size) > vocab_size * hidden_size * embedding_size + tokens * hidden_size * embedding_size


def linear_combination(hidden: torch.Tensor, mixed: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """`h (W^T E) + b E`, for any leading shape of h."""
    flat = torch.addmm(shift, hidden.reshape(-1, hidden.shape[-1]), mixed)
    return flat.reshape(*hidden.shape[:-1], mixed.shape[-1])


class SoftmaxCombination(torch.autograd.Function):
    """`softmax(h W^T + b) @ E` in chunks of tokens, recomputing each chunk's coefficients in backward."""

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
        out = hidden.new_empty(hidden.shape[0], embeddings.shape[1])
        log_sum_exp = hidden.new_empty(hidden.shape[0])
        for start in range(0, hidden.shape[0], chunk):
            rows = slice(start, start + chunk)
            logits = torch.addmm(bias, hidden[rows], weight.T)
            top = logits.amax(dim=-1, keepdim=True)
            unnormalised = logits.sub_(top).exp_()  # one pass of exp; the division waits for the [n, D] product
            total = unnormalised.sum(dim=-1, keepdim=True)
            torch.mm(unnormalised, embeddings, out=out[rows]).div_(total)
            log_sum_exp[rows] = (top + total.log()).squeeze(-1)
        ctx.save_for_backward(hidden, weight, bias, embeddings, out, log_sum_exp)
        ctx.chunk = chunk
        return out

    @staticmethod
    def chunked_backward(ctx, grad_out):
        hidden, weight, bias, embeddings, out, log_sum_exp = ctx.saved_tensors
        needs_hidden, needs_weight, needs_bias, needs_embeddings = ctx.needs_input_grad[:4]
        grad_out = grad_out.contiguous()
        grad_hidden = torch.empty_like(hidden) if needs_hidden else None
        grad_weight = torch.zeros_like(weight) if needs_weight else None
        grad_bias = torch.zeros_like(bias) if needs_bias else None
        grad_embeddings = torch.zeros_like(embeddings) if needs_embeddings else None
        # d(softmax): dS = P * (dP - rowsum(P * dP)), and rowsum(P * dP) = rowsum(dO * O): no [N, T] sum kept.
        delta = (grad_out * out).sum(dim=-1)
        for start in range(0, hidden.shape[0], ctx.chunk):
            rows = slice(start, start + ctx.chunk)
            h, g = hidden[rows], grad_out[rows]
            p = torch.addmm(bias, h, weight.T).sub_(log_sum_exp[rows, None]).exp_()
            if needs_embeddings:
                grad_embeddings.addmm_(p.T, g)
            if not (needs_hidden or needs_weight or needs_bias):
                continue
            grad_logits = p.mul_((g @ embeddings.T).sub_(delta[rows, None]))
            if needs_hidden:
                torch.mm(grad_logits, weight, out=grad_hidden[rows])
            if needs_weight:
                grad_weight.addmm_(grad_logits.T, h)
            if needs_bias:
                grad_bias.add_(grad_logits.sum(dim=0))
        return grad_hidden, grad_weight, grad_bias, grad_embeddings, None


def softmax_combination(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, embeddings: torch.Tensor,
                        chunk: int = DEFAULT_CHUNK_TOKENS) -> torch.Tensor:
    """`softmax(h W^T + b) @ E` for any leading shape of h, peak memory O(chunk x T) instead of O(N x T)."""
    flat = hidden.reshape(-1, hidden.shape[-1]).contiguous()
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
        return tuple((t.data_ptr(), t._version, t.dtype, t.device, tuple(t.shape)) for t in tensors)

    def get(self, tensors, build):
        key = self.key_of(tensors)
        if key != self.key:
            self.value, self.key = build(), key
        return self.value

    def clear(self) -> None:
        self.key, self.value = None, None
