"""Training data: LLaVA JSON files and `datasets` datasets, as chat messages plus lazily loaded images.

Every sample becomes `{"messages": [...], "images": [refs]}`: messages in the chat format (content items
`{"type": "image"}` / `{"type": "text", "text": ...}`), refs are image paths or `{"bytes", "path"}` dicts, opened
only when a batch needs them. Before training, `fit_to_length` measures every sample without opening an
image (each image is a known number of tokens) and drops, with counts, those a truncation would cut inside
an image or leave with nothing to learn.
"""

import io
import json
import multiprocessing
from dataclasses import asdict, dataclass, field
from pathlib import Path

from datasets import Dataset, Sequence, load_dataset, load_from_disk
from datasets import Image as ImageFeature
from datasets.exceptions import DatasetGenerationError
from PIL import Image

from modeling_langbridge.assembly.corpus import iter_json_array
from modeling_langbridge.errors import LangBridgeUsageError
from modeling_langbridge.files import require_source
from modeling_langbridge.model.processing_langbridge import open_image

IMAGE = "<image>"
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def content_items(text: str) -> list[dict]:
    """`"<image>\\nWhat is it?"` -> `[{"type": "image"}, {"type": "text", "text": "What is it?"}]`."""
    items = []
    for n, piece in enumerate(text.split(IMAGE)):
        if n:
            items.append({"type": "image", "text": None})
        piece = piece.strip("\n")
        if piece.strip():
            items.append({"type": "text", "text": piece})
    return items


def llava_record_to_sample(record: dict, image_folder: str | Path | None, where: str = "a record") -> dict:
    """One record of LLaVA's JSON (`blip_laion_cc_sbu_558k.json`, `llava_v1_5_mix665k.json`); `where` names it in
    errors (file and record number)."""
    if not isinstance(record, dict) or not isinstance(record.get("conversations"), list):
        raise LangBridgeUsageError(
            f'{where} has no "conversations" list; LLaVA records look like {{"image": ..., "conversations": '
            '[{"from": "human", "value": ...}, {"from": "gpt", "value": ...}]}.'
        )
    images = record.get("image") or []
    images = [images] if isinstance(images, str) else images
    if not isinstance(images, list) or not all(isinstance(name, str) and name for name in images):
        raise LangBridgeUsageError(
            f'{where} has an "image" of {json.dumps(record.get("image"), default=str)[:80]}; give an image path (text), a list of '
            "paths, or leave it out for a text-only sample."
        )
    folder = Path(image_folder) if image_folder else None
    messages = []
    for turn in record["conversations"]:
        role = turn.get("from") if isinstance(turn, dict) else None
        if role not in ROLES or not isinstance(turn.get("value"), str):
            raise LangBridgeUsageError(
                f'{where} has a turn {str(turn)[:80]!r} whose "from" is not one of {sorted(ROLES)} (or whose '
                '"value" is not text); fix the record or rename the role.'
            )
        messages.append({"role": ROLES[role], "content": content_items(turn["value"])})
    return {"messages": messages, "images": [str(folder / name) if folder else name for name in images]}


def iter_json_lines(path: str | Path):
    """(line number, record) of a JSON Lines file, blank lines skipped; a line that is not JSON is named."""
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as error:
                raise LangBridgeUsageError(
                    f"{path}: line {number} is not JSON ({error.msg}); a .jsonl file holds one LLaVA record per line."
                ) from None


def load_llava_json(path: str | Path, image_folder: str | Path | None = None) -> Dataset:
    """A LLaVA JSON file (an array of records), or a JSON Lines file of them (`.jsonl`, one per line), as an
    Arrow-backed dataset (built by streaming the file, memory-mapped afterwards)."""
    path = Path(path)

    if not path.is_file():
        raise LangBridgeUsageError(f"{path} does not exist; give the LLaVA JSON file to train on (dataset: ...).")

    # `datasets` caches what the generator made under a hash of the generator and its defaults: the file's size,
    # time and inode are among them, so a file edited in place is read again, never served from an older cache.
    stat = path.stat()

    def samples(
        path=str(path),
        image_folder=str(image_folder) if image_folder else None,
        version=(stat.st_size, stat.st_mtime_ns, stat.st_ino),
    ):
        if path.endswith(".jsonl"):
            records = ((record, f"{path}: line {number}") for number, record in iter_json_lines(path))
        else:
            records = ((record, f"{path}: record {number}") for number, record in enumerate(iter_json_array(path)))
        count = 0
        for record, where in records:
            count += 1
            yield llava_record_to_sample(record, image_folder, where=where)
        if not count:
            raise LangBridgeUsageError(
                f"{path} holds no records; give at least one LLaVA record "
                '({"image": ..., "conversations": [{"from": "human", "value": ...}, {"from": "gpt", "value": ...}]}).'
            )

    try:
        return Dataset.from_generator(samples)
    except DatasetGenerationError as error:
        cause = error.__cause__ or error.__context__
        if isinstance(cause, UnicodeError):
            raise LangBridgeUsageError(f"{path} is not UTF-8 text ({cause}); save it as UTF-8.") from error
        if isinstance(cause, ValueError):
            raise LangBridgeUsageError(" ".join(str(cause).split())) from error
        raise


def load_messages_dataset(name_or_path: str, split: str = "train", config_name: str | None = None) -> Dataset:
    """A `datasets` dataset with `messages` and `images` (or `image`) columns, images left undecoded."""
    expected = "a `datasets` folder or Hub name whose rows have `messages` and `images` (or `image`)"
    try:
        if (Path(name_or_path) / "dataset_info.json").exists():  # a folder written by `Dataset.save_to_disk`
            dataset = load_from_disk(name_or_path)
        elif (Path(name_or_path) / "dataset_dict.json").exists():  # `DatasetDict.save_to_disk`: its split
            saved = load_from_disk(name_or_path)
            if split not in saved:
                raise LangBridgeUsageError(
                    f"dataset {name_or_path} has no split {split!r} (dataset_split); it has {sorted(saved)}."
                )
            dataset = saved[split]
        else:
            dataset = load_dataset(name_or_path, config_name, split=split)
    except LangBridgeUsageError:
        raise
    except (FileNotFoundError, ConnectionError, ValueError) as error:  # what `datasets` raises for what it cannot read
        problem = " ".join(str(error).split())
        raise LangBridgeUsageError(
            f"cannot read dataset {name_or_path} (split {split!r}): {problem}; give {expected}, or a LLaVA JSON "
            "(.json) or JSON Lines (.jsonl) file."
        ) from error
    if "image" in dataset.column_names and "images" not in dataset.column_names:
        dataset = dataset.map(
            lambda row: {"images": [row["image"]] if row["image"] is not None else []}, remove_columns=["image"]
        )
    missing = {"messages", "images"} - set(dataset.column_names)
    if missing:
        raise LangBridgeUsageError(
            f"dataset {name_or_path} has no {sorted(missing)} column(s) (it has {dataset.column_names}); give {expected}."
        )
    feature = dataset.features["images"]
    if isinstance(feature, (list, Sequence)) or hasattr(feature, "feature"):
        dataset = dataset.cast_column("images", [ImageFeature(decode=False)])
    return dataset


def load_training_data(
    dataset: str, image_folder: str | None = None, split: str = "train", config_name: str | None = None
) -> Dataset:
    """LLaVA JSON when `dataset` is a .json (or .jsonl) file, otherwise a `datasets` name or folder."""
    if str(dataset).endswith((".json", ".jsonl")):
        return load_llava_json(dataset, image_folder)
    require_source(dataset, "dataset")
    if Path(dataset).expanduser().is_file():
        raise LangBridgeUsageError(
            f"dataset {dataset} is a file of a kind the recipes do not read; give a LLaVA JSON (.json) or JSON Lines "
            "(.jsonl) file, or a `datasets` folder or Hub name with `messages` and `images`."
        )
    return load_messages_dataset(dataset, split=split, config_name=config_name)


@dataclass
class DataReport:
    """What happened to the data, for the end-of-training summary."""

    samples: int = 0
    kept: int = 0
    dropped_cut_image: int = 0
    dropped_no_target: int = 0
    dropped_image_mismatch: int = 0
    skipped_bad_images: int = 0
    bad_image_examples: list[str] = field(default_factory=list)
    packed_rows: int | None = None  # packing: the rows of at most max_length tokens the kept samples were packed into

    def summary(self) -> str:
        packed = f"; packed into {self.packed_rows} rows" if self.packed_rows is not None else ""
        return (
            f"{self.kept} of {self.samples} samples trained on; dropped before training: {self.dropped_cut_image} "
            f"whose truncation would cut an image, {self.dropped_no_target} with no trainable token left, "
            f"{self.dropped_image_mismatch} whose <image> count differs from their images; skipped while training: "
            f"{self.skipped_bad_images} with a missing or unreadable image"
            + (f" (e.g. {self.bad_image_examples[0]})" if self.bad_image_examples else "")
            + packed
        )

    def to_dict(self) -> dict:
        return asdict(self)


def render_plain(messages: list[dict], num_images: int) -> tuple[str, str]:
    """LLaVA's stage-1 'plain' format (`conv_llava_plain`): the images, then the first assistant reply and a
    newline; only the reply is learned, and no chat token is involved."""
    reply = next((m for m in messages if m["role"] == "assistant"), None)
    if reply is None:
        return IMAGE * num_images, ""
    content = reply["content"]
    text = content if isinstance(content, str) else "".join(i["text"] for i in content if i["type"] == "text")
    return IMAGE * num_images, text.strip() + "\n"


def count_image_items(messages: list[dict]) -> int:
    return sum(
        message["content"].count(IMAGE)
        if isinstance(message["content"], str)
        else sum(item["type"] == "image" for item in message["content"])
        for message in messages
    )


def stored_image_size(ref) -> tuple[int, int] | None:
    """(height, width) of an image path or `{"bytes", "path"}` ref, read from the file's header without decoding the
    pixels; None when it cannot be read (the image loader then skips and counts the sample)."""
    try:
        source = ref
        if isinstance(ref, dict):
            source = io.BytesIO(ref["bytes"]) if ref.get("bytes") else ref.get("path")
        with Image.open(source) as image:
            width, height = image.size
        return height, width
    except (OSError, ValueError, SyntaxError, TypeError):
        return None


def fit_to_length(
    dataset: Dataset,
    processor,
    image_seq_length: int,
    max_length: int | None,
    mode: str,
    report: DataReport,
    source: str = "the dataset",
) -> Dataset:
    """Keep the samples that fit: truncation may shorten text after the images, never cut into one, and every
    kept sample has at least one token to learn. Counts what it drops in `report`.

    An image is `image_seq_length` tokens; with a tiling processor its count depends on its size, read from the
    file's header (`stored_image_size`), still without decoding it."""
    tokenizer = processor.tokenizer
    image_token_id = processor.image_token_id
    tiling = getattr(processor, "tiling", False)

    def measure(sample, row):
        check_sample(sample, f"{source}: row {row}")
        messages, num_images = sample["messages"], len(sample["images"])
        if count_image_items(messages) != num_images and mode == "chat":
            return {"verdict": "image_mismatch", "length": 0}
        widths = [image_seq_length] * num_images
        if tiling:
            sizes = [stored_image_size(ref) for ref in sample["images"]]
            if None in sizes:  # unreadable: the image loader skips and counts it when a batch meets it
                return {"verdict": "keep", "length": max_length or 1}
            widths = [processor.num_image_tokens(*size) for size in sizes]
        if mode == "plain":
            prompt, target = render_plain(messages, num_images)
            if not target.strip():  # an empty caption: only LLaVA's closing newline would be learned
                return {"verdict": "no_target", "length": 0}
            ids = tokenizer(prompt + target)["input_ids"]
            prompt_length = len(tokenizer(prompt)["input_ids"])
            trainable = [0] * prompt_length + [1] * (len(ids) - prompt_length)
        else:
            out = tokenizer.apply_chat_template(
                _as_chat(messages),
                chat_template=processor.chat_template,
                tokenize=True,
                return_dict=True,
                return_assistant_tokens_mask=True,
            )
            ids, trainable = out["input_ids"], out["assistant_masks"]
        # Expand each <image> to its tokens, tracking where images end and which positions are learned.
        length, image_end, learned, images_seen = 0, 0, [], 0
        for token, learn in zip(ids, trainable):
            width = 1
            if token == image_token_id:
                width = widths[images_seen] if images_seen < len(widths) else image_seq_length
                images_seen += 1
                image_end = length + width
            if learn and token != image_token_id:
                learned.append(length)
            length += width
        limit = length if max_length is None else min(length, max_length)
        if image_end > limit:
            return {"verdict": "cut_image", "length": limit}
        if not any(0 < position < limit for position in learned):  # position 0 is never predicted
            return {"verdict": "no_target", "length": limit}
        return {"verdict": "keep", "length": limit}  # the tokens it trains as (after truncation), images included

    measured = dataset.map(
        measure, with_indices=True, remove_columns=dataset.column_names, desc="Measuring samples"
    ).to_dict()
    verdicts, lengths = measured["verdict"], measured["length"]
    report.samples = len(verdicts)
    report.dropped_cut_image = verdicts.count("cut_image")
    report.dropped_no_target = verdicts.count("no_target")
    report.dropped_image_mismatch = verdicts.count("image_mismatch")
    keep = [n for n, verdict in enumerate(verdicts) if verdict == "keep"]
    report.kept = len(keep)
    if not keep:
        raise LangBridgeUsageError(
            f"No sample is left to train on: {report.summary()}. Raise max_length or check the data ({source})."
        )
    kept = dataset.select(keep)
    if "length" in kept.column_names:
        kept = kept.remove_columns("length")
    return kept.add_column("length", [lengths[n] for n in keep])


def check_sample(sample: dict, where: str) -> None:
    """A training sample's shape: `messages` a list of {"role", "content"} turns (content text, or a list of
    {"type": "text"|"image"} items) and `images` a list; refused naming the sample and what is expected."""
    messages, images = sample.get("messages"), sample.get("images")
    expected = (
        'give `messages` as a list of {"role": "user"|"assistant"|"system", "content": text or a list of '
        '{"type": "text"|"image", ...} items}, and `images` as a list'
    )
    problem = None
    if not isinstance(messages, list):
        problem = f"`messages` is {str(messages)[:60]!r}"
    elif not isinstance(images, list):
        problem = f"`images` is {str(images)[:60]!r}"
    else:
        for turn in messages:
            content = turn.get("content") if isinstance(turn, dict) else None
            items_ok = isinstance(content, str) or (
                isinstance(content, list)
                and all(isinstance(item, dict) and item.get("type") in ("text", "image") for item in content)
            )
            if not isinstance(turn, dict) or turn.get("role") not in ("user", "assistant", "system") or not items_ok:
                problem = f"a turn is {str(turn)[:80]!r}"
                break
    if problem is not None:
        raise LangBridgeUsageError(f"{where}: {problem}; {expected}.")


def _as_chat(messages: list[dict]) -> list[dict]:
    """Arrow stores text items' missing fields as None; the chat template expects plain dicts."""
    return [
        {
            "role": m["role"],
            "content": m["content"]
            if isinstance(m["content"], str)
            else [{k: v for k, v in item.items() if v is not None} for item in m["content"]],
        }
        for m in messages
    ]


class ImageLoader:
    """The `with_transform` of a training dataset: opens a sample's images only when a batch needs it. A packed
    dataset's items are rows of samples (`rows`): an item's `messages` and `images` are then one list per sample.

    A missing or unreadable image either raises (`skip_bad_images=False`) or is counted and its sample replaced
    by the next one whose images read, so a long run is not lost to one bad file. The count is of samples: a bad
    sample met again (another epoch, a replacement search, another dataloader worker) is skipped without being
    read or counted again.
    """

    def __init__(self, dataset: Dataset, skip_bad_images: bool = True, report: DataReport | None = None):
        self.dataset = dataset  # the untransformed rows, to fetch replacements from
        self.skip_bad_images = skip_bad_images
        self.report = report or DataReport()
        self._bad = multiprocessing.Array("b", len(dataset))  # a flag per sample, shared with dataloader workers
        self.lengths: list[int] | None = None  # tokens of each item the trainer draws (a sample, or a packed row)

    def __getstate__(self) -> dict:
        """The shared flags travel only to processes being started (dataloader workers); any other pickling, such as
        `datasets` hashing the transform for the dataset's fingerprint, sees the settings and the rows without them
        (a shared array cannot be pickled there, and datasets would warn and use a random hash)."""
        state = dict(self.__dict__)
        if multiprocessing.context.get_spawning_popen() is None:
            state["_bad"] = None
        return state

    def __call__(self, batch: dict) -> dict:
        out = {"messages": [], "images": []}
        if "rows" in batch:  # packed: each item a row of samples
            for rows in batch["rows"]:
                samples = [self._readable(position) for position in rows]
                out["messages"].append([messages for messages, _ in samples])
                out["images"].append([images for _, images in samples])
            return out
        for position in batch["row"]:
            messages, images = self._readable(position)
            out["messages"].append(messages)
            out["images"].append(images)
        return out

    def _readable(self, position: int) -> tuple[list, list]:
        for attempt in range(len(self.dataset)):
            row = (position + attempt) % len(self.dataset)
            if self._bad[row]:
                continue
            sample = self.dataset[row]
            try:
                return _as_chat(sample["messages"]), [open_image(ref) for ref in sample["images"]]
            except (OSError, ValueError, SyntaxError) as error:
                where = _describe(sample["images"])
                if not self.skip_bad_images:
                    raise LangBridgeUsageError(
                        f"Cannot read an image of sample {sample['row']} ({where}): {error} Fix or remove it, or set "
                        "skip_bad_images: true to skip such samples and count them."
                    ) from error
                with self._bad.get_lock():
                    self._bad[row] = 1
                if len(self.report.bad_image_examples) < 5 and where not in self.report.bad_image_examples:
                    self.report.bad_image_examples.append(where)
        raise LangBridgeUsageError(f"No sample has readable images ({self.skipped} samples tried); check image_folder.")

    @property
    def skipped(self) -> int:
        """How many samples had an image that could not be read (each counted once)."""
        with self._bad.get_lock():
            return bytes(self._bad.get_obj()).count(1)


def with_lazy_images(
    dataset: Dataset,
    skip_bad_images: bool = True,
    report: DataReport | None = None,
    rows: list[list[int]] | None = None,
) -> tuple[Dataset, ImageLoader]:
    """The dataset as training sees it (messages and opened images), and the loader that counts bad images. With
    `rows` (packing: lists of sample indices), an item is a row of samples. The loader knows each item's tokens
    (`lengths`) when `fit_to_length` measured them."""
    dataset = dataset.add_column("row", list(range(len(dataset))))
    loader = ImageLoader(dataset, skip_bad_images, report)
    lengths = list(dataset["length"]) if "length" in dataset.column_names else None
    if rows is None:
        loader.lengths = lengths
        return dataset.with_transform(loader), loader
    loader.lengths = [sum(lengths[n] for n in row) for row in rows] if lengths is not None else None
    return Dataset.from_dict({"rows": rows}).with_transform(loader), loader


def _describe(refs) -> str:
    return ", ".join((ref.get("path") or "<image bytes>") if isinstance(ref, dict) else str(ref) for ref in refs)


def prepare_training_data(
    script_args, processor, image_seq_length: int, max_length: int | None, mode: str, packing=None
):
    """The recipes' data step: load, cap, fit to `max_length`, pack (`packing` in mode `packed`: whole samples into
    rows of at most `max_length` tokens, best fit decreasing), open images lazily.

    Returns `(dataset, image_loader, report)`: the dataset the trainer iterates, the loader that counts bad
    images, and the report of what was dropped.
    """
    report = DataReport()
    dataset = load_training_data(
        script_args.dataset, script_args.image_folder, script_args.dataset_split, script_args.dataset_config
    )
    if script_args.max_samples:
        dataset = dataset.select(range(min(script_args.max_samples, len(dataset))))
    dataset = fit_to_length(dataset, processor, image_seq_length, max_length, mode, report, script_args.dataset)
    rows = None
    if packing is not None and packing.mode == "packed":
        from .packing import best_fit_decreasing

        rows = best_fit_decreasing(list(dataset["length"]), max_length)
        report.packed_rows = len(rows)
    dataset, loader = with_lazy_images(dataset, script_args.skip_bad_images, report, rows)
    return dataset, loader, report
