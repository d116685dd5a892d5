"""The demo's report: a table laid out like the paper's (scores and % of the baseline), training curves, and
the words LangBridge reads in a few test images."""

import json
from pathlib import Path

from .world import QUESTION_KINDS

ORDER = ["A", "B", "C", "D-llava", "D-langbridge"]


def percent(value: float) -> str:
    return f"{100 * value:.1f}"


def score_table(results: dict, split: str) -> str:
    """Rows: the runs. Columns: accuracy per question kind, overall, and overall as % of the baseline (A)."""
    runs = results["runs"]
    baseline = runs["A"]["scores"][split]["overall"]["vqa_accuracy"]
    header = ["run", "connector, stage 1", *QUESTION_KINDS, "overall", "% of A"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in ORDER:
        scores = runs[name]["scores"][split]
        kinds = [percent(scores["by_kind"][k]["vqa_accuracy"]) if k in scores["by_kind"] else "-" for k in QUESTION_KINDS]
        overall = scores["overall"]["vqa_accuracy"]
        relative = f"{100 * overall / baseline:.0f}%" if baseline else "-"
        lines.append(f"| {name} | {runs[name]['description']} | " + " | ".join(kinds) + f" | **{percent(overall)}** | {relative} |")
    return "\n".join(lines)


def plot_curves(results: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (stage1, stage2) = plt.subplots(1, 2, figsize=(11, 4))
    for name, losses in results["losses"]["pretrain"].items():
        label = {"A": "A: LLaVA on LLM-2", "B": "B: LangBridge on LLM-1", "C": "C: LangBridge on LLM-2"}[name]
        stage1.plot(*zip(*losses), label=label, marker=".")
    stage1.set(title="Stage 1: caption loss (projector only)", xlabel="step", ylabel="loss")
    for name in ORDER:
        stage2.plot(*zip(*results["losses"]["sft"][name]), label=name, marker=".",
                    linestyle="--" if name.startswith("D") else "-")
    stage2.set(title="Stage 2: SFT loss on LLM-2", xlabel="step", ylabel="loss")
    for axes in (stage1, stage2):
        axes.legend()
        axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_overlays(model_dir: str, questions_file: str, image_folder: str, path: Path, count: int = 3,
                  method: str = "coefficients") -> Path:
    """The top tokens of each patch, for the first `count` test images, side by side: by LangBridge coefficient,
    or (`method="nearest"`, for any connector) by cosine similarity to the LLM's word embeddings."""
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from modeling_langbridge.alignment import read_nearest
    from modeling_langbridge.modeling_langbridge import hub_kernels_wanted
    from modeling_langbridge.interpret import draw_overlay, read_patches

    model = AutoModelForImageTextToText.from_pretrained(model_dir, use_kernels=hub_kernels_wanted()).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    names = list(dict.fromkeys(json.loads(line)["image"] for line in Path(questions_file).read_text().splitlines()))[:count]
    panels = []
    for n, name in enumerate(names):
        image = Image.open(Path(image_folder) / name).convert("RGB")
        reading = (read_patches if method == "coefficients" else read_nearest)(model, processor, image, top_k=2)
        panels.append(Image.open(draw_overlay(image, reading, path.with_name(f"overlay_{n}.png"), cell=64, title=name)))
    canvas = Image.new("RGB", (sum(p.width for p in panels) + 8 * (len(panels) - 1), max(p.height for p in panels)), "white")
    x = 0
    for panel in panels:
        canvas.paste(panel, (x, 0))
        x += panel.width + 8
    canvas.save(path)
    for n in range(len(panels)):
        path.with_name(f"overlay_{n}.png").unlink()
    return path


def llm_facts(llm: dict) -> str:
    return (f"text loss {llm['first_loss']:.2f} -> {llm['final_loss']:.2f}; on unseen scenes it writes the exact caption "
            f"for {percent(llm['captions_copied'])}% of scene tables and answers {percent(llm['answers_from_caption'])}% of "
            f"questions from a caption, {percent(llm['answers_from_table'])}% from a table")


def alignment_table(alignment: dict) -> str:
    runs = [label for label in alignment if label != "plot"]
    lines = ["| run | step | mean top-1 cosine | nearest word in caption (%) |", "|---|---|---|---|"]
    for label in runs:
        lines += [f"| {label} | {p['step']} | {p['mean_top1_cosine']:.3f} | {percent(p['grounded_share'])} |" for p in alignment[label]]
    return "\n".join(lines)


def write_report(out: Path, results: dict, experiment: dict) -> Path:
    plot_curves(results, out / "curves.png")
    test = json.loads((out / "world" / ".done.json").read_text())["result"]["test"]
    plot_overlays(experiment["finetuned"]["B"]["path"], test["questions"], test["images"], out / "overlay.png")
    plot_overlays(experiment["pretrained"]["A"]["path"], test["questions"], test["images"], out / "overlay_llava.png",
                  method="nearest")

    s, runs = results["settings"], results["runs"]
    overall = {name: runs[name]["scores"]["test"]["overall"]["vqa_accuracy"] for name in ORDER}
    questions = runs["A"]["scores"]["test"]["overall"]["count"]
    stage1_gain = {c: overall[p] - overall[d] for p, d, c in (("A", "D-llava", "LLaVA"), ("C", "D-langbridge", "LangBridge"))}
    text = f"""# LangBridge demo: moving a pretrained adapter to another LLM, in miniature

Seed {results['seed']}{' (quick settings)' if results['quick'] else ''}; {results['seconds']:.0f} s on this machine.
Scores are accuracies on {questions} held-out test questions ({s['test_scenes']} unseen scenes, six kinds), by greedy
generation, answers normalised as in VQA (one reference answer each, so VQA accuracy equals exact match).
Every run used the same SFT data ({s['train_scenes']} scenes, 3 questions each), steps ({s['sft_steps']}),
batch ({s['batch_size']}) and learning rate ({s['sft_lr']}) on LLM-2. Nothing was tuned on the test split.

## Test accuracy (%)

{score_table(results, 'test')}

What the rows are:
- **A**: transformers' `LlavaForConditionalGeneration` (MLP connector), stage 1 on LLM-2, then SFT.
- **B**: LangBridge, stage 1 with LLM-1, moved to LLM-2 by `langbridge transfer` (no stage 1 on LLM-2), then SFT.
- **C**: LangBridge, stage 1 on LLM-2, then SFT.
- **D**: each connector with no stage 1, SFT only.

Stage 1 added {100 * stage1_gain['LLaVA']:+.1f} points for LLaVA (A vs D-llava) and {100 * stage1_gain['LangBridge']:+.1f}
for LangBridge (C vs D-langbridge). The transferred adapter (B) scored {100 * overall['B']:.1f}, against
{100 * overall['C']:.1f} for LangBridge pretrained on LLM-2 itself and {100 * overall['D-langbridge']:.1f} without any stage 1.

## The parts

| part | what | measured |
|---|---|---|
| world | {s['train_scenes']} / {s['validation_scenes']} / {s['test_scenes']} scenes (train / validation / test), {s['image_size']}px | colour, shape, count, position, existence, yes/no questions |
| vision encoder | CLIPVisionModel, {s['vision_layers']} layers, width {s['vision_hidden']}, trained to tell what stands in each patch's column, then frozen | patch accuracy {percent(results['vision']['patch_accuracy'])}% on unseen scenes |
| LLM-1 | Qwen2-style, byte-level BPE, width {s['llm1_hidden']}, {s['llm1_layers']} layers | {llm_facts(results['llms']['llm1'])} |
| LLM-2 | Llama-style, SentencePiece-style, width {s['llm2_hidden']}, {s['llm2_layers']} layers | {llm_facts(results['llms']['llm2'])} |
| shared vocabulary | {results['vocabulary']['size']} tokens common to both tokenizers, by corpus frequency | coverage {', '.join(percent(c) + '%' for c in results['vocabulary']['coverage'])} (LLM-1, LLM-2) |
| transfer B | LLM-1's stage-1 adapter placed on LLM-2's embeddings | {percent(results['transfer']['coverage'])}% found exactly, {results['transfer']['composed']} composed |

## Validation accuracy (%)

{score_table(results, 'validation')}

## Training curves

![training curves](curves.png)

## What the transferred adapter reads (B, after SFT)

Each cell shows the two shared-vocabulary tokens with the largest coefficients in that patch's visual token.

![token overlay](overlay.png)

## Do visual tokens approach the word embeddings? (the paper's Figure 1)

For 16 test images, at the start of stage 1 (step 0) and at each saved checkpoint: the mean cosine similarity
of each visual token to its nearest word embedding of LLM-2, and the share of patches whose nearest word is a
word of the image's caption (function words left out). LangBridge's tokens are combinations of word embeddings
by construction; the MLP connector's have to get there.

{alignment_table(results['alignment'])}

![alignment](alignment/alignment.png)

What LLaVA's connector (A, after stage 1) sits nearest to, per patch, by cosine similarity:

![nearest words, LLaVA](overlay_llava.png)

Stage times (s): {json.dumps(results['stage_seconds'])}. Settings: `{json.dumps(s)}`.
"""
    path = out / "report.md"
    path.write_text(text)
    return path
