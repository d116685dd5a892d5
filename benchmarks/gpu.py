"""LangBridge against transformers' LLaVA on the same parts, on the device at hand, in one process.

At the paper's sizes on CUDA: frozen CLIP ViT-L/14-336 (24 layers), a Qwen2-0.5B-shaped LLM (24 layers, a
151,936-word head), T = 19,200, H = 5,120; batches of 16 samples, each one image (576 tokens) + 256 text tokens;
bf16 autocast over float32 master weights (what `bf16: true` does). `--small` (forced on CPU) runs the same code
at toy sizes, so CI checks that it works; its numbers mean nothing.

  * projection alone, forward + backward, this project's path against the literal product under the same
    autocast, both activations, E trained and frozen, at 2,048 and 18,432 tokens;
  * training steps (SFT: LLM + connector; stage 1: connector only), AdamW, the loss either the model's own
    (full logits) or TRL's fused LM head (the recipes' loss: no [tokens x vocabulary] logits);
  * greedy generation with bf16 weights, one image + 32 prompt tokens, 128 new tokens, batch 1 and 16;
  * the same at batch 1, eager against transformers' compiled decode step (static cache, fullgraph), both models.

Times are medians over `--steps` after warm-up (CUDA synchronised); peak = `torch.cuda.max_memory_allocated`
with only that side's model alive. `--alternate` sets all training sides up at once and steps them in turn (a
drift of the GPU's clocks then falls on every side alike); a side's peak is then what it keeps between steps plus
the most its step allocates. Ratios are LangBridge / LLaVA (time, memory) and LLaVA / LangBridge for
generation speed (higher is better).

    python -m benchmarks.gpu [--out DIR] [--small] [--steps 8] [--sections projection training generation decode]
                             [--alternate]
"""

import argparse
import gc
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class Sizes:
    vision_layers: int = 24
    vision_width: int = 1024
    vision_intermediate: int = 4096
    vision_heads: int = 16
    image_size: int = 336
    patch_size: int = 14
    llm_layers: int = 24
    llm_width: int = 896
    llm_intermediate: int = 4864
    llm_heads: int = 14
    llm_kv_heads: int = 2
    llm_vocab: int = 151936
    shared_vocab: int = 19200
    projector_hidden: int = 5120
    batch: int = 16
    text_tokens: int = 256
    projection_tokens: tuple = (2048, 18432)
    generation_batches: tuple = (1, 16)
    prompt_tokens: int = 32
    new_tokens: int = 128
    decode_tokens: int = 128  # the decode section's new tokens

    @property
    def patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


SMALL = Sizes(
    vision_layers=2,
    vision_width=64,
    vision_intermediate=128,
    vision_heads=4,
    image_size=32,
    patch_size=8,
    llm_layers=2,
    llm_width=64,
    llm_intermediate=128,
    llm_heads=4,
    llm_kv_heads=2,
    llm_vocab=1000,
    shared_vocab=512,
    projector_hidden=64,
    batch=2,
    text_tokens=16,
    projection_tokens=(256, 1024),
    generation_batches=(1, 2),
    prompt_tokens=8,
    new_tokens=8,
    decode_tokens=32,  # enough steps that the decode step, not the prefill, is what is timed
)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


WARMUP = 2  # steps before timing: the first runs carry one-off costs (kernels chosen, memory pools grown)


def measure(step, device: torch.device, steps: int, warmup: int | None = None) -> dict:
    """Median seconds of `step` over `steps` calls after `warmup`, and the peak memory it reached (CUDA)."""
    for _ in range(WARMUP if warmup is None else warmup):
        step()
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"seconds": statistics.median(times), "times": times, "peak_gib": peak}


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def autocast(device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16)


# ---------------------------------------------------------------- projection alone


def projection_step(path: str, activation: str, tokens: int, embeddings_trained: bool, sizes: Sizes, device):
    """One forward + backward of the projection's last step: h (bf16, as autocast's Linear leaves it) -> tokens."""
    from modeling_langbridge import LangBridgeConfig
    from modeling_langbridge.model.modeling_langbridge import LangBridgeProjector
    from modeling_langbridge.model.projection_langbridge import (
        autocast_off,
        combination_dtype,
        naive_combination,
        tf32_products,
    )

    config = LangBridgeConfig(
        vision_config={"model_type": "clip_vision_model", "hidden_size": 8, "num_attention_heads": 1},
        text_config={
            "model_type": "qwen2",
            "hidden_size": sizes.llm_width,
            "vocab_size": sizes.shared_vocab + 200,
            "num_attention_heads": 1,
            "num_key_value_heads": 1,
        },
        projector_hidden_size=sizes.projector_hidden,
        vocab_token_ids=list(range(100, 100 + sizes.shared_vocab)),
        coefficient_activation=activation,
        image_token_id=1,
    )
    with torch.device(device):
        projector = LangBridgeProjector(config)
        embed = torch.nn.Embedding(sizes.shared_vocab + 200, sizes.llm_width)
    embed.weight.data.normal_(0, 0.02)
    embed.weight.requires_grad_(embeddings_trained)
    projector.vocab_proj.weight.data.normal_(0, sizes.projector_hidden**-0.5)
    hidden = torch.randn(tokens, sizes.projector_hidden, device=device, dtype=torch.bfloat16, requires_grad=True)
    upstream = torch.randn(tokens, sizes.llm_width, device=device)
    projector.train()

    def step():
        for tensor in (hidden, projector.vocab_proj.weight, projector.vocab_proj.bias, embed.weight):
            tensor.grad = None
        with autocast(device):
            if path == "literal":
                out = naive_combination(
                    hidden,
                    projector.vocab_proj.weight,
                    projector.vocab_proj.bias,
                    projector.vocab_embeddings(embed),
                    activation,
                )
            else:
                dtype = combination_dtype(hidden, config.combine_in_float32)
                with autocast_off(hidden), tf32_products(hidden.device, dtype):
                    out = projector.combine(hidden, embed, dtype)
        out.float().backward(upstream)

    return step


def projection_section(sizes: Sizes, device, steps: int) -> list[dict]:
    rows = []
    for activation in ("none", "softmax"):
        for embeddings_trained in (True, False):
            for tokens in sizes.projection_tokens:
                row = {"activation": activation, "E": "trained" if embeddings_trained else "frozen", "tokens": tokens}
                for path in ("literal", "langbridge"):
                    step = projection_step(path, activation, tokens, embeddings_trained, sizes, device)
                    row[path] = measure(step, device, steps)
                    del step
                    release(device)
                row["time_ratio"] = row["langbridge"]["seconds"] / row["literal"]["seconds"]
                if device.type == "cuda":
                    row["memory_ratio"] = row["langbridge"]["peak_gib"] / row["literal"]["peak_gib"]
                print(
                    f"  projection {activation:7s} E {row['E']:7s} {tokens:6d} tokens: "
                    f"{row['langbridge']['seconds'] * 1e3:8.2f} ms vs literal {row['literal']['seconds'] * 1e3:8.2f} ms "
                    f"-> {row['time_ratio']:.2f}x" + memory_text(row["langbridge"], row["literal"]),
                    flush=True,
                )
                rows.append(row)
    return rows


def memory_text(side: dict, reference: dict) -> str:
    if side["peak_gib"] is None:
        return ""
    return f"; peak {side['peak_gib']:.2f} vs {reference['peak_gib']:.2f} GiB -> {side['peak_gib'] / reference['peak_gib']:.2f}x"


# ---------------------------------------------------------------- whole models


def configs(sizes: Sizes):
    from transformers import CLIPVisionConfig, Qwen2Config

    vision = CLIPVisionConfig(
        hidden_size=sizes.vision_width,
        intermediate_size=sizes.vision_intermediate,
        num_hidden_layers=sizes.vision_layers,
        num_attention_heads=sizes.vision_heads,
        image_size=sizes.image_size,
        patch_size=sizes.patch_size,
        hidden_act="quick_gelu",
    )
    text = Qwen2Config(
        vocab_size=sizes.llm_vocab,
        hidden_size=sizes.llm_width,
        intermediate_size=sizes.llm_intermediate,
        num_hidden_layers=sizes.llm_layers,
        num_attention_heads=sizes.llm_heads,
        num_key_value_heads=sizes.llm_kv_heads,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
    )
    return vision, text


def build(kind: str, sizes: Sizes, device, dtype=torch.float32):
    """`llava`, `langbridge-none` or `langbridge-softmax` on the same parts, randomly initialised on the device."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    from modeling_langbridge import LangBridgeConfig, LangBridgeForConditionalGeneration

    vision, text = configs(sizes)
    image_token = sizes.llm_vocab - 1
    if kind == "llava":
        config = LlavaConfig(
            vision_config=vision,
            text_config=text,
            image_token_index=image_token,
            image_seq_length=sizes.patches,
            vision_feature_layer=-2,
            vision_feature_select_strategy="default",
        )
        model_class = LlavaForConditionalGeneration
    else:
        config = LangBridgeConfig(
            vision_config=vision.to_dict(),
            text_config=text.to_dict(),
            projector_hidden_size=sizes.projector_hidden,
            shared_vocab_size=sizes.shared_vocab,
            vocab_token_ids=list(range(100, 100 + sizes.shared_vocab)),
            image_token_id=image_token,
            coefficient_activation=kind.split("-")[1],
        )
        model_class = LangBridgeForConditionalGeneration
    config._attn_implementation = "sdpa"
    with torch.device(device):
        model = model_class(config).to(dtype)
    return model, image_token


def training_batch(image_token: int, sizes: Sizes, device, batch: int | None = None, text_tokens: int | None = None):
    batch = batch or sizes.batch
    text_tokens = sizes.text_tokens if text_tokens is None else text_tokens
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(
        200, min(20000, sizes.llm_vocab - 2), (batch, 1 + sizes.patches + text_tokens), generator=generator
    )
    ids[:, 1 : 1 + sizes.patches] = image_token
    labels = ids.clone()
    labels[:, : 1 + sizes.patches] = -100
    pixel_values = torch.randn(batch, 3, sizes.image_size, sizes.image_size, generator=generator)
    return {
        "input_ids": ids.to(device),
        "attention_mask": torch.ones_like(ids, device=device),
        "pixel_values": pixel_values.to(device),
        "labels": labels.to(device),
    }


def training_step(kind: str, stage: str, loss: str, sizes: Sizes, device):
    model, image_token = build(kind, sizes, device)
    model.train()
    model.requires_grad_(stage == "sft")
    model.model.vision_tower.requires_grad_(False)
    model.model.multi_modal_projector.requires_grad_(True)
    if loss == "fused":
        from trl.trainer.utils import add_fused_lm_head

        add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))  # what the recipes' SFTTrainer does
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=1e-5, fused=device.type == "cuda"
    )
    inputs = training_batch(image_token, sizes, device)
    extra = {"fused_lm_head": True} if loss == "fused" else {}

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast(device):
            value = model(**inputs, use_cache=False, **extra).loss
        value.backward()
        optimizer.step()

    def state_gib() -> float:
        """What the side keeps between steps: weights, gradients and AdamW's moments."""
        tensors = [
            *model.parameters(),
            *(p.grad for p in model.parameters() if p.grad is not None),
            *(t for state in optimizer.state.values() for t in state.values() if torch.is_tensor(t)),
        ]
        return sum(t.nbytes for t in tensors) / 2**30

    step.state_gib = state_gib
    return step


def alternated(steps: dict, device, repeats: int) -> dict:
    """All sides set up at once, warmed up, then run step by step in turn (the order reversed every round), so a
    drift of the device's clocks falls on every side alike. Peak per side: what it keeps between steps plus the
    most its step allocated above what everything held before it."""
    for step in steps.values():
        for _ in range(WARMUP):
            step()
    times = {name: [] for name in steps}
    transient = dict.fromkeys(steps, 0.0)
    for round_index in range(repeats):
        for name in list(steps) if round_index % 2 == 0 else list(steps)[::-1]:
            synchronize(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                before = torch.cuda.memory_allocated(device)
            start = time.perf_counter()
            steps[name]()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
            if device.type == "cuda":
                transient[name] = max(transient[name], (torch.cuda.max_memory_allocated(device) - before) / 2**30)
    return {
        name: {
            "seconds": statistics.median(times[name]),
            "times": times[name],
            "peak_gib": steps[name].state_gib() + transient[name] if device.type == "cuda" else None,
        }
        for name in steps
    }


TRAINING_SIDES = [
    ("llava", "model"),
    ("llava", "fused"),
    ("langbridge-none", "model"),
    ("langbridge-none", "fused"),
    ("langbridge-softmax", "fused"),
]


def training_section(sizes: Sizes, device, steps: int, alternate: bool = False) -> dict:
    results = {}
    for stage in ("sft", "stage1"):
        if alternate:
            all_steps = {
                f"{kind}/{loss}": training_step(kind, stage, loss, sizes, device) for kind, loss in TRAINING_SIDES
            }
            sides = alternated(all_steps, device, steps)
            del all_steps
            release(device)
        else:
            sides = {}
            for kind, loss in TRAINING_SIDES:
                step = training_step(kind, stage, loss, sizes, device)
                sides[f"{kind}/{loss}"] = measure(step, device, steps)
                del step
                release(device)
        base = sides["llava/model"]
        for name, side in sides.items():
            side["time_ratio"] = side["seconds"] / base["seconds"]
            side["memory_ratio"] = side["peak_gib"] / base["peak_gib"] if side["peak_gib"] is not None else None
            print(
                f"  {stage:6s} step {name:26s} {side['seconds']:.4f} s -> {side['time_ratio']:.2f}x LLaVA's (own loss)"
                + memory_text(side, base),
                flush=True,
            )
        fused = sides["llava/fused"]
        for name in ("langbridge-none/fused", "langbridge-softmax/fused"):
            side = sides[name]
            print(
                f"  {stage:6s} {name} against LLaVA with the same fused loss: time {side['seconds'] / fused['seconds']:.2f}x"
                + memory_text(side, fused),
                flush=True,
            )
        results[stage] = sides
    return results


def generation_section(sizes: Sizes, device, steps: int) -> list[dict]:
    rows = []
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    for batch in sizes.generation_batches:
        row = {"batch": batch}
        for kind in ("llava", "langbridge-none"):
            model, image_token = build(kind, sizes, device, dtype)
            model.eval()
            model.generation_config.pad_token_id = 0
            inputs = training_batch(image_token, sizes, device, batch=batch, text_tokens=sizes.prompt_tokens)
            inputs.pop("labels")
            inputs["pixel_values"] = inputs["pixel_values"].to(dtype)

            def step(model=model, inputs=inputs):
                with torch.no_grad():
                    model.generate(
                        **inputs, max_new_tokens=sizes.new_tokens, min_new_tokens=sizes.new_tokens, do_sample=False
                    )

            result = measure(step, device, max(3, steps // 2), warmup=1)
            result["tokens_per_second"] = batch * sizes.new_tokens / result["seconds"]
            row[kind] = result
            del model, step
            release(device)
        row["speed_ratio"] = row["langbridge-none"]["tokens_per_second"] / row["llava"]["tokens_per_second"]
        print(
            f"  generation batch {batch:2d}: {row['langbridge-none']['tokens_per_second']:.1f} vs LLaVA "
            f"{row['llava']['tokens_per_second']:.1f} tokens/s -> {row['speed_ratio']:.2f}x",
            flush=True,
        )
        rows.append(row)
    return rows


def decode_section(sizes: Sizes, device, steps: int) -> dict:
    """Greedy generation at batch 1, eager (dynamic cache) against transformers' compiled decode step (static cache,
    `CompileConfig(fullgraph=True)`: one graph per step or an error), LLaVA and LangBridge on the same parts. All four
    sides are set up together, warmed up (compiling takes the first calls), then run in turn, the order reversed every
    round, so a slow spell falls on all alike; the tokens of both modes are compared."""
    from transformers import CompileConfig

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    compiled = CompileConfig(fullgraph=True, dynamic=False)
    compiled._compile_all_devices = True  # transformers compiles on accelerators only unless told so
    modes = {"eager": {}, "compiled": {"cache_implementation": "static", "compile_config": compiled}}
    kinds = ("llava", "langbridge-none")
    sides, tokens = {}, {}
    for kind in kinds:
        model, image_token = build(kind, sizes, device, dtype)
        model.eval()
        model.generation_config.pad_token_id = 0
        inputs = training_batch(image_token, sizes, device, batch=1, text_tokens=sizes.prompt_tokens)
        inputs.pop("labels")
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        for mode, extra in modes.items():

            def step(model=model, inputs=inputs, extra=extra, name=(kind, mode)):
                with torch.no_grad():
                    out = model.generate(
                        **inputs,
                        **extra,
                        max_new_tokens=sizes.decode_tokens,
                        min_new_tokens=sizes.decode_tokens,
                        do_sample=False,
                    )
                tokens[name] = out[0, inputs["input_ids"].shape[1] :].tolist()

            sides[(kind, mode)] = step
    for step in sides.values():
        for _ in range(3):
            step()
    times = {name: [] for name in sides}
    for round_index in range(max(3, steps)):
        for name in list(sides) if round_index % 2 == 0 else list(sides)[::-1]:
            synchronize(device)
            start = time.perf_counter()
            sides[name]()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    row = {}
    for kind in kinds:
        row[kind] = {
            mode: {"seconds": statistics.median(times[(kind, mode)]), "times": times[(kind, mode)]} for mode in modes
        }
        for mode in modes:
            row[kind][mode]["tokens_per_second"] = sizes.decode_tokens / row[kind][mode]["seconds"]
        eager, fast = row[kind]["eager"]["tokens_per_second"], row[kind]["compiled"]["tokens_per_second"]
        row[kind]["compiled_speedup"] = fast / eager
        row[kind]["same_tokens"] = tokens[(kind, "compiled")] == tokens[(kind, "eager")]
        print(
            f"  {kind:16s} eager {eager:.1f}, compiled {fast:.1f} tokens/s -> {row[kind]['compiled_speedup']:.2f}x "
            f"(same tokens: {row[kind]['same_tokens']})",
            flush=True,
        )
    for mode in modes:
        row[f"{mode}_speed_ratio"] = (
            row["langbridge-none"][mode]["tokens_per_second"] / row["llava"][mode]["tokens_per_second"]
        )
    print(
        f"  LangBridge / LLaVA tokens/s: eager {row['eager_speed_ratio']:.2f}x, compiled "
        f"{row['compiled_speed_ratio']:.2f}x",
        flush=True,
    )
    del sides
    release(device)
    return row


def describe(device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    return f"CPU ({torch.get_num_threads()} threads), torch {torch.__version__}"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="folder for gpu_results.json")
    parser.add_argument(
        "--small", action="store_true", help="toy sizes (forced without CUDA): checks the code, not speed"
    )
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument(
        "--sections",
        nargs="+",
        default=["projection", "training", "generation", "decode"],
        choices=["projection", "training", "generation", "decode"],
    )
    parser.add_argument(
        "--alternate",
        action="store_true",
        help="training: all sides set up at once and stepped in turn (needs room for five models)",
    )
    args = parser.parse_args(argv)
    import transformers

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sizes = SMALL if args.small or device.type != "cuda" else Sizes()
    global WARMUP
    WARMUP = 1 if sizes is SMALL else WARMUP
    torch.manual_seed(0)
    results = {
        "device": describe(device),
        "transformers": transformers.__version__,
        "sizes": sizes.__dict__,
        "steps": args.steps,
        "alternate": args.alternate,
    }
    print(
        f"benchmarks.gpu on {results['device']}, transformers {transformers.__version__}; "
        f"{'toy sizes' if sizes is SMALL else 'paper sizes'}; medians of {args.steps} steps",
        flush=True,
    )
    sections = {
        "projection": projection_section,
        "training": training_section,
        "generation": generation_section,
        "decode": decode_section,
    }
    for name in args.sections:
        started = time.perf_counter()
        print(f"[{name}]", flush=True)
        extra = {"alternate": args.alternate} if name == "training" else {}
        results[name] = sections[name](sizes, device, args.steps, **extra)
        print(f"[{name}] {time.perf_counter() - started:.0f} s", flush=True)
        if args.out:  # written after every section: a run cut short keeps what it measured
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "gpu_results.json").write_text(json.dumps(results, indent=1, default=str))
    return results


if __name__ == "__main__":
    main()
