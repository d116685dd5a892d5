"""`langbridge demo --study`: the demo over several seeds and both coefficient activations, summarised.

Each seed is one demo output folder (`seed-N/`), whose stages both activations share where they can (the world,
the encoder, the LLMs, LLaVA's runs); each activation's results and report go to `seed-N/<activation>/`. A finished
(seed, activation) is reused, so the study can be stopped and resumed. The summary gives every seed's figures, the
mean, minimum and spread per run, a plot with one point per seed, and the table in the paper's layout.
"""

import json
import time
from dataclasses import asdict
from pathlib import Path

from .console import Console
from .report import ORDER, coefficient_words, percent
from .world import QUESTION_KINDS

ACTIVATIONS = ("none", "softmax")
DEFAULT_SEEDS = (0, 1, 2, 3, 4)


def finished(report_dir: Path, settings) -> dict | None:
    """The results of a finished (seed, activation), if they were made with these settings."""
    path = report_dir / "results.json"
    if not path.exists():
        return None
    results = json.loads(path.read_text())
    return results if results.get("settings") == asdict(settings) else None


def run_study(out: str | Path = "langbridge-study", seeds=DEFAULT_SEEDS, activations=ACTIVATIONS,
              quick: bool = False) -> Path:
    """Run (or reuse) the demo for every seed and activation, then write summary.md, summary.json and study.png."""
    from .demo import DemoSettings
    from .demo import main as run_demo

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    console = Console(out / "study.log")
    plan = [(seed, activation) for seed in seeds for activation in activations]
    spent, ran = 0.0, 0
    try:
        for number, (seed, activation) in enumerate(plan, start=1):
            settings = (DemoSettings.quick if quick else DemoSettings)(seed=seed, coefficient_activation=activation)
            report_dir = out / f"seed-{seed}" / activation
            if finished(report_dir, settings):
                console.say(f"[study] {number}/{len(plan)} seed {seed}, {activation}: cached")
                continue
            left = len(plan) - number + 1
            estimate = f", about {spent / ran * left / 60:.0f} min left" if ran else ""
            console.say(f"[study] {number}/{len(plan)} seed {seed}, {activation}{estimate}")
            start = time.time()
            run_demo(out / f"seed-{seed}", quick=quick, seed=seed, coefficient_activation=activation, report_dir=report_dir)
            spent, ran = spent + time.time() - start, ran + 1
    finally:
        console.close()
    results = {(seed, activation): json.loads((out / f"seed-{seed}" / activation / "results.json").read_text())
               for seed, activation in plan}
    summary = summarise(results, seeds, activations)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    plot_study(summary, out / "study.png")
    (out / "summary.md").write_text(summary_markdown(summary))
    console.say(f"[study] {len(plan)} runs summarised: open {out / 'summary.md'}")
    return out


def overall(results: dict, run: str, split: str) -> float:
    return results["runs"][run]["scores"][split]["overall"]["vqa_accuracy"]


def spread(values: list[float]) -> dict:
    mean = sum(values) / len(values)
    return {"mean": mean, "min": min(values), "max": max(values), "spread": max(values) - min(values),
            "std": (sum((v - mean) ** 2 for v in values) / max(1, len(values) - 1)) ** 0.5}


def summarise(results: dict, seeds, activations) -> dict:
    """Per activation: every seed's overall accuracy and % of A per run and split, their statistics, the mean per
    question kind (the paper's layout), the stage-1 captions before SFT, and the two checks the demo argues by."""
    summary = {"seeds": list(seeds), "activations": {}}
    for activation in activations:
        per_seed, statistics, kinds, checks = {}, {}, {}, {}
        for split in ("validation", "test"):
            rows = {seed: {run: {"accuracy": overall(results[seed, activation], run, split),
                                 "of_a": overall(results[seed, activation], run, split)
                                 / max(overall(results[seed, activation], "A", split), 1e-9)} for run in ORDER}
                    for seed in seeds}
            per_seed[split] = rows
            statistics[split] = {run: {measure: spread([rows[seed][run][measure] for seed in seeds])
                                       for measure in ("accuracy", "of_a")} for run in ORDER}
            kinds[split] = {run: {kind: sum(results[seed, activation]["runs"][run]["scores"][split]["by_kind"][kind]["vqa_accuracy"]
                                            for seed in seeds) / len(seeds) for kind in QUESTION_KINDS} for run in ORDER}
            checks[split] = {
                "B_at_least_95_percent_of_A": [seed for seed in seeds if rows[seed]["B"]["of_a"] >= 0.95],
                "controls_below_A": [seed for seed in seeds
                                     if all(rows[seed][d]["of_a"] < 1 for d in ("D-llava", "D-langbridge"))],
            }
        captions = {seed: {label: {split: accuracy for split, accuracy in splits.items()}
                           for label, splits in results[seed, activation]["captions_before_sft"].items()}
                    for seed in seeds}
        summary["activations"][activation] = {"per_seed": per_seed, "statistics": statistics, "by_kind": kinds,
                                              "checks": checks, "captions_before_sft": captions}
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
                panel.scatter(x + 0.08 * (n - (len(summary["seeds"]) - 1) / 2), 100 * rows[seed][run]["of_a"],
                              color=colours(n % 10), s=22, zorder=3, label=f"seed {seed}" if x == 0 else None)
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
        cells = [percent(row["A"]["accuracy"])] + [f"{percent(row[r]['accuracy'])} ({100 * row[r]['of_a']:.0f}%)" for r in ORDER[1:]]
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def statistics_table(study: dict, split: str) -> str:
    lines = ["| run | mean | min | max | spread | mean % of A | min % of A | spread of % of A |", "|---|" + "---|" * 7]
    for run in ORDER:
        accuracy, of_a = study["statistics"][split][run]["accuracy"], study["statistics"][split][run]["of_a"]
        lines.append(f"| {run} | {percent(accuracy['mean'])} | {percent(accuracy['min'])} | {percent(accuracy['max'])} | "
                     f"{percent(accuracy['spread'])} | {100 * of_a['mean']:.0f}% | {100 * of_a['min']:.0f}% | "
                     f"{100 * of_a['spread']:.0f} |")
    return "\n".join(lines)


def paper_table(study: dict, split: str) -> str:
    """Rows: the runs; columns: the question kinds (the paper's benchmarks), overall and % of A; means over seeds."""
    header = ["run", *QUESTION_KINDS, "overall", "% of A"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in ORDER:
        statistics = study["statistics"][split][run]
        kinds = [percent(study["by_kind"][split][run][kind]) for kind in QUESTION_KINDS]
        lines.append(f"| {run} | " + " | ".join(kinds) + f" | **{percent(statistics['accuracy']['mean'])}** | "
                     f"{100 * statistics['of_a']['mean']:.0f}% |")
    return "\n".join(lines)


def captions_table(study: dict, seeds, split: str) -> str:
    """Per seed, the share of stage-1 captions with all four attributes right, before any SFT."""
    labels = list(study["captions_before_sft"][seeds[0]])
    lines = ["| seed | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for seed in seeds:
        cells = study["captions_before_sft"][seed]
        lines.append(f"| {seed} | " + " | ".join(percent(cells[label][split]["exact"]) for label in labels) + " |")
    return "\n".join(lines)


def summary_markdown(summary: dict) -> str:
    seeds = summary["seeds"]
    parts = [f"# LangBridge demo study: {len(seeds)} seeds ({', '.join(map(str, seeds))}), "
             f"{' and '.join(summary['activations'])} coefficients\n",
             "Every seed's figures, test split unless said. Each (seed, activation) has its own report in "
             "`seed-N/<activation>/report.md`.\n", "![study](study.png)\n"]
    for activation, study in summary["activations"].items():
        checks = study["checks"]["test"]
        parts += [
            f"## Coefficients: {coefficient_words(activation)}\n",
            f"B reaches at least 95% of A in {len(checks['B_at_least_95_percent_of_A'])} of {len(seeds)} seeds "
            f"({', '.join(map(str, checks['B_at_least_95_percent_of_A'])) or 'none'}); both controls stay below A in "
            f"{len(checks['controls_below_A'])} of {len(seeds)} ({', '.join(map(str, checks['controls_below_A'])) or 'none'}).\n",
            "Overall accuracy (%) per seed, % of A in brackets:\n", seed_table(study, seeds, "test") + "\n",
            "Across seeds:\n", statistics_table(study, "test") + "\n",
            "Means over seeds, per question kind (the paper's layout):\n", paper_table(study, "test") + "\n",
            "Stage-1 captions before any SFT, all four attributes right (%):\n",
            captions_table(study, seeds, "test") + "\n",
            "Validation split, overall (%) per seed:\n", seed_table(study, seeds, "validation") + "\n",
        ]
    return "\n".join(parts)
