"""The projection alone, forward + backward, new against the literal formula, both activations.

Proportions of Qwen2-0.5B + CLIP-L: T = 19,200 shared tokens, D = 896; H scaled from 5,120 to fit a CPU.
Two cases for E: trained (SFT that trains the LLM's embeddings: the step must also produce dE [T x D]) and
frozen (stage 1, and SFT with the embeddings frozen or LoRA: gradients reach W and b only).

    python -m benchmarks.projection [--tokens 2048 8192] [--hidden 512] [--embeddings trained frozen] [--repeats 5]
"""

import argparse
import itertools

import torch

from modeling_langbridge.model.projection_langbridge import (
    folded_matrices,
    linear_combination,
    naive_combination,
    softmax_combination,
)

from .measure import compare

T, D = 19200, 896


def make_step(path: str, activation: str, tokens: int, hidden: int, embeddings: str = "trained"):
    def parameter(*shape, scale, trained=True):
        return (torch.randn(*shape) * scale).requires_grad_(trained)

    h, weight, bias = (
        parameter(tokens, hidden, scale=1.0),
        parameter(T, hidden, scale=hidden**-0.5),
        parameter(T, scale=0.01),
    )
    embeddings = parameter(T, D, scale=0.02, trained=embeddings == "trained")
    upstream = torch.randn(tokens, D)

    def step():
        for tensor in (h, weight, bias, embeddings):
            tensor.grad = None
        if path == "naive":
            out = naive_combination(h, weight, bias, embeddings, activation)
        elif activation == "softmax":
            out = softmax_combination(h, weight, bias, embeddings)
        else:
            out = linear_combination(h, *folded_matrices(weight, bias, embeddings))
        out.backward(upstream)
        return sum(t.grad.nbytes for t in (h, weight, bias, embeddings) if t.grad is not None) / 2**20

    return step


CASES = {"projection": make_step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--embeddings", nargs="+", choices=["trained", "frozen"], default=["trained", "frozen"])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(
        f"projection forward+backward, T={T}, D={D}, H={args.hidden}; peak memory from a fresh process per side; time: "
        f"median of {args.repeats} steps per side after a warm-up, alternated in one process; {torch.get_num_threads()} threads"
    )
    for embeddings, activation, tokens in itertools.product(args.embeddings, ("none", "softmax"), args.tokens):
        options = {"activation": activation, "tokens": tokens, "hidden": args.hidden, "embeddings": embeddings}
        both = compare(
            "benchmarks.projection",
            "projection",
            {side: {"path": side, **options} for side in ("naive", "new")},
            args.repeats,
        )
        naive, new = both["naive"], both["new"]
        gradients = new["gradients_mb"]  # the same tensors whatever the method: dh, dW, db (and dE)
        print(
            f"  E {embeddings:7s} {activation:7s} {tokens:5d} tokens: time {new['seconds']:.3f}s vs naive {naive['seconds']:.3f}s -> "
            f"{new['seconds'] / naive['seconds']:.2f}x ({naive['seconds'] / new['seconds']:.1f}x faster); "
            f"peak step memory {new['peak_mb']:.0f}MB vs {naive['peak_mb']:.0f}MB -> {new['peak_mb'] / naive['peak_mb']:.2f}x; "
            f"less the {gradients:.0f}MB of gradients both return: {new['peak_mb'] - gradients:.0f}MB vs "
            f"{naive['peak_mb'] - gradients:.0f}MB -> {(new['peak_mb'] - gradients) / (naive['peak_mb'] - gradients):.2f}x "
            f"(the gradients alone are {gradients / naive['peak_mb']:.2f}x naive's peak: no method goes under that)",
            flush=True,
        )


if __name__ == "__main__":
    main()
