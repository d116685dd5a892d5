"""`langbridge demo --quick` end to end: the report's structure (not its numbers), the stage cache, and the
analysis commands (`interpret`, `alignment`, `eval`) on the models the demo trained."""

import io
import json
import re
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from langbridge_training.demo.study import REMEDIES
from langbridge_training.demo.world import QUESTION_KINDS
from modeling_langbridge.cli import main

# Every test here reads a quick demo run (about 40 s) or runs the study: the full suite's, not the fast loop's.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    console = io.StringIO()  # what a person running it sees: stdout and stderr
    with redirect_stdout(console), redirect_stderr(console):
        assert main(["demo", "--quick", "--out", str(out), "--seed", "3"]) == 0
    (out.parent / "console.txt").write_text(console.getvalue())
    return out


def test_the_console_tells_the_story_and_the_log_the_details(demo):
    printed = (demo.parent / "console.txt").read_text()
    lines = printed.splitlines()
    assert len(lines) < 60, printed
    assert lines[0].startswith(f"[demo] writing to {demo}/") and "demo.log" in lines[0]
    stages = [line for line in lines if re.match(r"\[demo\] \S+ +\d+ s$", line)]
    assert len(stages) == 34, printed  # 33 stages (7 of them B with the paper's stage 1) and the report
    assert "{'loss'" not in printed and "Warning" not in printed and "Writing model shards" not in printed
    assert lines[-1].startswith("[demo] done in") and "report.md" in lines[-1]
    log = (demo / "demo.log").read_text()
    assert "'loss':" in log and "--- sft/A ---" in log  # the Trainer's logs, by stage


def test_quick_demo_writes_a_complete_report_and_reuses_its_stages(demo, capsys):
    out = demo

    results = json.loads((out / "results.json").read_text())
    assert results["seed"] == 3 and results["quick"]
    assert set(results["runs"]) == {"A", "B", "C", "D-llava", "D-langbridge"}
    for run in results["runs"].values():
        for split in ("validation", "test"):
            scores = run["scores"][split]
            assert set(scores["by_kind"]) == set(QUESTION_KINDS)
            assert 0.0 <= scores["overall"]["vqa_accuracy"] <= 1.0 and scores["overall"]["count"] > 0
    assert results["transfer"]["coverage"] > 0 and results["vocabulary"]["size"] == min(
        results["settings"]["shared_vocab_size"], results["vocabulary"]["shared_and_seen"]
    )
    assert set(results["losses"]["pretrain"]) == {"A", "B", "C"} and len(results["losses"]["sft"]) == 5
    markers = list(out.rglob(".done.json"))
    assert len(markers) == 33 and not [m for m in markers if str(out) in m.read_text()]  # a moved folder resumes
    # The default stage 1 is the study's remedy; B also runs with the paper's, under the stage names of that setting.
    remedy = "softmax-lr0.005-words1"
    assert results["langbridge_label"] == remedy and results["runs"]["B"]["path"].endswith(f"sft/B-{remedy}")
    paper = results["paper_stage1"]
    assert paper["path"].endswith("sft/B-none") and paper["settings"]["caption_word_loss"] == 0
    assert list(paper["captions_before_sft"]) == ["B on LLM-1", "B on LLM-2 (transferred)"]
    assert 0 <= paper["scores"]["test"]["overall"]["vqa_accuracy"] <= 1 and len(paper["losses"]["pretrain"]) > 1

    report = (out / "report.md").read_text()
    assert "LangBridge's stage 1 is the demo's default, the study's remedy, because with the paper's stage 1" in report
    assert "The row **B (paper's stage 1)** is B as the paper trains it" in report
    assert (
        "LangBridge's stage 1 (B, C) also trains with caption-word loss 1, stage-1 lr 0.005, which the paper's"
        in report
    )
    for section in (
        "## Test accuracy (%)",
        "## The parts",
        "## Validation accuracy (%)",
        "## Training curves",
        "Seed 3 (a report seed of the study: seeds 0, 1, 2 chose the demo's defaults; the test split decided "
        "nothing) (quick settings)",
        "![training curves](curves.png)",
        "![token overlay](overlay.png)",
        "![alignment](alignment/softmax-lr0.005-words1/alignment.png)",
        "## Transfer before SFT: stage-1 captions (%)",
        "![nearest words, LLaVA](overlay_llava.png)",
    ):
        assert section in report, section
    section = report.split("## Test accuracy (%)")[1].split("\n## ")[0]
    table = [line for line in section.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + 6 and "% of A" in table[0] and "| A | " in table[1] and "100%" in table[1]
    assert table[2].startswith("| B | LangBridge, pretrained with LLM-1, transferred to LLM-2 (stage 1 with caption-")
    assert table[3].startswith("| B (paper's stage 1) | LangBridge with the paper's stage 1 (caption loss only, raw-")
    for picture in ("curves.png", "overlay.png", "overlay_llava.png", f"alignment/{remedy}/alignment.png"):
        with Image.open(out / picture) as image:
            assert image.width > 300 and image.height > 200
    for run in [*results["runs"].values(), paper]:
        assert (out / "scores" / Path(run["path"]).name / "test_predictions.jsonl").exists()
    for variant in (remedy, "none"):
        assert (out / "pretrain" / f"B-{variant}" / "adapter" / "langbridge_adapter.json").exists()
    # The curves compare stage 1 on the caption loss alone: a remedy's run logs the sum it trains on, less its terms.
    from langbridge_training.demo.report import caption_losses

    logged = json.loads((out / "pretrain" / f"B-{remedy}" / "trainer_state.json").read_text())["log_history"]
    terms = {e["step"]: (e["loss"], e["caption_word_loss"]) for e in logged if "loss" in e}
    read = caption_losses(out / "pretrain" / f"B-{remedy}", results["settings"])
    assert [step for step, _ in read] == list(terms) == [step for step, _ in results["losses"]["pretrain"]["B"]]
    assert all(0 < caption == pytest.approx(terms[step][0] - terms[step][1]) for step, caption in read)
    assert (out / "world" / "train_conversations.json").exists() and (out / "world" / "train_conversations_hf").is_dir()
    assert set(results["alignment"]) == {"A: LLaVA MLP", "C: LangBridge", "plot", "chance"}
    assert 0 < results["alignment"]["chance"] < 1 and "random directions in LLM-2's" in report
    assert [p["step"] for p in results["alignment"]["A: LLaVA MLP"]] == [0, 20, 40]
    before_sft = results["captions_before_sft"]  # the transfer measure: stage-1 captions, no SFT
    assert list(before_sft) == ["A on LLM-2", "B on LLM-1", "B on LLM-2 (transferred)", "C on LLM-2"]
    for splits in before_sft.values():
        assert splits["test"]["images"] == results["settings"]["test_scenes"]
        assert set(splits["test"]) == {"count", "colour", "shape", "column", "exact", "images"}
        assert (
            0 <= splits["test"]["exact"] <= min(splits["test"][k] for k in ("count", "colour", "shape", "column")) <= 1
        )
    captions = report.split("## Transfer before SFT")[1].split("\n## ")[0]
    assert sum(line.startswith("| B on LLM-") for line in captions.splitlines()) == 2
    assert sum(line.startswith("| B (paper's stage 1) on LLM-") for line in captions.splitlines()) == 2

    # A second run finds every stage done, keeps the times they were measured in, and only rewrites the report.
    times = report.split("Stage times (s, each as measured when the stage ran): ")[1].split(". ")[0]
    assert re.search(
        rf"Seed 3 \(a report seed [^)]*\) \(quick settings\); LangBridge coefficients: softmax [^;]*; stage 1 of B and C: \+ caption-word loss 1, stage-1 lr 0.005; "
        rf"{results['seconds']:.0f} s on this "
        "machine",
        report,
    )
    assert main(["demo", "--quick", "--out", str(out), "--seed", "3"]) == 0
    second = capsys.readouterr().out
    assert second.count(" cached (") == 33 and "s when it ran)" in second
    rerun = json.loads((out / "results.json").read_text())
    assert rerun["runs"] == results["runs"] and rerun["stage_seconds"] == results["stage_seconds"]
    assert rerun["seconds"] == results["seconds"] and len(rerun["cached_stages"]) == 33
    again = (out / "report.md").read_text()
    assert (
        times in again and f"; {results['seconds']:.0f} s on this machine" in again and "this rerun reused 33" in again
    )


def test_interpret_reads_the_projectors_own_coefficients(demo, tmp_path, capsys):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model_dir = demo / "sft" / "B-softmax-lr0.005-words1"
    image_path = sorted((demo / "world" / "images").glob("test_*.png"))[0]
    overlay, readout = tmp_path / "overlay.png", tmp_path / "reading.json"
    assert (
        main(
            [
                "interpret",
                str(image_path),
                "--model",
                str(model_dir),
                "--top-k",
                "3",
                "--out",
                str(overlay),
                "--json",
                str(readout),
                "--prompt",
                "How many shapes are there?",
            ]
        )
        == 0
    )
    reading = json.loads(readout.read_text())
    assert reading["grid"] == [3, 3] and reading["method"] == "coefficients" and isinstance(reading["answer"], str)
    assert all(len(tokens) == 3 for tokens in reading["tokens"])
    assert f"Q: How many shapes are there?\nA: {reading['answer']}\n" in capsys.readouterr().out
    with Image.open(overlay) as picture:  # image and token panels of 3 x 120 px each, the title and legend above
        assert picture.width >= 2 * 3 * 120 and picture.height >= 3 * 120 + 60

    # The same coefficients, computed here from the weights in float64, not through the package.
    model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    pixels = processor.image_processor(Image.open(image_path).convert("RGB"), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        hidden = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states[
            model.config.vision_feature_layer
        ]
        features = hidden[0, 1:].double()  # CLIP: the CLS token is dropped
        projector = model.model.multi_modal_projector
        layer = lambda linear, x: x @ linear.weight.double().T + linear.bias.double()  # noqa: E731
        logits = layer(projector.vocab_proj, layer(projector.linear_2, F.gelu(layer(projector.linear_1, features))))
        coefficients = logits.softmax(-1) if model.config.coefficient_activation == "softmax" else logits
    weights, ids = coefficients.topk(3, dim=-1)
    assert reading["token_ids"] == ids.tolist()
    assert torch.allclose(torch.tensor(reading["weights"], dtype=torch.float64), weights, rtol=1e-4, atol=1e-5)
    vocabulary = json.loads((demo / "vocabulary" / "shared_vocabulary.json").read_text())["tokens"]
    assert reading["tokens"] == [[vocabulary[i] for i in row] for row in ids.tolist()]


def test_alignment_plots_the_llava_runs_checkpoints(demo, tmp_path):
    plot = tmp_path / "alignment.png"
    world = demo / "world"
    images = [str(p) for p in sorted((world / "images").glob("test_*.png"))[:6]]
    assert (
        main(
            [
                "alignment",
                "--checkpoints",
                str(demo / "pretrain" / "A"),
                "--images",
                *images,
                "--captions",
                str(world / "test_captions.json"),
                "--out",
                str(plot),
            ]
        )
        == 0
    )
    points = json.loads(plot.with_suffix(".json").read_text())
    assert [p["step"] for p in points] == [20, 40, 40]  # two checkpoints, then the finished run
    assert all(
        0 < p["mean_top1_cosine"] <= 1 and 0 <= p["grounded_share"] <= 1 and p["patches"] == 6 * 9 for p in points
    )
    with Image.open(plot) as picture:
        assert picture.width > 500


def test_eval_writes_predictions_and_scores_them(demo, tmp_path):
    """Reference answers built around the model's own first answers, so every score is known beforehand."""
    world = demo / "world"
    questions = [json.loads(line) for line in (world / "test_questions.jsonl").read_text().splitlines()[:4]]
    first = tmp_path / "first.jsonl"
    first.write_text("".join(json.dumps(q) + "\n" for q in questions))
    model = str(demo / "sft" / "A")
    assert (
        main(
            [
                "eval",
                "--model",
                model,
                "--data",
                str(first),
                "--image-folder",
                str(world / "images"),
                "--max-new-tokens",
                "4",
            ]
        )
        == 0
    )
    said = [json.loads(line)["prediction"] for line in (tmp_path / "first_predictions.jsonl").read_text().splitlines()]

    other = "zzz"
    cases = [
        ([said[0]] * 10, 1.0),  # ten annotators agree with the model
        ([said[1]] * 2 + [other] * 8, 0.6),  # two of ten: VQA gives 0.6, not 0.2
        ([other] * 10, 0.0),
        ([f"The {said[3].upper()}!"], 1.0),  # one reference, normalised: case, article, punctuation
    ]
    known = tmp_path / "known.jsonl"
    known.write_text(
        "".join(
            json.dumps({**q, "answers": answers, "kind": "hand"}) + "\n" for q, (answers, _) in zip(questions, cases)
        )
    )
    assert (
        main(
            [
                "eval",
                "--model",
                model,
                "--data",
                str(known),
                "--image-folder",
                str(world / "images"),
                "--max-new-tokens",
                "4",
                "--out",
                str(tmp_path / "scored"),
            ]
        )
        == 0
    )
    scores = json.loads((tmp_path / "scored_scores.json").read_text())
    assert scores["overall"]["vqa_accuracy"] == pytest.approx(sum(score for _, score in cases) / 4)
    assert scores["by_kind"]["hand"]["count"] == 4
    predictions = [json.loads(line) for line in (tmp_path / "scored_predictions.jsonl").read_text().splitlines()]
    assert [p["vqa_accuracy"] for p in predictions] == pytest.approx([score for _, score in cases])


def test_eval_names_the_folder_it_looked_in_for_a_missing_image(demo, tmp_path, capsys):
    """The demo's questions file without --image-folder: images are looked for beside it, and are not there."""
    questions = tmp_path / "test_questions.jsonl"
    questions.write_text((demo / "world" / "test_questions.jsonl").read_text())
    assert main(["eval", "--model", str(demo / "sft" / "C-softmax-lr0.005-words1"), "--data", str(questions)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("langbridge eval: error: ") and len(error.splitlines()) == 1
    assert f"not in {tmp_path} (the folder of --data, as no --image-folder was given)" in error
    assert "test_000000.png" in error and "--image-folder" in error


def test_the_study_caches_each_run_and_summarises_every_seed(demo, tmp_path, capsys, kernel_requests):
    import shutil

    study = tmp_path / "study"
    shutil.copytree(demo, study / "seed-3")  # the fixture's quick seed-3 run: the study reuses its stages
    # --use-kernels where the default (offline) is none: every model the study loads asks for them (recorded, not
    # fetched); a setting of how models load, it redoes none of seed 3's stages.
    command = ["demo", "--study", "--quick", "--seeds", "3", "4", "--out", str(study), "--use-kernels"]
    assert main(command) == 0
    printed = capsys.readouterr().out
    assert "[study] 1/4 seed-3/none" in printed and "[study] 4/4 seed-4/softmax, about" in printed
    seed_3 = printed.split("[study] 1/4 seed-3/none")[1].split("[study] 2/4")[0]
    # The folder holds the demo's default run (the remedy), and it says so; that run's row for the paper's stage 1
    # serves B of the plain raw-logit run, which trains only its C, its LangBridge control and their alignment.
    assert "seed-3 holds a run with other settings: its stages are redone where they differ" in seed_3
    assert seed_3.count(" cached (") == 19
    assert re.search(r"pretrain/B-none +cached", seed_3) and re.search(r"pretrain/C-none +\d+ s", seed_3)
    loaded = {name for name, _ in kernel_requests}
    assert {"LangBridgeForConditionalGeneration", "LlavaForConditionalGeneration"} <= loaded
    assert {"Qwen2ForCausalLM", "LlamaForCausalLM"} <= loaded  # the LLMs' text training and reading check
    assert all(asked for _, asked in kernel_requests), kernel_requests
    assert "[study] 4 runs summarised" in printed
    summary = json.loads((study / "summary.json").read_text())
    assert summary["seeds"] == [3, 4] and set(summary["activations"]) == {"none", "softmax"}
    for activation, part in summary["activations"].items():
        settings = json.loads((study / "seed-4" / activation / "results.json").read_text())["settings"]
        assert settings["coefficient_activation"] == activation and settings["seed"] == 4
        for split in ("validation", "test"):
            assert set(part["per_seed"][split]) == {"3", "4"}
            for seed in ("3", "4"):
                assert set(part["per_seed"][split][seed]) == {"A", "B", "C", "D-llava", "D-langbridge"}
                assert part["per_seed"][split][seed]["A"]["of_a"] == 1
            statistics = part["statistics"][split]["B"]["accuracy"]
            assert statistics["min"] <= statistics["mean"] <= statistics["max"]
            assert statistics["spread"] == pytest.approx(statistics["max"] - statistics["min"])
        assert {"similarity_agreement", "readable_colour", "effective_tokens"} <= set(part["diagnosis"]["4"])
        assert (study / "seed-4" / activation / "diagnosis.json").exists()
        assert set(part["captions_before_sft"]["4"]) == {
            "A on LLM-2",
            "B on LLM-1",
            "B on LLM-2 (transferred)",
            "C on LLM-2",
        }
    # LLaVA's runs do not depend on LangBridge's activation: both activations share them, trained once.
    for activation in ("none", "softmax"):
        results = json.loads((study / "seed-4" / activation / "results.json").read_text())
        runs = results["runs"]
        assert runs["A"]["path"].endswith("sft/A") and runs["B"]["path"].endswith(f"sft/B-{activation}")
        assert results["paper_stage1"] is None  # the study's plain runs are the paper's stage 1 themselves
    text = (study / "summary.md").read_text()
    assert text.count("Why B transfers or not") == 2
    assert text.count("## Coefficients: ") == 2 and text.count("\n| 3 (report) | ") == 8
    assert text.count("\n| 4 (report) | ") == 8 and "| 0 (decision) |" not in text
    with Image.open(study / "study.png") as image:
        assert image.width > 500
    for seed in (3, 4):
        for activation in ("none", "softmax"):
            assert (study / f"seed-{seed}" / activation / "report.md").exists()

    # Resumed: every (seed, activation) is found finished, nothing is trained again.
    finished = (study / "seed-4" / "softmax" / "results.json").stat().st_mtime
    assert main(command) == 0
    assert capsys.readouterr().out.count(": cached") == 4
    assert (study / "seed-4" / "softmax" / "results.json").stat().st_mtime == finished

    # Remedies run beside the plain activations, which are reused; a stage-1 remedy retrains only runs with a stage 1.
    assert main(["demo", "--remedies", "--quick", "--seeds", "4", "--out", str(study)]) == 0
    printed = capsys.readouterr().out
    assert printed.count(": cached") == 2 and "seed-4/softmax-lr0.005" in printed
    runs = json.loads((study / "seed-4" / "softmax-lr0.005" / "results.json").read_text())["runs"]
    assert runs["B"]["path"].endswith("sft/B-softmax-lr0.005")
    assert runs["D-langbridge"]["path"].endswith("sft/D-langbridge-softmax")
    remedies = json.loads((study / "remedies-seeds-4.json").read_text())
    assert set(remedies["variants"]) == {"none", "softmax", *REMEDIES}
    assert remedies["variants"]["none"]["4"]["validation"]["B"] == pytest.approx(
        summary["activations"]["none"]["per_seed"]["validation"]["4"]["B"]["of_a"]
    )
    assert (study / "remedies-seeds-4.md").read_text().count("\n| ") == 1 + 2 + len(
        REMEDIES
    )  # header, a row per variant
    # A report names every setting that differs from the paper's recipe, at its top and in the rows of the runs it
    # changes; the plain run's names only the raw-logit coefficients.
    words = (study / "seed-4" / "none-words0.1" / "report.md").read_text()
    assert "stage 1 of B and C: + caption-word loss 0.1" in words
    assert "LangBridge's stage 1 (B, C) also trains with caption-word loss 0.1" in words
    assert words.count("(stage 1 with caption-word loss 0.1) |") == 4  # B and C, in the test and validation tables
    assert words.count("\n| B (paper's stage 1) | ") == 2  # beside it, B as the paper trains it, in both tables
    spread = (study / "seed-4" / "none-words0.1-spread1" / "report.md").read_text()
    assert spread.count("(stage 1 with caption-word loss 0.1, coefficient-spread loss 1) |") == 4
    plain = (study / "seed-4" / "none" / "report.md").read_text()
    assert "Differs from the paper's recipe: coefficients are raw logits" in plain and "(stage 1 with" not in plain
    assert "B (paper's stage 1)" not in plain and "is the demo's default" not in plain
