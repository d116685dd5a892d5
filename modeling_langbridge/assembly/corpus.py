"""Texts for counting token frequencies, streamed one at a time so a 558k-caption corpus never sits in memory.

Reads plain text (a text per line), JSONL, JSON arrays (LLaVA's `blip_laion_cc_sbu_558k.json` layout is
parsed record by record), and `datasets` columns (streamed).
"""

import json
from collections.abc import Iterator
from pathlib import Path

from ..errors import LangBridgeUsageError

IMAGE_PLACEHOLDER = "<image>"


def texts_of_record(record: dict, text_field: str | None = None) -> Iterator[str]:
    """The texts in one record: a named field, LLaVA `conversations`, chat `messages`, or `text`/`caption`."""
    if text_field is not None:
        if text_field not in record:
            raise LangBridgeUsageError(
                f"A record has no {text_field!r} field (it has {sorted(record)}); pick another --text-field."
            )
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
        raise LangBridgeUsageError(
            f"Cannot tell which field of a record is text (fields: {sorted(record)}); pass --text-field."
        )


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
            raise LangBridgeUsageError(f"{path} is not a JSON array (LLaVA JSON files start with '[').")
        position += 1
        while True:
            position = _skip(buffer, position, " \t\r\n,")
            if position == len(buffer):
                if at_end:
                    raise LangBridgeUsageError(f"{path} ends inside its JSON array: the file is truncated.")
                refill()
                continue
            if buffer[position] == "]":
                return
            try:
                element, end = decoder.raw_decode(buffer, position)
            except json.JSONDecodeError as error:
                if at_end:
                    raise LangBridgeUsageError(
                        f"{path} is not valid JSON near character {error.pos}: {error.msg}"
                    ) from error
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
    """Every non-empty text in the files, in order; the format is taken from each file's suffix. A file that is
    not UTF-8 text, or a record that cannot be read, is refused with the file and line (or record) number."""
    for path in map(Path, paths):
        if not path.is_file():
            raise LangBridgeUsageError(f"Corpus file {path} does not exist; give existing .txt, .jsonl or .json files.")
        yield from _iter_file(path, text_field)


def _iter_file(path: Path, text_field: str | None) -> Iterator[str]:
    suffix, number = path.suffix.lower(), 0
    try:
        if suffix == ".json":
            for number, record in enumerate(iter_json_array(path)):
                yield from _nonempty(_texts(record, text_field, f"{path}: record {number}"))
            return
        with open(path, encoding="utf-8") as file:
            for number, line in enumerate(file, start=1):
                if "\x00" in line:
                    raise UnicodeDecodeError("utf-8", b"\x00", 0, 1, "a NUL byte: binary data")
                if suffix == ".jsonl":
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as error:
                        raise LangBridgeUsageError(
                            f"{path}:{number} is not valid JSON ({error.msg} at column {error.colno}); each line of a "
                            ".jsonl corpus must be one JSON record."
                        ) from None
                    yield from _nonempty(_texts(record, text_field, f"{path}:{number}"))
                else:
                    yield from _nonempty([line.rstrip("\n")])
    except UnicodeDecodeError as error:
        where = f"{path}:{number + 1}" if suffix != ".json" else str(path)
        raise LangBridgeUsageError(
            f"{where} is not UTF-8 text ({error.reason}); the corpus must be text (.txt a text per line, .jsonl, or "
            "LLaVA .json), not a binary file."
        ) from None


def _texts(record, text_field: str | None, where: str) -> list[str]:
    if not isinstance(record, dict):
        raise LangBridgeUsageError(f"{where} is a JSON {type(record).__name__}, not a record with text fields.")
    try:
        texts = list(texts_of_record(record, text_field))
    except (KeyError, TypeError, AttributeError) as error:
        raise LangBridgeUsageError(
            f"{where} is not a record this reader knows ({type(error).__name__}: {error}); "
            "pass --text-field naming its text."
        ) from None
    except ValueError as error:
        raise LangBridgeUsageError(f"{where}: {error}") from None
    bad = [t for t in texts if not isinstance(t, str)]
    if bad:
        raise LangBridgeUsageError(
            f"{where} has a non-text value {bad[0]!r} where text was expected; pass --text-field."
        )
    return texts


def iter_dataset_column(name_or_path: str, column: str, split: str = "train") -> Iterator[str]:
    """A `datasets` column, streamed (no full download or Arrow cache of the corpus)."""
    from datasets import load_dataset

    from ..errors import loading

    with loading("dataset", name_or_path):
        rows = iter(load_dataset(name_or_path, split=split, streaming=True))
    while True:
        with loading("dataset", name_or_path):  # streamed: reading goes on while the rows are counted
            row = next(rows, None)
        if row is None:
            return
        if column not in row:
            raise LangBridgeUsageError(
                f"The dataset {name_or_path} has no column {column!r} (it has {sorted(row)}); pass --column naming "
                "its text."
            )
        value = row[column]
        yield from _nonempty(value if isinstance(value, list) else [value])


def _nonempty(texts) -> Iterator[str]:
    return (text for text in texts if text and text.strip())
