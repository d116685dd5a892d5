"""Scoring VQA-style data by generation: VQA accuracy and exact match, overall and per category.

Data is JSONL, a record per question: `{"image": path, "question": str, "answers": [str, ...], "kind": str}`
(`kind` optional, `answers` may be one answer or VQA's ten). Answers are normalised as the official VQA
evaluation does (case, punctuation, articles, number words to digits) before they are compared.
"""

import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from ..errors import LangBridgeUsageError
from ..files import refuse_overwrite, write_text_atomic
from ..model.processing_langbridge import open_image

NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
ARTICLES = {"a", "an", "the"}
PUNCTUATION = re.compile(r"[;/\[\]\"{}()=+\\_\-><@`,?!*#%^&$|~:']")


def normalize_answer(text: str) -> str:
    """VQA's answer normalisation: lower case, punctuation and articles out, number words as digits."""
    text = text.lower().replace("\n", " ").replace("\t", " ").strip()
    text = PUNCTUATION.sub("", text)
    text = re.sub(r"(?<!\d)\.(?!\d)", "", text)  # a full stop, not a decimal point
    words = [NUMBER_WORDS.get(word, word) for word in text.split() if word not in ARTICLES]
    return " ".join(words)


def vqa_accuracy(prediction: str, answers: list[str]) -> float:
    """The official VQA accuracy: min(1, matching humans / 3), averaged over leaving each human answer out.
    With a single reference answer it is exact match."""
    prediction = normalize_answer(prediction)
    answers = [normalize_answer(a) for a in answers]
    if len(answers) == 1:
        return float(prediction == answers[0])
    scores = []
    for left_out in range(len(answers)):
        others = answers[:left_out] + answers[left_out + 1 :]
        scores.append(min(1.0, sum(a == prediction for a in others) / 3))
    return sum(scores) / len(scores)


def exact_match(prediction: str, answers: list[str]) -> float:
    """1 when the normalised prediction equals any normalised reference answer."""
    return float(normalize_answer(prediction) in {normalize_answer(a) for a in answers})


@dataclass
class Scores:
    vqa_accuracy: float = 0.0
    exact_match: float = 0.0
    count: int = 0


@dataclass
class EvalResult:
    overall: Scores
    by_kind: dict[str, Scores]
    predictions: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        as_dict = lambda s: {"vqa_accuracy": s.vqa_accuracy, "exact_match": s.exact_match, "count": s.count}  # noqa: E731
        return {"overall": as_dict(self.overall), "by_kind": {k: as_dict(v) for k, v in self.by_kind.items()}}

    def table(self) -> str:
        """The scores as a Markdown table, a row per category and one overall."""
        rows = (
            [*self.by_kind.items(), ("overall", self.overall)] if len(self.by_kind) > 1 else [("overall", self.overall)]
        )
        lines = ["| category | questions | VQA accuracy | exact match |", "|---|---|---|---|"]
        lines += [
            f"| {name} | {s.count} | {100 * s.vqa_accuracy:.1f} | {100 * s.exact_match:.1f} |" for name, s in rows
        ]
        return "\n".join(lines)

    def save(self, prefix: str | Path, overwrite: bool = False) -> list[Path]:
        """`{prefix}_predictions.jsonl` (every question with its prediction and scores) and `{prefix}_scores.json`,
        each written whole; existing files are kept unless `overwrite`."""
        predictions, scores = output_paths(prefix)
        for path in (predictions, scores):
            refuse_overwrite(path, overwrite)
        lines = "".join(
            json.dumps({k: v for k, v in p.items() if not k.startswith("_")}, ensure_ascii=False) + "\n"
            for p in self.predictions
        )
        write_text_atomic(predictions, lines, overwrite)
        write_text_atomic(scores, json.dumps(self.to_dict(), indent=1), overwrite)
        return [predictions, scores]


def output_paths(prefix: str | Path) -> tuple[Path, Path]:
    """The files `EvalResult.save(prefix)` writes."""
    prefix = Path(prefix)
    return prefix.with_name(prefix.name + "_predictions.jsonl"), prefix.with_name(prefix.name + "_scores.json")


def read_questions(path: str | Path) -> list[dict]:
    """The JSONL questions; each record remembers its line as `_source` (`file:line`), for errors about it."""
    path = Path(path)
    records = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise LangBridgeUsageError(
            f"{path} is not UTF-8 text ({error}); give a JSONL file, a record per line."
        ) from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise LangBridgeUsageError(
                f"{path}:{number} is not valid JSON ({error.msg} at column {error.colno}); "
                "each line must be one JSON record."
            ) from None
        if not isinstance(record, dict):
            raise LangBridgeUsageError(
                f"{path}:{number} is a JSON {type(record).__name__}, not a record with image, question and answers."
            )
        missing = {"image", "question", "answers"} - set(record)
        if missing:
            raise LangBridgeUsageError(
                f"{path}:{number} lacks {sorted(missing)}; each line needs image, question and answers."
            )
        if isinstance(record["answers"], str):
            record["answers"] = [record["answers"]]
        record["_source"] = f"{path}:{number}"
        records.append(record)
    if not records:
        raise LangBridgeUsageError(f"{path} holds no questions; give a JSONL file with a record per line.")
    return records


def prompt_for(processor, question: str, instruction: str | None) -> str:
    text = f"{question}\n{instruction}" if instruction else question
    return processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}], add_generation_prompt=True
    )


def greedy_answers(
    model,
    processor,
    images: list[Image.Image],
    questions: list[str],
    instruction: str | None = None,
    max_new_tokens: int = 16,
) -> list[str]:
    """The model's greedy reply to each question about its image, as one left-padded batch."""
    processor.tokenizer.padding_side = "left"
    texts = [prompt_for(processor, question, instruction) for question in questions]
    inputs = processor(images=images, text=texts, return_tensors="pt", padding=True).to(model.device)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    answers = processor.tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    return [answer.strip() for answer in answers]


def answer_one(model, processor, image: Image.Image, question: str, max_new_tokens: int = 32) -> str:
    """The model's greedy reply to one question about one image."""
    return greedy_answers(model, processor, [image], [question], max_new_tokens=max_new_tokens)[0]


def evaluate(
    model,
    processor,
    records: list[dict],
    image_root: str | Path | None = None,
    batch_size: int = 16,
    max_new_tokens: int = 16,
    instruction: str | None = None,
    progress: bool = True,
) -> EvalResult:
    """Greedy answers to every question, scored per kind and overall."""
    root = Path(image_root) if image_root else None
    model.eval()
    predictions = []
    for start in tqdm(range(0, len(records), batch_size), desc="Answering", unit=" batches", disable=not progress):
        batch = records[start : start + batch_size]
        images = [
            open_image(
                root / r["image"] if root else r["image"],
                f"{root / r['image'] if root else r['image']} (from {r.get('_source', 'a record')})",
            )
            for r in batch
        ]
        answers = greedy_answers(model, processor, images, [r["question"] for r in batch], instruction, max_new_tokens)
        for record, answer in zip(batch, answers):
            predictions.append(
                {
                    **record,
                    "prediction": answer,
                    "vqa_accuracy": vqa_accuracy(answer, record["answers"]),
                    "exact_match": exact_match(answer, record["answers"]),
                }
            )
    return summarize(predictions)


def summarize(predictions: list[dict]) -> EvalResult:
    grouped = defaultdict(list)
    for p in predictions:
        grouped[p.get("kind", "all")].append(p)

    def scores(items):
        n = len(items)
        return (
            Scores(sum(p["vqa_accuracy"] for p in items) / n, sum(p["exact_match"] for p in items) / n, n)
            if n
            else Scores()
        )

    return EvalResult(
        scores(predictions), {kind: scores(items) for kind, items in sorted(grouped.items())}, predictions
    )
