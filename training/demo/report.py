"""The demo's report: a table laid out like the paper's (scores and % of the baseline), training curves, and
the words LangBridge reads in a few test images."""

import json
import os
from pathlib import Path

from .stage1_captions import ATTRIBUTES
from .world import QUESTION_KINDS

ORDER = ["A", "B", "C", "D-llava", "D-langbridge"]


def rows(results: dict) -> list[tuple[str, dict]]:
    """The runs as the report lists them: B with the paper's stage 1, when the run has it, right after B."""
    from .experiment import PAPER_ROW

    listed = [(name, results["runs"][name]) for name in ORDER]
    paper = results.get("paper_stage1")
    return listed[:2] + [(PAPER_ROW, paper)] + listed[2:] if paper else listed


def percent(value: float) -> str:
    return f"{100 * value:.1f}"


def score_table(results: dict, split: str) -> str:
    """Rows: the runs. Columns: accuracy per question kind, overall, and overall as % of the baseline (A)."""
    baseline = results["runs"]["A"]["scores"][split]["overall"]["vqa_accuracy"]
    header = ["run", "connector, stage 1", *QUESTION_KINDS, "overall", "% of A"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, run in rows(results):
        scores = run["scores"][split]
        kinds = [
            percent(scores["by_kind"][k]["vqa_accuracy"]) if k in scores["by_kind"] else "-" for k in QUESTION_KINDS
        ]
        overall = scores["overall"]["vqa_accuracy"]
        relative = f"{100 * overall / baseline:.0f}%" if baseline else "-"
        lines.append(
            f"| {name} | {run_label(name, run['description'], results['settings'])} | "
            + " | ".join(kinds)
            + f" | **{percent(overall)}** | {relative} |"
        )
    return "\n".join(lines)


def caption_losses(stage1_dir: str, settings: dict) -> list[tuple[int, float]]:
    """The caption loss alone along a stage-1 run, from its Trainer log (`trainer_state.json`): the loss it trained
    on less each coefficient loss times its weight (logged over the same steps), so that runs with and without a
    remedy compare on one measure."""
    from ..caption_words import LOSSES

    log = json.loads((Path(stage1_dir) / "trainer_state.json").read_text())["log_history"]
    return [
        (entry["step"], entry["loss"] - sum(settings.get(name, 0.0) * entry.get(name, 0.0) for name in LOSSES))
        for entry in log
        if "loss" in entry
    ]


def plot_curves(results: dict, path: Path, stage1_dirs: dict | None = None) -> Path:
    """Stage 1's caption loss per run (read from each run's folder in `stage1_dirs` when a remedy adds losses to B's
    and C's) and stage 2's SFT loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from .experiment import PAPER_ROW

    figure, (stage1, stage2) = plt.subplots(1, 2, figsize=(11, 4))
    colours = {name: f"C{n}" for n, name in enumerate([*ORDER, PAPER_ROW])}  # a run's colour, the same in both
    styles = {PAPER_ROW: ":", "D-llava": "--", "D-langbridge": "--"}
    remedy = stage1_losses(results["settings"])
    stage1_runs = {
        "A": ("A: LLaVA on LLM-2", results["losses"]["pretrain"]["A"]),
        # the Trainer logs the sum a remedy trains on: B's and C's caption loss is then read apart
        "B": ("B: LangBridge on LLM-1", caption_losses(stage1_dirs["B"], results["settings"]) if remedy else None),
        "C": ("C: LangBridge on LLM-2", caption_losses(stage1_dirs["C"], results["settings"]) if remedy else None),
    }
    paper = results.get("paper_stage1")
    if paper:
        stage1_runs[PAPER_ROW] = (f"{PAPER_ROW}: on LLM-1", paper["losses"]["pretrain"])
    for name, (label, losses) in stage1_runs.items():
        losses = losses or results["losses"]["pretrain"][name]
        stage1.plot(*zip(*losses), label=label, marker=".", color=colours[name], linestyle=styles.get(name, "-"))
    stage1.set(title="Stage 1: caption loss (projector only)", xlabel="step", ylabel="loss")
    for name, _ in rows(results):
        losses = paper["losses"]["sft"] if name == PAPER_ROW else results["losses"]["sft"][name]
        stage2.plot(*zip(*losses), label=name, marker=".", color=colours[name], linestyle=styles.get(name, "-"))
    stage2.set(title="Stage 2: SFT loss on LLM-2", xlabel="step", ylabel="loss")
    for axes in (stage1, stage2):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
        axes.legend()
        axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_overlays(
    model_dir: str,
    questions_file: str,
    image_folder: str,
    path: Path,
    count: int = 3,
    method: str = "coefficients",
    captions_file: str | None = None,
    top_k: int = 3,
    use_kernels: bool | None = None,
) -> Path:
    """The top tokens of each patch, for the first `count` test images, one above the other, each titled with its
    caption: by LangBridge coefficient, or (`method="nearest"`, for any connector) by cosine similarity to the LLM's
    word embeddings."""
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from modeling_langbridge.analysis.alignment import read_captions, read_nearest
    from modeling_langbridge.analysis.interpret import draw_overlay, read_patches
    from modeling_langbridge.model.modeling_langbridge import hub_kernels_wanted

    model = AutoModelForImageTextToText.from_pretrained(model_dir, use_kernels=hub_kernels_wanted(use_kernels)).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    names = list(dict.fromkeys(json.loads(line)["image"] for line in Path(questions_file).read_text().splitlines()))[
        :count
    ]
    captions = read_captions(captions_file) if captions_file else {}
    legend = (
        "Right: each patch's top 3 shared-vocabulary tokens by coefficient (the words its visual token is made of), "
        "largest first, coefficient in grey."
        if method == "coefficients"
        else "Right: the 3 words whose input embeddings are nearest each patch's visual token, cosine similarity in grey."
    )
    panels = []
    for n, name in enumerate(names):
        image = Image.open(Path(image_folder) / name).convert("RGB")
        reading = (read_patches if method == "coefficients" else read_nearest)(model, processor, image, top_k=top_k)
        title = f'{name}: "{captions[name]}"' if name in captions else name
        panels.append(
            Image.open(
                draw_overlay(
                    image, reading, path.with_name(f"overlay_{n}.png"), title=title, legend=legend if n == 0 else " "
                )
            )
        )
    canvas = Image.new(
        "RGB", (max(p.width for p in panels), sum(p.height for p in panels) + 16 * (len(panels) - 1)), "white"
    )
    y = 0
    for panel in panels:
        canvas.paste(panel, (0, y))
        y += panel.height + 16
    canvas.save(path)
    for n in range(len(panels)):
        path.with_name(f"overlay_{n}.png").unlink()
    return path


def llm_facts(llm: dict) -> str:
    return (
        f"text loss {llm['first_loss']:.2f} -> {llm['final_loss']:.2f}; on unseen scenes it writes the exact caption "
        f"for {percent(llm['captions_copied'])}% of scene tables and answers {percent(llm['answers_from_caption'])}% of "
        f"questions from a caption, {percent(llm['answers_from_table'])}% from a table"
    )


def alignment_table(alignment: dict) -> str:
    runs = [label for label in alignment if label not in ("plot", "chance")]
    lines = ["| run | step | mean top-1 cosine | nearest word in caption (%) |", "|---|---|---|---|"]
    for label in runs:
        lines += [
            f"| {label} | {p['step']} | {p['mean_top1_cosine']:.3f} | {percent(p['grounded_share'])} |"
            for p in alignment[label]
        ]
    return "\n".join(lines)


def timing(results: dict) -> str:
    """The run's time as measured: each stage when it ran, a reused (cached) stage keeping its own."""
    cached = results.get("cached_stages", [])
    text = f"{results['seconds']:.0f} s on this machine (the stages' times, each measured when it ran"
    if cached:
        took = f"{results['run_seconds']:.0f} s" if results["run_seconds"] >= 1 else "under a second"
        text += f"; this rerun reused {len(cached)} finished stage{'s' if len(cached) > 1 else ''} and took {took}"
    return text + ")"


def stage_times(results: dict) -> str:
    return ", ".join(
        f"{name} {seconds:.0f}" if seconds is not None else f"{name} (not recorded)"
        for name, seconds in results["stage_seconds"].items()
    )


def vocabulary_facts(s: dict, vocabulary: dict) -> str:
    size, seen = vocabulary["size"], vocabulary["shared_and_seen"]
    if size < s["shared_vocab_size"]:
        return (
            f"{size} tokens: asked for up to {s['shared_vocab_size']} (`shared_vocab_size`), found {seen}, all the "
            "tokens of the world's texts that both tokenizers have, by corpus frequency"
        )
    return f"{size} tokens common to both tokenizers, the most frequent in the world's texts (of {seen} found)"


def alignment_note(alignment: dict, width: int, activation: str) -> str:
    """What the alignment table's cosines can and cannot say, with the chance level measured for this run's LLM-2."""
    chance = alignment.get("chance")
    points = alignment.get("C: LangBridge", [])
    if chance is None or len(points) < 2:
        return ""
    first, last = points[0]["mean_top1_cosine"], points[-1]["mean_top1_cosine"]
    scale = (
        f"For scale: random directions in LLM-2's {width}-dimensional input space have a nearest word at cosine "
        f"{chance:.2f} on average, so in a space this narrow a top-1 cosine near {chance:.2f} says little by itself."
    )
    if last >= first:
        return scale + f" LangBridge's tokens go from {first:.2f} to {last:.2f} along stage 1."
    mix = (
        "a signed mix of word embeddings (its coefficients are raw logits, not a softmax)"
        if activation == "none"
        else "a weighted average of word embeddings (softmax coefficients)"
    )
    return (
        scale
        + f" LangBridge's tokens go from {first:.2f} to {last:.2f} along stage 1: each is {mix}, and the caption loss rewards mixes that carry "
        "what the caption needs (colour, shape, count and column at once), not closeness to any single word, so "
        "the mix can move away from its nearest word as it learns (our reading; not measured further). Its words "
        "are read exactly from the coefficients (the overlay above); the cosine only says how word-like the mix "
        "looks from outside."
    )


def default_stage1_note(settings: dict, paper: dict | None) -> str:
    """Why LangBridge's stage 1 is the demo's default, when the run used it, and what the paper's row beside it is."""
    from .experiment import DEFAULT_STAGE1_REASON, LANGBRIDGE, PAPER_ROW, DemoSettings

    default = DemoSettings().recorded()
    note = ""
    if all(settings.get(name, 0.0) == default.get(name, 0.0) for name in LANGBRIDGE):
        note += f"\nLangBridge's stage 1 is the demo's default, the study's remedy, because {DEFAULT_STAGE1_REASON}.\n"
    if paper:
        note += (
            f"\nThe row **{PAPER_ROW}** is B as the paper trains it, kept beside the remedy for comparison: stage 1 "
            "with the caption loss alone at stage 1's own rate, with raw-logit coefficients (the study's best "
            "activation for it, the demo's default before the remedy; `--paper-stage-1` runs it as B).\n"
        )
    return note + "\n" if note else ""


def seed_note(seed: int) -> str:
    """The seed, and its part in the study: its validation split took decisions (the default stage 1, the remedies
    carried to other seeds), or it only reports. Either way this report's test split decided nothing."""
    from .study import VALIDATION_SEEDS, role

    decided = (
        "its validation split chose"
        if role(seed) == "decision"
        else f"seeds {', '.join(map(str, VALIDATION_SEEDS))} chose"
    )
    return f"{seed} (a {role(seed)} seed of the study: {decided} the demo's defaults; the test split decided nothing)"


def stage1_losses(settings: dict) -> list[str]:
    """The coefficient losses LangBridge's stage 1 (B and C) trains with beside the caption loss, with weights."""
    names = {"caption_word_loss": "caption-word loss", "coefficient_spread_loss": "coefficient-spread loss"}
    return [f"{words} {settings[name]:g}" for name, words in names.items() if settings.get(name)]


def stage1_changes(settings: dict) -> str:
    """What LangBridge's stage 1 (runs B and C) adds to the paper's ('' when it is the paper's): a remedy's weight
    or rate, said wherever a figure of those runs is."""
    rate = settings.get("langbridge_pretrain_lr")
    return ", ".join(stage1_losses(settings) + ([f"stage-1 lr {rate:g}"] if rate is not None else []))


def run_label(name: str, description: str, settings: dict) -> str:
    """A run's row label, with its stage 1's departure from the paper when it has one (B and C only: LLaVA's runs
    and the no-stage-1 control train as the paper's)."""
    changes = stage1_changes(settings)
    return f"{description} (stage 1 with {changes})" if changes and name in ("B", "C") else description


def differences_from_paper(settings: dict) -> str:
    """Every setting of this run that differs from the paper's recipe, for the top of a report."""
    differences = []
    if settings["coefficient_activation"] != "softmax":
        differences.append("coefficients are raw logits (the official code's), not the paper's softmax")
    changes = stage1_changes(settings)
    if changes:
        differences.append(
            f"LangBridge's stage 1 (B, C) also trains with {changes}, which the paper's does not (the row "
            "B (paper's stage 1) trains without, with raw-logit coefficients)"
        )
    differences.append("toy scale: synthetic world, tiny LLMs and encoder (The parts, below)")
    return "Differs from the paper's recipe: " + "; ".join(differences) + "."


def coefficient_words(activation: str) -> str:
    return {
        "none": "raw logits (`--coefficients none`, as the official code)",
        "softmax": "softmax (`--coefficients softmax`, as the paper's text)",
    }[activation]


def caption_rows(results: dict) -> dict:
    """Each stage-1 model's captions before SFT, B with the paper's stage 1 (when the run has it) after B's."""
    from .experiment import PAPER_ROW

    listed = dict(results["captions_before_sft"])
    paper = results.get("paper_stage1")
    if not paper:
        return listed
    labels = list(listed)
    after = labels.index("B on LLM-2 (transferred)") + 1
    moved = {label.replace("B ", f"{PAPER_ROW} ", 1): splits for label, splits in paper["captions_before_sft"].items()}
    return (
        {label: listed[label] for label in labels[:after]} | moved | {label: listed[label] for label in labels[after:]}
    )


def captions_table(results: dict, split: str) -> str:
    """Stage-1 captions per attribute, one row per model (the transfer measure before any SFT)."""
    header = ["stage-1 model", "all four right", *ATTRIBUTES]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, splits in caption_rows(results).items():
        accuracy = splits[split]
        lines.append(
            f"| {label} | **{percent(accuracy['exact'])}** | "
            + " | ".join(percent(accuracy[k]) for k in ATTRIBUTES)
            + " |"
        )
    return "\n".join(lines)


def paper_bullet(results: dict) -> str:
    """The report's line for the row B (paper's stage 1), when the run has it."""
    from .experiment import PAPER_ROW

    if not results.get("paper_stage1"):
        return ""
    return (
        f"- **{PAPER_ROW}**: B as the paper trains it (caption loss only, stage 1's rate, raw-logit coefficients), "
        "moved and SFT'd the same way.\n"
    )


def paper_sentence(results: dict) -> str:
    paper = results.get("paper_stage1")
    if not paper:
        return ""
    accuracy = paper["scores"]["test"]["overall"]["vqa_accuracy"]
    return f"; with the paper's stage 1, B scored {100 * accuracy:.1f}"


def write_report(out: Path, results: dict, experiment: dict, world: dict, use_kernels: bool | None = None) -> Path:
    plot_curves(results, out / "curves.png", {run: model["path"] for run, model in experiment["pretrained"].items()})
    test = world["test"]
    plot_overlays(
        experiment["finetuned"]["B"]["path"],
        test["questions"],
        test["images"],
        out / "overlay.png",
        captions_file=test["captions"],
        use_kernels=use_kernels,
    )
    plot_overlays(
        experiment["pretrained"]["A"]["path"],
        test["questions"],
        test["images"],
        out / "overlay_llava.png",
        method="nearest",
        captions_file=test["captions"],
        use_kernels=use_kernels,
    )

    s, runs = results["settings"], results["runs"]
    overall = {name: runs[name]["scores"]["test"]["overall"]["vqa_accuracy"] for name in ORDER}
    questions = runs["A"]["scores"]["test"]["overall"]["count"]
    stage1_gain = {
        c: overall[p] - overall[d] for p, d, c in (("A", "D-llava", "LLaVA"), ("C", "D-langbridge", "LangBridge"))
    }
    text = f"""# LangBridge demo: moving a pretrained adapter to another LLM, in miniature

Seed {seed_note(results["seed"])}{" (quick settings)" if results["quick"] else ""}; LangBridge coefficients: {coefficient_words(s["coefficient_activation"])}{"; stage 1 of B and C: + " + stage1_changes(s) if stage1_changes(s) else ""}; {timing(results)}.
{differences_from_paper(s)}
{default_stage1_note(s, results.get("paper_stage1"))}Scores are accuracies on {questions} held-out test questions ({s["test_scenes"]} unseen scenes, six kinds), by greedy
generation, answers normalised as in VQA (one reference answer each, so VQA accuracy equals exact match).
Every run used the same SFT data ({s["train_scenes"]} scenes, 3 questions each), steps ({s["sft_steps"]}),
batch ({s["batch_size"]}) and learning rate ({s["sft_lr"]}) on LLM-2. Nothing was tuned on the test split.

## Test accuracy (%)

{score_table(results, "test")}

What the rows are:
- **A**: transformers' `LlavaForConditionalGeneration` (MLP connector), stage 1 on LLM-2, then SFT.
- **B**: LangBridge, stage 1 with LLM-1, moved to LLM-2 by `langbridge transfer` (no stage 1 on LLM-2), then SFT.
{paper_bullet(results)}- **C**: LangBridge, stage 1 on LLM-2, then SFT.
- **D**: each connector with no stage 1, SFT only.

Stage 1 added {100 * stage1_gain["LLaVA"]:+.1f} points for LLaVA (A vs D-llava) and {100 * stage1_gain["LangBridge"]:+.1f}
for LangBridge (C vs D-langbridge). The transferred adapter (B) scored {100 * overall["B"]:.1f}, against
{100 * overall["C"]:.1f} for LangBridge pretrained on LLM-2 itself and {100 * overall["D-langbridge"]:.1f} without any stage 1{paper_sentence(results)}.

## Transfer before SFT: stage-1 captions (%)

Each stage-1 model captions the {s["test_scenes"]} unseen test scenes in stage 1's own format (the image, then the
caption), greedily: the share with all four attributes right, and each attribute. B's adapter is read on LLM-1, where
it was trained, and on LLM-2 right after `transfer`, with no training on LLM-2 at all: the paper's "pretraining-free"
claim in its purest form. C (LangBridge trained on LLM-2) and A (LLaVA's connector on LLM-2) are what stage 1 on
LLM-2 itself reaches.

{captions_table(results, "test")}

## The parts

| part | what | measured |
|---|---|---|
| world | {s["train_scenes"]} / {s["validation_scenes"]} / {s["test_scenes"]} scenes (train / validation / test), {s["image_size"]}px | colour, shape, count, position, existence, yes/no questions |
| vision encoder | CLIPVisionModel, {s["vision_layers"]} layers, width {s["vision_hidden"]}, trained to tell what stands in each patch's column, then frozen | patch accuracy {percent(results["vision"]["patch_accuracy"])}% on unseen scenes |
| LLM-1 | Qwen2-style, byte-level BPE, width {s["llm1_hidden"]}, {s["llm1_layers"]} layers | {llm_facts(results["llms"]["llm1"])} |
| LLM-2 | Llama-style, SentencePiece-style, width {s["llm2_hidden"]}, {s["llm2_layers"]} layers | {llm_facts(results["llms"]["llm2"])} |
| shared vocabulary | {vocabulary_facts(s, results["vocabulary"])} | coverage {", ".join(percent(c) + "%" for c in results["vocabulary"]["coverage"])} (LLM-1, LLM-2) |
| transfer B | LLM-1's stage-1 adapter placed on LLM-2's embeddings | {percent(results["transfer"]["coverage"])}% found exactly, {results["transfer"]["composed"]} composed |

## Validation accuracy (%)

{score_table(results, "validation")}

## Training curves

![training curves](curves.png)

## What the transferred adapter reads (B, after SFT)

How to read it: on the left, a test image on its 3 x 3 patch grid; on the right, the same grid, where each cell lists
the three shared-vocabulary tokens with the largest coefficients in that patch's visual token, largest first, with the
coefficient in grey (the visual token is the coefficients times LLM-2's embeddings of those tokens, so these are the
words it is mostly made of). They are a mix that moves LLM-2, not a caption: compare a cell with its neighbours, as
patches that show the same thing get the same words and the words that differ carry what a patch shows; the title
is the image's true caption.

![token overlay](overlay.png)

## Do visual tokens approach the word embeddings? (the paper's Figure 1)

For 16 test images, at the start of stage 1 (step 0) and at each saved checkpoint: the mean cosine similarity
of each visual token to its nearest word embedding of LLM-2, and the share of patches whose nearest word is a
word of the image's caption (function words left out). LangBridge's tokens are combinations of word embeddings
by construction; the MLP connector's have to get there.

{alignment_table(results["alignment"])}

{alignment_note(results["alignment"], s["llm2_hidden"], s["coefficient_activation"])}

![alignment]({os.path.relpath(results["alignment"]["plot"], out)})

What LLaVA's connector (A, after stage 1) sits nearest to, per patch, by cosine similarity (read as above; the grey
number is the cosine):

![nearest words, LLaVA](overlay_llava.png)

Stage times (s, each as measured when the stage ran): {stage_times(results)}. Training details (the Trainer's
loss logs, warnings) are in `demo.log`. Settings: `{json.dumps(s)}`.
"""
    path = out / "report.md"
    path.write_text(text)
    return path
