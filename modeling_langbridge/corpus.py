"""Texts for counting token frequencies, streamed one at a time so a 558k-caption corpus never sits in memory.

Reads plain text (a text per line), JSONL, JSON arrays (LLaVA's `blip_laion_cc_sbu_558k.json` layout is
parsed record by record), and `datasets` columns (streamed).
"""

import json
from collections.abc import Iterator
from pathlib import Path

IMAGE_PLACEHOLDER = "<image>"


def texts_of_record(record: dict, text_field: str | None = None) -> Iterator[str]:
    """The texts in one record: a named field, LLaVA `conversations`, chat `messages`, or `text`/`caption`."""
    if text_field is not None:
        if text_field not in record:
            raise ValueError(f"A record has no {text_field!r} field (it has {sorted(record)}); pick another --text-field.")
        values = record[text_field]
        yield from (values if isinstance(values, list) else [values])
    elif "conversations" in record:  # LLaVA: [{"from": "human", "value": "<image>\n..."}, {"from": "gpt", ...}]
        for turn in record["conversations"]:
            yield turn["value"].replace(IMAGE_PLACEHOLDER, "").strip()
    elif "messages" in record:
        for message in record["messages"]:
            content = message["content"]
            if isinstance(content, str):
                yield content
            else:
                yield from (item["text"] for item in content if item.get("type") == "text")
    else:
        for key in ("text", "caption"):
            if key in record:
                yield record[key]
                return
        raise ValueError(f"Cannot tell which field of a record is text (fields: {sorted(record)}); pass --text-field.")


def iter_json_array(path: str | Path, chunk_size: int = 1 << 18) -> Iterator:
    """The elements of a top-level JSON array, parsed incrementally."""
    decoder = json.JSONDecoder()
    with open(path, encoding="utf-8") as file:
        buffer, position, at_end = "", 0, False

        def refill():
            nonlocal buffer, position, at_end
            more = file.read(chunk_size)
            at_end = not more
            buffer, position = buffer[position:] + more, 0

        refill()
        position = _skip(buffer, 0, " \t\r\n")
        if buffer[position : position + 1] != "[":
            raise ValueError(f"{path} is not a JSON array (LLaVA JSON files start with '[').")
        position += 1
        while True:
            position = _skip(buffer, position, " \t\r\n,")
            if position == len(buffer):
                if at_end:
                    raise ValueError(f"{path} ends inside its JSON array: the file is truncated.")
                refill()
                continue
            if buffer[position] == "]":
                return
            try:
                element, end = decoder.raw_decode(buffer, position)
            except json.JSONDecodeError as error:
                if at_end:
                    raise ValueError(f"{path} is not valid JSON near character {error.pos}: {error.msg}") from error
                refill()
                continue
            if end == len(buffer) and not at_end:  # a number may go on in the next chunk
                refill()
                continue
            yield element
            position = end


def _skip(text: str, position: int, characters: str) -> int:
    while position < len(text) and text[position] in characters:
        position += 1
    return position


def iter_corpus(paths: list[str | Path], text_field: str | None = None) -> Iterator[str]:
    """Every non-empty text in the files, in order; the format is taken from each file's suffix."""
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"Corpus file {path} does not exist.")
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            with open(path, encoding="utf-8") as file:
                records = (json.loads(line) for line in file if line.strip())
                yield from _nonempty(t for record in records for t in texts_of_record(record, text_field))
        elif suffix == ".json":
            yield from _nonempty(t for record in iter_json_array(path) for t in texts_of_record(record, text_field))
        else:
            with open(path, encoding="utf-8") as file:
                yield from _nonempty(line.rstrip("\n") for line in file)


def iter_dataset_column(name_or_path: str, column: str, split: str = "train") -> Iterator[str]:
    """A `datasets` column, streamed (no full download or Arrow cache of the corpus)."""
    from datasets import load_dataset

    for row in load_dataset(name_or_path, split=split, streaming=True):
        value = row[column]
        yield from _nonempty(value if isinstance(value, list) else [value])


def _nonempty(texts) -> Iterator[str]:
    return (text for text in texts if text and text.strip())
