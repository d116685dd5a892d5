"""Padded against padding-free and packed training of image-text samples: the padding share of each layout, and
tokens/s, step time and peak memory, side by side (benchmarks/measure.py: a fresh process per layout for memory,
the layouts' epochs alternated in one process for time).

A measured step is one epoch over the same samples, laid out four ways by the recipes' own data code and collator:

- `padded`: samples in random order (a seeded permutation, as the default sampler), `batch` per step, each padded to
  the longest of its batch (what every TRL VLM recipe does).
- `grouped`: the same, ordered as transformers' `LengthGroupedSampler` orders them (`train_sampling_strategy:
  group_by_length`) with the megabatches it uses at scale (50 batches sorted by length; on a few hundred samples the
  sampler itself would sort only 1-3 batches together).
- `padding_free`: the padded layout's batches, each laid out in rows of at most `max_length` (`padding_free: true`).
- `packed`: whole samples packed by best-fit decreasing into rows before training (`packing: true`), as many rows a
  step as hold about a padded step's tokens, so both take about as many optimizer steps: the fewest rows of at most
  `max_length` that hold them, evened out (never shorter than the longest sample).

Every step is forward + backward through TRL's fused LM head (the recipes' loss) + AdamW, float32, SDPA. Three data
sets, in LLaVA's layout:

- `demo-captions`, `demo-conversations`: the demo's world (training/demo/world.py), its 48-px images of 9 tokens,
  stage 1 (captions, `plain`, projector trained) and stage 2 (multi-turn questions, `chat`, projector + LLM).
- `mix`: a long-tailed mix at a quarter of LLaVA's scale (`mix_records`): 40% stage-1 style captions (an image and
  6-16 words), 45% multi-turn instructions (an image, 1-6 turns, answers of lognormal length, median 12 words,
  clipped at 120), 15% text-only conversations (1-4 turns, the same answers); images of 144 tokens (576 / 4);
  `chat`, projector + LLM.

    python -m benchmarks.packing [--data demo-captions demo-conversations mix] [--samples 96] [--repeats 3]
"""

import argparse
import json
import math
import random
import tempfile
from pathlib import Path

import torch

from .measure import compare

LAYOUTS = ("padded", "grouped", "padding_free", "packed")
WORDS = (
    "the a red green blue yellow circle square triangle left right centre on of in with and one two three shape "
    "picture image shows there is are above below next to small large bright dark colour near far top bottom "
    "what which how many where why because each both this that it they object scene side row column count"
).split()


def mix_records(count: int, images: list[str], seed: int = 0) -> list[dict]:
    """LLaVA records whose lengths follow a long-tailed mix (module docstring)."""
    rng = random.Random(seed)

    def words(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n))

    def answer() -> str:
        return words(min(120, max(2, round(rng.lognormvariate(math.log(12), 0.9)))))

    records = []
    for n in range(count):
        kind = rng.random()
        if kind < 0.40:  # a stage-1 caption
            turns = [("<image>\n" + words(rng.randint(3, 6)) + "?", words(rng.randint(6, 16)))]
        elif kind < 0.85:  # a multi-turn instruction about an image
            turns = [(words(rng.randint(4, 14)) + "?", answer()) for _ in range(rng.randint(1, 6))]
            turns[0] = ("<image>\n" + turns[0][0], turns[0][1])
        else:  # text only
            turns = [(words(rng.randint(4, 14)) + "?", answer()) for _ in range(rng.randint(1, 4))]
        record = {"id": str(n), "conversations": []}
        if kind < 0.85:
            record["image"] = rng.choice(images)
        for question, reply in turns:
            record["conversations"] += [{"from": "human", "value": question}, {"from": "gpt", "value": reply}]
        records.append(record)
    return records


def build(folder: Path, samples: int, hidden: int, layers: int) -> dict:
    """The three data sets and a LangBridge model for each image size, written once and read by every process."""
    from langbridge_training.demo.world import write_split
    from modeling_langbridge.assembly.compose import compose
    from modeling_langbridge.assembly.tiny import (
        byte_level_bpe_tokenizer,
        random_shapes_image,
        save_clip_vision,
        save_qwen2_style_llm,
        tiny_corpus,
    )

    demo = write_split(folder / "demo", "train", seed=0, num_scenes=samples, image_size=48)
    (folder / "mix_images").mkdir(parents=True, exist_ok=True)
    names = []
    for n in range(8):
        random_shapes_image(n, size=96).save(folder / "mix_images" / f"{n}.png")
        names.append(f"{n}.png")
    (folder / "mix.json").write_text(json.dumps(mix_records(samples, names)))
    corpus = tiny_corpus() + [" ".join(WORDS)] * 20
    corpus += [json.dumps(json.loads(Path(demo["conversations"]).read_text())[:200])]
    llm = save_qwen2_style_llm(folder / "llm", byte_level_bpe_tokenizer(corpus), hidden_size=hidden, num_layers=layers)
    models = {}
    for name, size, patch in (("demo", 48, 16), ("mix", 96, 8)):  # 9 and 144 image tokens
        vision = save_clip_vision(folder / f"clip_{name}", image_size=size, patch_size=patch)
        torch.manual_seed(0)
        composed = compose(str(vision), str(llm), projector_hidden_size=64, shared_vocab_size=256)
        models[name] = str(composed.save(folder / f"langbridge_{name}"))
    return {
        "demo-captions": {"model": models["demo"], "data_file": str(demo["captions"]), "images": str(demo["images"])},
        "demo-conversations": {
            "model": models["demo"],
            "data_file": str(demo["conversations"]),
            "images": str(demo["images"]),
        },
        "mix": {"model": models["mix"], "data_file": str(folder / "mix.json"), "images": str(folder / "mix_images")},
    }


def epoch_batches(
    data: str,
    layout: str,
    model: str,
    data_file: str,
    images: str,
    batch: int,
    rows: int,
    max_length: int,
    row_length: int | None = None,
):
    """The epoch's collated batches in `layout`, built by the recipes' data code and collator."""
    from transformers import AutoConfig, AutoProcessor
    from transformers.trainer_pt_utils import get_length_grouped_indices

    from langbridge_training.collator import LangBridgeCollator
    from langbridge_training.data import DataReport, fit_to_length, load_llava_json, with_lazy_images
    from langbridge_training.packing import Packing, best_fit_decreasing

    mode = "plain" if data == "demo-captions" else "chat"
    processor = AutoProcessor.from_pretrained(model)
    image_tokens = AutoConfig.from_pretrained(model).image_seq_length
    kept = fit_to_length(load_llava_json(data_file, images), processor, image_tokens, max_length, mode, DataReport())
    lengths = list(kept["length"])
    generator = torch.Generator().manual_seed(0)
    if layout == "packed":
        dataset, _ = with_lazy_images(kept, rows=best_fit_decreasing(lengths, row_length or max_length))
        order = torch.randperm(len(dataset), generator=generator).tolist()
        collate = LangBridgeCollator(processor, row_length or max_length, mode, Packing("packed"))
        size = rows
    else:
        dataset, _ = with_lazy_images(kept)
        if layout == "grouped":  # LengthGroupedSampler's order with the megabatch it has at scale (50 batches)
            order = get_length_grouped_indices(lengths, batch, mega_batch_mult=50, generator=generator)
        else:
            order = torch.randperm(len(dataset), generator=generator).tolist()
        collate = LangBridgeCollator(
            processor, max_length, mode, Packing("padding_free" if layout == "padding_free" else "padded")
        )
        size = batch
    return [collate([dataset[i] for i in order[start : start + size]]) for start in range(0, len(order), size)]


def shares(epoch: list[dict]) -> dict:
    """Real tokens, slots (rows x width), padding share and steps of an epoch."""
    slots = sum(b["input_ids"].numel() for b in epoch)
    real = sum(
        int(b["attention_mask"].sum()) if "attention_mask" in b else int(b["sample_spans"][:, 2].sum()) for b in epoch
    )
    longest = max(
        int(b["attention_mask"].sum(dim=1).max()) if "attention_mask" in b else int(b["sample_spans"][:, 2].max())
        for b in epoch
    )
    return {"tokens": real, "slots": slots, "padding_share": 1 - real / slots, "steps": len(epoch), "longest": longest}


def epoch_step(data: str, layout: str, model: str, **options):
    """Set up one layout's epoch; the returned step trains through it once (module docstring)."""
    from transformers import AutoModelForImageTextToText
    from trl.trainer.utils import add_fused_lm_head

    epoch = epoch_batches(data, layout, model, **options)
    model = AutoModelForImageTextToText.from_pretrained(model, dtype=torch.float32)
    model.requires_grad_(False)
    model.model.multi_modal_projector.requires_grad_(True)
    if data != "demo-captions":  # stage 2: projector + LLM; stage 1: the projector alone
        model.model.language_model.requires_grad_(True)
        model.lm_head.requires_grad_(True)
    add_fused_lm_head(model)  # what SFTTrainer does
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def step():
        for inputs in epoch:
            optimizer.zero_grad(set_to_none=True)
            out = model(**{k: v for k, v in inputs.items() if k != "sample_spans"}, fused_lm_head=True)
            (-out.log_probs.sum() / out.label_mask.sum().clamp(min=1)).backward()
            optimizer.step()

    return step


CASES = {"epoch": epoch_step}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", choices=["demo-captions", "demo-conversations", "mix"], default=None)
    parser.add_argument("--samples", type=int, default=96, help="samples per data set (one epoch)")
    parser.add_argument("--batch", type=int, default=8, help="samples per padded step")
    parser.add_argument("--max-length", type=int, default=512, help="truncation and the packed rows' length")
    parser.add_argument("--hidden", type=int, default=256, help="the LLM's width (Qwen2-shaped)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="epochs per layout for the time")
    parser.add_argument("--out", type=Path, default=None, help="write packing_results.json here")
    args = parser.parse_args(argv)
    data_sets = args.data or ["demo-captions", "demo-conversations", "mix"]
    print(
        f"padded vs padding-free vs packed, {args.samples} samples a data set, batch {args.batch}, max_length "
        f"{args.max_length}, a Qwen2-shaped LLM of {args.layers} layers of {args.hidden}, float32, SDPA; peak memory "
        f"from a fresh process per layout; time: median of {args.repeats} epochs per layout after a warm-up, "
        f"alternated in one process; {torch.get_num_threads()} threads",
        flush=True,
    )
    results = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "data": {}}
    with tempfile.TemporaryDirectory() as scratch:
        built = build(Path(scratch), args.samples, args.hidden, args.layers)
        for data in data_sets:
            options = {"data": data, **built[data], "batch": args.batch, "max_length": args.max_length}
            padded = shares(epoch_batches(layout="padded", rows=1, **options))
            # A packed step holds about a padded step's tokens, so both take about as many optimizer steps: as few
            # rows as hold them, each of max_length or less (never under the longest sample).
            per_step = padded["tokens"] / padded["steps"]
            even = math.ceil(per_step / math.ceil(per_step / args.max_length))
            options["row_length"] = min(args.max_length, max(padded["longest"], even))
            options["rows"] = max(1, round(per_step / options["row_length"]))
            counts = {layout: shares(epoch_batches(layout=layout, **options)) for layout in LAYOUTS}
            measured = compare(
                "benchmarks.packing",
                "epoch",
                {layout: {"layout": layout, **options} for layout in LAYOUTS},
                args.repeats,
            )
            print(
                f"  {data}: {counts['padded']['tokens']} tokens in {args.samples} samples (longest {padded['longest']}); "
                f"packed: {options['rows']} row(s) of at most {options['row_length']} tokens a step",
                flush=True,
            )
            base = measured["padded"]
            layouts = {}
            for layout in LAYOUTS:
                m, c = measured[layout], counts[layout]
                row = {
                    **c,
                    "epoch_s": m["seconds"],
                    "times": m["times"],
                    "step_s": m["seconds"] / c["steps"],
                    "tokens_per_s": c["tokens"] / m["seconds"],
                    "peak_mb": m["peak_mb"],
                    "time_ratio": m["seconds"] / base["seconds"],
                    "speed_ratio": base["seconds"] / m["seconds"],
                    "peak_ratio": m["peak_mb"] / base["peak_mb"] if base["peak_mb"] > 0 else float("nan"),
                }
                layouts[layout] = row
                print(
                    f"    {layout:12s}: padding {row['padding_share']:6.1%} of {c['slots']} slots, {c['steps']} steps; "
                    f"epoch {m['seconds']:.2f}s = {row['time_ratio']:.2f}x padded; {row['tokens_per_s']:.0f} tokens/s "
                    f"= {row['speed_ratio']:.2f}x; step {row['step_s']:.3f}s; peak {m['peak_mb']:.0f}MB = "
                    f"{row['peak_ratio']:.2f}x",
                    flush=True,
                )
            results["data"][data] = {
                "rows_per_packed_step": options["rows"],
                "packed_row_length": options["row_length"],
                "layouts": layouts,
            }
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "packing_results.json").write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
