"""`langbridge demo --study`: the demo with the paper's stage 1 over several seeds and both activations, summarised.

Each seed is one demo output folder (`seed-N/`), whose stages both activations share where they can (the world,
the encoder, the LLMs, LLaVA's runs); each activation's results and report go to `seed-N/<activation>/`. A finished
(seed, activation) is reused, so the study can be stopped and resumed. The summary gives every seed's figures, the
mean, minimum and spread per run, a plot with one point per seed, and the table in the paper's layout.
"""

import json
import time
from pathlib import Path

from .console import Console
from .report import ORDER, coefficient_words, percent
from .world import QUESTION_KINDS

ACTIVATIONS = ("none", "softmax")
DEFAULT_SEEDS = (0, 1, 2, 3, 4)
# Anything the study decides (the activation, which remedy is worth running on every seed and becomes the demo's
# default) is decided on these seeds' validation split; the other seeds and the test split only report.
VALIDATION_SEEDS = (0, 1, 2)
# Candidate remedies for a failed transfer: a name, the activation, and the DemoSettings fields they change from the
# paper's stage 1 (experiment.NO_REMEDY; the study's plain variants run it with each activation). Softmax
# coefficients learn slowly at the demo's stage-1 rate (its B captions little even on LLM-1), so the candidates give
# the LangBridge stage 1 a larger rate; the caption-word loss asks the coefficients to name the captions' words
# (training/caption_words.py), as the diagnosis found they do not.
REMEDIES = {
    "softmax, stage-1 lr 5e-3": ("softmax", {"langbridge_pretrain_lr": 5e-3}),
    "softmax, stage-1 lr 2e-2": ("softmax", {"langbridge_pretrain_lr": 2e-2}),
    "softmax, stage-1 lr 5e-2": ("softmax", {"langbridge_pretrain_lr": 5e-2}),
    "none, stage-1 lr 5e-3": ("none", {"langbridge_pretrain_lr": 5e-3}),
    "none, caption-word loss 0.1": ("none", {"caption_word_loss": 0.1}),
    # Round three of the study (README): the caption-word loss with coefficients on the simplex, and with each visual token
    # asked to mix few words (training/caption_words.py, coefficient_spread).
    "softmax, caption-word loss 0.1, stage-1 lr 5e-3": (
        "softmax",
        {"caption_word_loss": 0.1, "langbridge_pretrain_lr": 5e-3},
    ),
    "softmax, caption-word loss 1, stage-1 lr 5e-3": (
        "softmax",
        {"caption_word_loss": 1.0, "langbridge_pretrain_lr": 5e-3},
    ),
    "none, caption-word loss 0.1, spread 0.1": ("none", {"caption_word_loss": 0.1, "coefficient_spread_loss": 0.1}),
    "none, caption-word loss 0.1, spread 1": ("none", {"caption_word_loss": 0.1, "coefficient_spread_loss": 1.0}),
}


def role(seed: int) -> str:
    """Whether a seed decides (its validation split chose the default and the remedies worth carrying) or only
    reports, so that no figure is read without knowing which."""
    return "decision" if int(seed) in VALIDATION_SEEDS else "report"


def seed_role(seed: int) -> str:
    """A seed as tables name it, with its role."""
    return f"{seed} ({role(seed)})"


def check_seeds(seeds, setting: str = "seeds") -> tuple[int, ...]:
    """The study's seeds: each a demo seed, each once. A repeated seed would run once but count twice in every
    mean, minimum, maximum and spread of the summary; it is refused, not dropped, since a list with a repeat is
    most likely a typo for another seed, and the study must say over which seeds it summarises."""
    from modeling_langbridge.errors import LangBridgeUsageError

    from ..arguments import SettingError
    from .experiment import SEED_ACCEPTED, check_seed

    seeds = tuple(seeds) if isinstance(seeds, (list, tuple)) else seeds
    if not isinstance(seeds, tuple) or not seeds:
        raise SettingError(setting, seeds, f"one or more seeds, each {SEED_ACCEPTED}")
    for seed in seeds:
        check_seed(seed, f"{setting} entry")
    repeated = sorted({seed for seed in seeds if seeds.count(seed) > 1})
    if repeated:
        raise LangBridgeUsageError(
            f"{setting} {' '.join(map(str, seeds))} repeats seed {', '.join(map(str, repeated))}, which would run once "
            "and count twice in every mean, minimum, maximum and spread of the summary; give each seed once."
        )
    return seeds


def label(activation: str, overrides: dict | None = None) -> str:
    """The report folder of a variant inside its seed folder: its activation, and a stage-1 remedy's rate and
    weights."""
    from .experiment import langbridge_label

    return langbridge_label(variant_settings(0, activation, overrides))


def variant_settings(seed: int, activation: str, overrides: dict | None = None, quick: bool = False):
    """A variant's DemoSettings: the paper's stage 1 with this activation, changed by the variant's `overrides`
    (whatever the demo's own default stage 1 is)."""
    from .experiment import NO_REMEDY, DemoSettings

    return (DemoSettings.quick if quick else DemoSettings)(
        seed=seed, coefficient_activation=activation, **(NO_REMEDY | (overrides or {}))
    )


def seed_folder(out: Path, seed: int, overrides: dict | None = None) -> Path:
    """Where a variant's stages live. Overrides of settings that LangBridge's stages are kept apart by share the
    seed's folder (and its world, encoder, LLMs and LLaVA runs); any other override (say, longer text training)
    gets a folder of its own, so that it never redoes the plain seed's stages."""
    from .experiment import LANGBRIDGE

    own = {k: v for k, v in sorted((overrides or {}).items()) if k not in LANGBRIDGE}
    return out / "-".join([f"seed-{seed}", *(f"{k}={v}" for k, v in own.items())])


def variant_dir(out: Path, seed: int, activation: str, overrides: dict | None = None) -> Path:
    return seed_folder(out, seed, overrides) / label(activation, overrides)


def finished(report_dir: Path, settings) -> dict | None:
    """The results of a finished (seed, variant), if they were made with these settings."""
    path = report_dir / "results.json"
    if not path.exists():
        return None
    results = json.loads(path.read_text())
    return results if results.get("settings") == settings.recorded() else None


def run_variants(
    out: Path, plan: list[tuple[int, str, dict]], quick: bool, console: Console, use_kernels: bool | None = None
) -> dict:
    """Run (or reuse) the demo for each (seed, activation, overrides) in `plan`; their results, keyed by
    `variant_dir` relative to `out`. A finished one is reused, so the study can be stopped and resumed; progress
    and the time left are shown."""
    from .experiment import NO_REMEDY
    from .experiment import main as run_demo

    spent, ran, results = 0.0, 0, {}
    for number, (seed, activation, overrides) in enumerate(plan, start=1):
        report_dir = variant_dir(out, seed, activation, overrides)
        name = str(report_dir.relative_to(out))
        settings = variant_settings(seed, activation, overrides, quick)
        if not finished(report_dir, settings):
            left = len(plan) - number + 1
            estimate = f", about {spent / ran * left / 60:.0f} min left" if ran else ""
            console.say(f"[study] {number}/{len(plan)} {name}{estimate}")
            start = time.time()
            run_demo(
                report_dir.parent,
                quick=quick,
                seed=seed,
                coefficient_activation=activation,
                report_dir=report_dir,
                overrides=NO_REMEDY | overrides,
                use_kernels=use_kernels,
            )
            spent, ran = spent + time.time() - start, ran + 1
        else:
            console.say(f"[study] {number}/{len(plan)} {name}: cached")
        results[name] = json.loads((report_dir / "results.json").read_text())
    return results


def run_study(
    out: str | Path = "langbridge-study",
    seeds=DEFAULT_SEEDS,
    activations=ACTIVATIONS,
    quick: bool = False,
    use_kernels: bool | None = None,
) -> Path:
    """Run (or reuse) the demo for every seed and activation with the paper's stage 1, then write summary.md,
    summary.json and study.png.
    `use_kernels`: transformers' Hub kernels for every model loaded (default: only when the Hub may be reached)."""
    seeds = check_seeds(seeds)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    console = Console(out / "study.log")
    try:
        plan = [(seed, a, {}) for seed in seeds for a in activations]
        found = run_variants(out, plan, quick, console, use_kernels)
        results = {(seed, a): found[f"seed-{seed}/{a}"] for seed in seeds for a in activations}
        diagnoses = {
            (seed, a): diagnosis(out / f"seed-{seed}", a, use_kernels=use_kernels)
            for seed in seeds
            for a in activations
        }
        summary = summarise(results, seeds, activations, diagnoses)
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        plot_study(summary, out / "study.png")
        (out / "summary.md").write_text(summary_markdown(summary))
        console.say(f"[study] {len(results)} runs summarised: open {out / 'summary.md'}")
    finally:
        console.close()
    return out


def run_remedies(
    out: str | Path = "langbridge-study",
    remedies: dict = REMEDIES,
    seeds=VALIDATION_SEEDS,
    quick: bool = False,
    name: str = "remedies",
    use_kernels: bool | None = None,
    activations=ACTIVATIONS,
) -> Path:
    """Run each remedy on `seeds` beside the plain `activations` (the paper's stage 1) and write `name`.md /
    `name`.json: the figures a remedy is judged by (validation split) and the test split beside them. Remedies that
    change more than LangBridge's stage 1 (e.g. `{"text_steps": 8000}`: LLMs trained longer) run in seed folders of
    their own."""
    seeds = check_seeds(seeds)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    console = Console(out / "study.log")
    variants = {activation: (activation, {}) for activation in activations} | dict(remedies)
    try:
        plan = [(seed, a, o) for seed in seeds for a, o in variants.values()]
        results = run_variants(out, plan, quick, console, use_kernels)
        table = {
            name: {
                seed: remedy_figures(
                    results[str(variant_dir(out, seed, a, o).relative_to(out))],
                    diagnosis(seed_folder(out, seed, o), label(a, o), use_kernels=use_kernels),
                )
                for seed in seeds
            }
            for name, (a, o) in variants.items()
        }
        # The validation seeds' table decides; a remedy run on other seeds (to report it) gets a table of its own.
        stem = name if tuple(seeds) == VALIDATION_SEEDS else f"{name}-seeds-" + "-".join(map(str, seeds))
        (out / f"{stem}.json").write_text(json.dumps({"seeds": list(seeds), "variants": table}, indent=1))
        (out / f"{stem}.md").write_text(remedies_markdown(table, seeds))
        console.say(f"[study] remedies on seeds {', '.join(map(str, seeds))}: open {out / f'{stem}.md'}")
    finally:
        console.close()
    return out


def remedy_figures(results: dict, measured: dict) -> dict:
    """What a remedy is judged by, per split: B as % of A, the controls as % of A, and the captions before SFT; and
    what `transfer_diagnosis` measures of B's coefficients."""
    figures = {"diagnosis": {key: measured[key] for key in DIAGNOSED}}
    for split in ("validation", "test"):
        a = max(overall(results, "A", split), 1e-9)
        figures[split] = {
            "A": overall(results, "A", split),
            **{run: overall(results, run, split) / a for run in ORDER[1:]},
            "captions_before_sft": {
                name: splits[split]["exact"] for name, splits in results["captions_before_sft"].items()
            },
        }
    return figures


def remedies_markdown(table: dict, seeds) -> str:
    lines = [
        f"# Remedies for the transfer, seeds {', '.join(map(str, seeds))}\n",
        (
            "Decision seeds: remedies are chosen on these seeds' validation split.\n"
            if tuple(seeds) == VALIDATION_SEEDS
            else f"Report seeds: never used for a decision (decisions were made on seeds "
            f"{', '.join(map(str, VALIDATION_SEEDS))}, validation split); read the test split.\n"
        ),
        "Judged on the validation split (the test split in brackets). Runs as % of A; captions: stage-1 captions "
        "with all four attributes right before SFT (validation), "
        + " / ".join(next(iter(next(iter(table.values())).values()))["validation"]["captions_before_sft"])
        + ".\n",
        "The last columns: how often B's coefficients on LLM-1 give the true colour / shape / count word the largest "
        "weight among its alternatives (chance: 25% / 33% / 33%), and over how many tokens they spread "
        "(`transfer_diagnosis.py`, 60 validation images).\n",
        "| variant | seed | A | B | C | D-llava | D-langbridge | captions before SFT | words named | effective tokens |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, per_seed in table.items():
        for seed in seeds:
            v, t = per_seed[seed]["validation"], per_seed[seed]["test"]
            runs = " | ".join(f"{100 * v[r]:.0f}% ({100 * t[r]:.0f}%)" for r in ORDER[1:])
            captions = " / ".join(percent(x) for x in v["captions_before_sft"].values())
            d = per_seed[seed]["diagnosis"]
            named = " / ".join(percent(d[f"readable_{a}"]) for a in ("colour", "shape", "count"))
            lines.append(
                f"| {name} | {seed_role(seed)} | {percent(v['A'])} ({percent(t['A'])}) | {runs} | {captions} | {named} | "
                f"{d['effective_tokens']:.1f} |"
            )
    return "\n".join(lines) + "\n"


def diagnosis(seed_dir: Path, variant: str, images: int = 60, use_kernels: bool | None = None) -> dict:
    """`transfer_diagnosis.diagnose` for one seed and variant (an activation, or a remedy's label) on validation
    images, kept beside its results."""
    path = seed_dir / variant / "diagnosis.json"
    if path.exists():
        kept = json.loads(path.read_text())
        if set(DIAGNOSED) <= set(kept):  # else made before a measure was added: measured again
            return kept
    from PIL import Image

    from modeling_langbridge.analysis.alignment import read_captions

    from .experiment import finished_result
    from .transfer_diagnosis import diagnose

    validation = finished_result(seed_dir, "world")["validation"]
    captions = read_captions(validation["captions"])
    names = sorted(captions)[:images]
    pictures = [Image.open(Path(validation["images"]) / name).convert("RGB") for name in names]
    measured = diagnose(
        str(seed_dir / "pretrain" / f"B-{variant}"),
        str(seed_dir / "transfer" / f"B-{variant}"),
        pictures,
        [captions[name] for name in names],
        use_kernels=use_kernels,
    )
    path.write_text(json.dumps(measured, indent=1))
    return measured


def overall(results: dict, run: str, split: str) -> float:
    return results["runs"][run]["scores"][split]["overall"]["vqa_accuracy"]


def spread(values: list[float]) -> dict:
    mean = sum(values) / len(values)
    return {
        "mean": mean,
        "min": min(values),
        "max": max(values),
        "spread": max(values) - min(values),
        "std": (sum((v - mean) ** 2 for v in values) / max(1, len(values) - 1)) ** 0.5,
    }


def correlation(xs: list[float], ys: list[float]) -> float | None:
    """Pearson's r, or None when either side does not vary."""
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sx, sy = sum((x - mx) ** 2 for x in xs) ** 0.5, sum((y - my) ** 2 for y in ys) ** 0.5
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / (sx * sy) if sx and sy else None


DIAGNOSED = (
    "similarity_agreement",
    "readable_colour",
    "readable_shape",
    "readable_count",
    "effective_tokens",
    "norm",
    "token_scale_llm1",
    "token_scale_llm2",
    "word_list_captions_llm1",
    "word_list_captions_llm2",
)


def summarise(results: dict, seeds, activations, diagnoses: dict | None = None) -> dict:
    """Per activation: every seed's overall accuracy and % of A per run and split, their statistics, the mean per
    question kind (the paper's layout), the stage-1 captions before SFT, and the two checks the demo argues by."""
    summary = {"seeds": list(seeds), "activations": {}}
    for activation in activations:
        per_seed, statistics, kinds, checks = {}, {}, {}, {}
        for split in ("validation", "test"):
            rows = {
                seed: {
                    run: {
                        "accuracy": overall(results[seed, activation], run, split),
                        "of_a": overall(results[seed, activation], run, split)
                        / max(overall(results[seed, activation], "A", split), 1e-9),
                    }
                    for run in ORDER
                }
                for seed in seeds
            }
            per_seed[split] = rows
            statistics[split] = {
                run: {measure: spread([rows[seed][run][measure] for seed in seeds]) for measure in ("accuracy", "of_a")}
                for run in ORDER
            }
            kinds[split] = {
                run: {
                    kind: sum(
                        results[seed, activation]["runs"][run]["scores"][split]["by_kind"][kind]["vqa_accuracy"]
                        for seed in seeds
                    )
                    / len(seeds)
                    for kind in QUESTION_KINDS
                }
                for run in ORDER
            }
            checks[split] = {
                "B_at_least_95_percent_of_A": [seed for seed in seeds if rows[seed]["B"]["of_a"] >= 0.95],
                "controls_below_A": [
                    seed for seed in seeds if all(rows[seed][d]["of_a"] < 1 for d in ("D-llava", "D-langbridge"))
                ],
            }
        captions = {
            seed: {
                label: {split: accuracy for split, accuracy in splits.items()}
                for label, splits in results[seed, activation]["captions_before_sft"].items()
            }
            for seed in seeds
        }
        measured = {seed: (diagnoses or {}).get((seed, activation)) for seed in seeds}
        transfer = [per_seed["test"][seed]["B"]["of_a"] for seed in seeds]
        relations = {
            key: correlation([measured[seed][key] for seed in seeds], transfer)
            for key in DIAGNOSED
            if all(measured[seed] for seed in seeds) and len(seeds) > 2
        }
        summary["activations"][activation] = {
            "diagnosis": measured,
            "diagnosis_vs_b": relations,
            "per_seed": per_seed,
            "statistics": statistics,
            "by_kind": kinds,
            "checks": checks,
            "captions_before_sft": captions,
        }
    return summary


def plot_study(summary: dict, path: Path) -> Path:
    """One panel per activation: each run's test accuracy as % of A, one point per seed, the mean as a bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    activations = list(summary["activations"])
    figure, axes = plt.subplots(1, len(activations), figsize=(5.5 * len(activations), 4), sharey=True, squeeze=False)
    colours = plt.get_cmap("tab10")
    for panel, activation in zip(axes[0], activations):
        study = summary["activations"][activation]
        rows = study["per_seed"]["test"]
        for x, run in enumerate(ORDER):
            panel.bar(x, 100 * study["statistics"]["test"][run]["of_a"]["mean"], color="0.88", width=0.6)
            for n, seed in enumerate(summary["seeds"]):
                panel.scatter(
                    x + 0.08 * (n - (len(summary["seeds"]) - 1) / 2),
                    100 * rows[seed][run]["of_a"],
                    color=colours(n % 10),
                    s=22,
                    zorder=3,
                    label=f"seed {seed}" if x == 0 else None,
                )
        panel.axhline(95, color="0.4", linestyle=":", linewidth=1)
        panel.set_xticks(range(len(ORDER)), ORDER)
        panel.set_title(f"coefficients: {activation}")
        panel.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("test accuracy, % of A (bar: mean)")
    axes[0][-1].legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def seed_table(study: dict, seeds, split: str) -> str:
    rows = study["per_seed"][split]
    lines = ["| seed | " + " | ".join(ORDER) + " |", "|---|" + "---|" * len(ORDER)]
    for seed in seeds:
        row = rows[seed]
        cells = [percent(row["A"]["accuracy"])] + [
            f"{percent(row[r]['accuracy'])} ({100 * row[r]['of_a']:.0f}%)" for r in ORDER[1:]
        ]
        lines.append(f"| {seed_role(seed)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def statistics_table(study: dict, split: str) -> str:
    lines = ["| run | mean | min | max | spread | mean % of A | min % of A | spread of % of A |", "|---|" + "---|" * 7]
    for run in ORDER:
        accuracy, of_a = study["statistics"][split][run]["accuracy"], study["statistics"][split][run]["of_a"]
        lines.append(
            f"| {run} | {percent(accuracy['mean'])} | {percent(accuracy['min'])} | {percent(accuracy['max'])} | "
            f"{percent(accuracy['spread'])} | {100 * of_a['mean']:.0f}% | {100 * of_a['min']:.0f}% | "
            f"{100 * of_a['spread']:.0f} |"
        )
    return "\n".join(lines)


def paper_table(study: dict, split: str) -> str:
    """Rows: the runs; columns: the question kinds (the paper's benchmarks), overall and % of A; means over seeds."""
    header = ["run", *QUESTION_KINDS, "overall", "% of A"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in ORDER:
        statistics = study["statistics"][split][run]
        kinds = [percent(study["by_kind"][split][run][kind]) for kind in QUESTION_KINDS]
        lines.append(
            f"| {run} | " + " | ".join(kinds) + f" | **{percent(statistics['accuracy']['mean'])}** | "
            f"{100 * statistics['of_a']['mean']:.0f}% |"
        )
    return "\n".join(lines)


def captions_table(study: dict, seeds, split: str) -> str:
    """Per seed, the share of stage-1 captions with all four attributes right, before any SFT."""
    labels = list(study["captions_before_sft"][seeds[0]])
    lines = ["| seed | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for seed in seeds:
        cells = study["captions_before_sft"][seed]
        captions = " | ".join(percent(cells[label][split]["exact"]) for label in labels)
        lines.append(f"| {seed_role(seed)} | {captions} |")
    return "\n".join(lines)


def diagnosis_table(study: dict, seeds) -> str:
    """Per seed, B's transfer beside the measures of transfer_diagnosis (validation images), and their correlation."""
    header = [
        "seed",
        "B % of A",
        "E1 ~ E2 agreement",
        "colour named",
        "shape named",
        "count named",
        "effective tokens",
        "coefficient norm",
        "token scale LLM-1 / LLM-2",
        "word-list captions LLM-1 / LLM-2",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for seed in seeds:
        m = study["diagnosis"].get(seed)
        if not m:
            continue
        lines.append(
            f"| {seed_role(seed)} | {100 * study['per_seed']['test'][seed]['B']['of_a']:.0f}% | "
            f"{m['similarity_agreement']:.2f} | {percent(m['readable_colour'])} | "
            f"{percent(m['readable_shape'])} | {percent(m['readable_count'])} | "
            f"{m['effective_tokens']:.1f} of {m['shared_tokens']} | {m['norm']:.2f} | "
            f"{m['token_scale_llm1']:.2f} / {m['token_scale_llm2']:.2f} | "
            f"{percent(m['word_list_captions_llm1'])} / {percent(m['word_list_captions_llm2'])} |"
        )
    relations = study.get("diagnosis_vs_b") or {}
    if relations:
        cells = [f"{r:+.2f}" if r is not None else "-" for r in (relations.get(k) for k in DIAGNOSED)]
        pairs = cells[:6] + [f"{cells[6]} / {cells[7]}", f"{cells[8]} / {cells[9]}"]
        lines.append("| r with B % of A | | " + " | ".join(pairs) + " |")
    return "\n".join(lines)


def summary_markdown(summary: dict) -> str:
    seeds = summary["seeds"]
    parts = [
        f"# LangBridge demo study: {len(seeds)} seeds ({', '.join(map(str, seeds))}), "
        f"{' and '.join(summary['activations'])} coefficients\n",
        "Every seed's figures, test split unless said, with the paper's stage 1 (the demo's default stage 1 is the "
        f"remedy chosen on seeds {', '.join(map(str, VALIDATION_SEEDS))}: `langbridge demo --remedies`, remedies.md). "
        "Each (seed, activation) has its own report in `seed-N/<activation>/report.md`.\n",
        f"Decisions (the activation, which remedies to try and which to make the demo's default) were "
        f"made on seeds {', '.join(map(str, VALIDATION_SEEDS))} and their validation split only; the other seeds and "
        "the test split report.\n",
        "![study](study.png)\n",
    ]
    for activation, study in summary["activations"].items():
        checks = study["checks"]["test"]
        parts += [
            f"## Coefficients: {coefficient_words(activation)}\n",
            f"B reaches at least 95% of A in {len(checks['B_at_least_95_percent_of_A'])} of {len(seeds)} seeds "
            f"({', '.join(map(str, checks['B_at_least_95_percent_of_A'])) or 'none'}); both controls stay below A in "
            f"{len(checks['controls_below_A'])} of {len(seeds)} ({', '.join(map(str, checks['controls_below_A'])) or 'none'}).\n",
            "Overall accuracy (%) per seed, % of A in brackets:\n",
            seed_table(study, seeds, "test") + "\n",
            "Across seeds:\n",
            statistics_table(study, "test") + "\n",
            "Means over seeds, per question kind (the paper's layout):\n",
            paper_table(study, "test") + "\n",
            "Stage-1 captions before any SFT, all four attributes right (%):\n",
            captions_table(study, seeds, "test") + "\n",
            "Validation split, overall (%) per seed:\n",
            seed_table(study, seeds, "validation") + "\n",
            "Why B transfers or not (`transfer_diagnosis.py`, 60 validation images): how alike LLM-1's and LLM-2's "
            "embeddings of the shared tokens are (correlation of their token-to-token cosines), how often B's "
            "coefficients on LLM-1 give the true colour, shape and count word the largest weight among its "
            "alternatives (chance: 25%, 33%, 33%), how many tokens the coefficients spread over, their norm, how large "
            "the visual tokens are against each LLM's own words, and the ideal transfer: stage-1 captions (all four "
            "attributes right) when every visual token is exactly the embedding of its patch's word in the scene "
            "table, what coefficients that named the scene's words would give on either LLM:\n",
            diagnosis_table(study, seeds) + "\n",
        ]
    return "\n".join(parts)
