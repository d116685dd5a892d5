"""Local lmms-eval tasks around a tiny composed LangBridge folder: CI's lmms-eval stage (`.ci/lmms-eval`) and
tests/test_lmms_eval.py.

    python tests/lmms_eval_stage.py prepare OUT
        OUT/model: a tiny LangBridge folder composed from locally built parts;
        OUT/vqa.jsonl + OUT/images: eight questions about images, for `langbridge eval`;
        OUT/tasks: three lmms-eval tasks over the same kind of items, all local files:
          langbridge_local_vqa_parquet   generate_until + exact_match, from a parquet file (images inside);
          langbridge_local_vqa_disk      the same items, from a `datasets` folder written by save_to_disk;
          langbridge_local_choice        multiple_choice + acc, from JSON lines with image files (utils.py opens them)
        OUT/expected.json: what the scores must be.
    python tests/lmms_eval_stage.py check OUT
        compares lmms-eval's results file (under OUT/lmms-eval) with `langbridge eval`'s scores and predictions
        (OUT/langbridge-eval/vqa_*) and with expected.json; prints each check, exits 1 on a mismatch.

How the gold answers are built, so that the scores say something about an untrained model:
- generation: the project's own `evaluate` answers every question first; half the items take its answer as gold,
  the other half an answer it did not give. `langbridge eval` must then score exact match 0.5, and lmms-eval on
  the same items must score the same, answer for answer.
- multiple choice: each item's gold is the choice with the lowest loss under the model's own forward pass (its
  `labels` loss over the answer tokens, computed here without the plugin or `HarnessRunner`), so a harness that
  picks the likeliest choice scores acc 1.0, and one that picks the least likely (the bug of issue 31) scores 0.
"""

import argparse
import json
import sys
from importlib.metadata import version
from pathlib import Path

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]
QUESTIONS = [
    "What colour is the square?",
    "How many shapes are there?",
    "Where is the red shape?",
    "Is there a blue square?",
]
ITEMS = 8
MAX_NEW_TOKENS = 4
NOT_SAID = "purple elephant"
GENERATION_TASKS = ["langbridge_local_vqa_parquet", "langbridge_local_vqa_disk"]
CHOICE_TASK = "langbridge_local_choice"
MUTUAL_INFO_TASK = "langbridge_local_choice_mutual_info"


def build_model(folder: Path) -> Path:
    """A tiny LangBridge folder: CLIP vision + Qwen2-style LLM, built locally. The LLM's head is untied from its
    embeddings, so the untrained model's greedy answers differ from question to question (a tied one repeats the
    prompt's last token, a newline, whatever it is asked)."""
    import torch

    from modeling_langbridge.assembly.compose import compose
    from modeling_langbridge.assembly.tiny import save_clip_vision, save_qwen2_style_llm

    vision = save_clip_vision(folder / "parts" / "clip", full_clip=True)
    llm = save_qwen2_style_llm(folder / "parts" / "qwen2", tie_word_embeddings=False)
    torch.manual_seed(0)
    return compose(str(vision), str(llm), projector_hidden_size=64, shared_vocab_size=128).save(folder / "model")


def choice_losses(model, processor, image, question: str, choices: list[str], delimiter: str = " ") -> list[float]:
    """The model's own loss (mean negative log-probability over the answer tokens, transformers' `labels` loss)
    of each choice after the chat prompt, as lmms-eval's `multiple_choice` asks for it (`delimiter` + choice).
    `image=None` with an empty question is the unconditional form `acc_mutual_info` adds."""
    import torch

    content = ([{"type": "image"}] if image is not None else []) + [{"type": "text", "text": question}]
    prompt = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    images = [image] if image is not None else None
    start = processor(text=[prompt], images=images, return_tensors="pt")["input_ids"].shape[1]
    losses = []
    for choice in choices:
        inputs = processor(text=[prompt + delimiter + choice], images=images, return_tensors="pt")
        labels = inputs["input_ids"].clone()
        labels[:, :start] = -100
        with torch.no_grad():
            losses.append(model(**inputs, labels=labels).loss.item())
    return losses


def write_yaml(path: Path, lines: list[str]) -> None:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


GENERATION_YAML = [
    "output_type: generate_until",
    "test_split: test",
    "doc_to_visual: image",
    "doc_to_text: question",
    "doc_to_target: answer",
    "generation_kwargs:",
    f"  max_new_tokens: {MAX_NEW_TOKENS}",
    "  do_sample: false",
    "  until: []",
    "metric_list:",
    "  - metric: exact_match",
    "    aggregation: mean",
    "    higher_is_better: true",
]

CHOICE_UTILS = '''"""Opens a record's image file, named relative to this folder."""

from pathlib import Path

from PIL import Image

HERE = Path(__file__).parent


def doc_to_visual(doc):
    return [Image.open(HERE / doc["image"]).convert("RGB")]
'''


def prepare(out: Path, mutual_info: bool = False) -> dict:
    """Model, images, `langbridge eval` data and the lmms-eval tasks in `out`; returns (and writes) expected.json.
    `mutual_info` adds a fourth task, the multiple-choice one scored with `acc_mutual_info` as well."""
    import torch
    from datasets import Dataset, DatasetDict, Features, Image, Value
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from modeling_langbridge.analysis.evaluation import evaluate, exact_match, read_questions
    from modeling_langbridge.assembly.tiny import random_shapes_image

    out = Path(out).resolve()  # the task files name their data by absolute path
    model_dir = build_model(out)
    tasks, data, images = out / "tasks", out / "tasks" / "data", out / "images"
    for folder in (data, images, tasks / "images"):
        folder.mkdir(parents=True, exist_ok=True)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, trust_remote_code=True, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=True)

    # Generation: the project's own answers first, then the gold built from them.
    records = []
    for i in range(ITEMS):
        random_shapes_image(i).save(images / f"{i}.png")
        records.append({"image": f"images/{i}.png", "question": QUESTIONS[i % len(QUESTIONS)], "answers": ["?"]})
    questions = out / "vqa.jsonl"
    questions.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    answered = evaluate(
        model,
        processor,
        read_questions(questions),
        out,
        batch_size=ITEMS,
        max_new_tokens=MAX_NEW_TOKENS,
        progress=False,
    )
    predictions = [p["prediction"] for p in answered.predictions]
    for i, (record, prediction) in enumerate(zip(records, predictions)):
        if exact_match(prediction, [NOT_SAID]):
            raise RuntimeError(f"the model answered {prediction!r}, too close to the 'not said' answer")
        record["answers"] = [prediction if i % 2 == 0 else NOT_SAID]
    questions.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")

    rows = {
        "image": [{"bytes": (out / r["image"]).read_bytes(), "path": r["image"]} for r in records],  # inside
        "question": [r["question"] for r in records],
        "answer": [r["answers"][0] for r in records],
    }
    features = Features({"image": Image(), "question": Value("string"), "answer": Value("string")})
    dataset = Dataset.from_dict(rows, features=features)
    dataset.to_parquet(str(data / "vqa.parquet"))
    DatasetDict({"test": dataset}).save_to_disk(str(data / "vqa_disk"))
    write_yaml(
        tasks / "vqa_parquet.yaml",
        [
            f"task: {GENERATION_TASKS[0]}",
            "dataset_path: parquet",
            "dataset_kwargs:",
            "  data_files:",
            f"    test: {data / 'vqa.parquet'}",
            *GENERATION_YAML,
        ],
    )
    write_yaml(
        tasks / "vqa_disk.yaml",
        [
            f"task: {GENERATION_TASKS[1]}",
            f"dataset_path: {data / 'vqa_disk'}",
            "dataset_kwargs:",
            "  load_from_disk: true",
            *GENERATION_YAML,
        ],
    )

    # Multiple choice: gold = the choice the model itself finds likeliest (lowest loss).
    choice_records, margins, unconditional = [], [], {}
    for i in range(ITEMS):
        image = random_shapes_image(100 + i)
        image.save(tasks / "images" / f"{i}.png")
        choices = [COLOURS[(i + k) % len(COLOURS)] for k in range(4)]
        losses = choice_losses(model, processor, image, "What colour is the largest shape?", choices)
        ranked = sorted(losses)
        margins.append(ranked[1] - ranked[0])
        choice_records.append(
            {
                "image": f"images/{i}.png",
                "question": "What colour is the largest shape?",
                "choices": choices,
                "answer": losses.index(ranked[0]),
                "losses": losses,
                "least_likely": losses.index(ranked[-1]),
            }
        )
        if mutual_info:
            for choice, loss in zip(choices, choice_losses(model, processor, None, "", choices, delimiter="")):
                unconditional[choice] = loss
    (data / "choice.jsonl").write_text("".join(json.dumps(r) + "\n" for r in choice_records), encoding="utf-8")
    (tasks / "utils.py").write_text(CHOICE_UTILS, encoding="utf-8")
    choice_yaml = [
        "dataset_path: json",
        "dataset_kwargs:",
        "  data_files:",
        f"    test: {data / 'choice.jsonl'}",
        "test_split: test",
        "output_type: multiple_choice",
        "doc_to_visual: !function utils.doc_to_visual",
        "doc_to_text: question",
        "doc_to_choice: choices",
        "doc_to_target: answer",
        "metric_list:",
        "  - metric: acc",
        "    aggregation: mean",
        "    higher_is_better: true",
    ]
    write_yaml(tasks / "choice.yaml", [f"task: {CHOICE_TASK}", *choice_yaml])
    expected = {
        "generation_exact_match": answered_score(records, predictions),
        "predictions": predictions,
        "choice_acc": 1.0,
        "choice_gold": [r["answer"] for r in choice_records],
        "choice_losses": [r["losses"] for r in choice_records],
        "smallest_margin": min(margins),
    }
    if mutual_info:
        write_yaml(
            tasks / "choice_mutual_info.yaml",
            [
                f"task: {MUTUAL_INFO_TASK}",
                *choice_yaml,
                "  - metric: acc_mutual_info",
                "    aggregation: mean",
                "    higher_is_better: true",
            ],
        )
        expected["unconditional_losses"] = unconditional
    (out / "expected.json").write_text(json.dumps(expected, indent=1), encoding="utf-8")
    return expected


def answered_score(records: list[dict], predictions: list[str]) -> float:
    """Exact match of the predictions against the gold as built (the same for either exact-match definition:
    a gold answer is either the prediction itself or one the model did not give)."""
    return sum(p == r["answers"][0] for r, p in zip(records, predictions)) / len(records)


def read_lmms_eval_output(folder: Path) -> tuple[dict, dict[str, list[dict]]]:
    """lmms-eval's results file (`<output_path>/<model>/<date>_results.json`) and its per-task samples. lmms-eval
    exits 0 even when the evaluation raised: the results file is the only sign that it finished."""
    found = sorted(Path(folder).rglob("*_results.json"))
    if len(found) != 1:
        raise SystemExit(f"FAIL: expected one lmms-eval results file under {folder}, found {len(found)}: {found}")
    samples = {}
    for path in found[0].parent.glob("*_samples_*.jsonl"):
        task = path.stem.split("_samples_", 1)[1]
        samples[task] = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return json.loads(found[0].read_text(encoding="utf-8")), samples


def check(out: Path) -> list[str]:
    """Every check of the stage; returns the lines it printed, raises SystemExit on the first failure."""
    out = Path(out)
    expected = json.loads((out / "expected.json").read_text(encoding="utf-8"))
    results, samples = read_lmms_eval_output(out / "lmms-eval")
    ours = json.loads((out / "langbridge-eval" / "vqa_scores.json").read_text(encoding="utf-8"))
    our_predictions = [
        json.loads(line)["prediction"]
        for line in (out / "langbridge-eval" / "vqa_predictions.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    lines = []

    def verify(ok: bool, message: str) -> None:
        lines.append(("ok    " if ok else "FAIL  ") + message)
        print(lines[-1], flush=True)
        if not ok:
            raise SystemExit(1)

    print(f"lmms-eval {version('lmms-eval')}: {len(results['results'])} tasks in its results file")
    verify(
        ours["overall"]["exact_match"] == expected["generation_exact_match"],
        f"langbridge eval: exact match {ours['overall']['exact_match']} "
        f"(expected {expected['generation_exact_match']} by construction)",
    )
    verify(
        our_predictions == expected["predictions"],
        "langbridge eval: the same answers as when the gold was built",
    )
    for task in GENERATION_TASKS:
        score = results["results"].get(task, {}).get("exact_match,none")
        verify(
            score == ours["overall"]["exact_match"],
            f"{task}: lmms-eval exact_match {score} == langbridge eval's {ours['overall']['exact_match']}",
        )
        answers = [s["filtered_resps"] for s in sorted(samples.get(task, []), key=lambda s: s["doc_id"])]
        answers = [a[0] if isinstance(a, list) else a for a in answers]
        verify(answers == our_predictions, f"{task}: lmms-eval's answers, item by item, are langbridge eval's")
    acc = results["results"].get(CHOICE_TASK, {}).get("acc,none")
    verify(
        acc == expected["choice_acc"],
        f"{CHOICE_TASK}: lmms-eval acc {acc} == 1.0 (gold = the model's likeliest choice, smallest margin "
        f"{expected['smallest_margin']:.4f} nats)",
    )
    scored = sorted(samples.get(CHOICE_TASK, []), key=lambda s: s["doc_id"])
    losses = [[float(r[0]) for r in s["filtered_resps"]] for s in scored]
    close = len(losses) == len(expected["choice_losses"]) and all(
        abs(a - b) < 1e-4 for row, want in zip(losses, expected["choice_losses"]) for a, b in zip(row, want)
    )
    verify(close, f"{CHOICE_TASK}: every choice's loss lmms-eval saw equals the model's own labels loss (1e-4)")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["prepare", "check"])
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    if args.step == "prepare":
        expected = prepare(args.out)
        print(
            f"prepared {args.out}: generation gold -> exact match {expected['generation_exact_match']}, "
            f"multiple-choice gold -> the likeliest choice (smallest margin {expected['smallest_margin']:.4f})"
        )
    else:
        check(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
