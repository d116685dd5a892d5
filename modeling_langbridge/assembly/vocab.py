"""Shared vocabularies: the token strings an adapter speaks, independent of any one tokenizer's ids.

Tokens are compared in a *normal form*: the bytes a token stands for, written as text when they are valid
UTF-8 and as `<0xNN>` escapes when not. Byte-level BPE's `Ġthe` and SentencePiece's `▁the` are both `" the"`;
byte-level `â` and SentencePiece's `<0xE2>` are both `"<0xE2>"`. Ids are per tokenizer: `map_onto` gives a
tokenizer's ids for the strings, composing a token it lacks from its own sub-tokens.
"""

import heapq
import json
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from itertools import chain
from pathlib import Path

from tqdm.auto import tqdm

from ..errors import LangBridgeUsageError, resource_error
from ..files import write_text_atomic

BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")
BYTE_ESCAPES = re.compile(r"(?:<0x[0-9A-F]{2}>)+")
FORMAT = "langbridge-shared-vocabulary"
# Official vocabulary files map tokens to ids; a token -> count frequency file looks the same. Its counts give it away:
# values beyond any tokenizer's size (the largest have about 260,000 tokens), or, without a tokenizer to compare with,
# values falling all the way through the file (tokens ranked by frequency do not have falling ids).
LARGEST_TOKENIZER = 2**21
FALLING_RUN = 8


@lru_cache(maxsize=1)
def byte_level_alphabet() -> dict[str, int]:
    """GPT-2's printable stand-in character for each byte (`Ġ` is the space byte), as char -> byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = {byte: chr(byte) for byte in printable}
    for extra, byte in enumerate(b for b in range(256) if b not in chars):
        chars[byte] = chr(256 + extra)
    return {char: byte for byte, char in chars.items()}


def is_byte_level(tokenizer) -> bool:
    """Whether the tokenizer spells tokens in byte-level BPE (GPT-2, Qwen, Llama-3) rather than with `▁`."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    spec = json.loads(backend.to_str())
    return "ByteLevel" in json.dumps([spec.get("pre_tokenizer"), spec.get("decoder")])


def token_bytes(token: str, byte_level: bool) -> bytes | None:
    """The bytes a token string of one tokenizer stands for (None if it is not spelled in that style)."""
    if match := BYTE_TOKEN.fullmatch(token):
        return bytes([int(match.group(1), 16)])
    if byte_level:
        alphabet = byte_level_alphabet()
        if any(char not in alphabet for char in token):
            return None
        return bytes(alphabet[char] for char in token)
    return token.replace("▁", " ").encode("utf-8")


def normal_form(data: bytes) -> str:
    """Bytes as comparable, readable text: the text itself, or `<0xNN>` escapes when not valid UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return "".join(f"<0x{byte:02X}>" for byte in data)


def normal_form_bytes(text: str) -> bytes:
    """Inverse of `normal_form`."""
    if BYTE_ESCAPES.fullmatch(text):
        return bytes(int(h, 16) for h in BYTE_TOKEN.findall(text))
    return text.encode("utf-8")


def is_word_like(text: str) -> bool:
    """Whole text with something visible in it: not a byte escape, not whitespace, no control character (byte-level
    BPE spells the bytes 0x00-0x1F and 0x7F as single tokens that decode to control characters such as `\\x00`)."""
    return (
        not BYTE_ESCAPES.fullmatch(text)
        and bool(text.strip())
        and not any(unicodedata.category(c) == "Cc" and not c.isspace() for c in text)
    )


def check_size(size, what: str = "shared vocabulary size") -> None:
    """A vocabulary size must be a whole number of at least 1 (0 gives all-zero visual tokens)."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise LangBridgeUsageError(
            f"The {what} must be a whole number of at least 1, not {size!r}; pick T such as 19200."
        )


class TokenizerVocabulary:
    """A tokenizer's non-special tokens in normal form, with the lookups that mapping and composing need."""

    def __init__(self, tokenizer):
        self.name = str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)
        byte_level = is_byte_level(tokenizer)
        excluded = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))
        self.num_excluded = 0
        self.text_of: dict[int, str] = {}
        self.byte_fallback_ids: set[int] = set()
        for token, token_id in tokenizer.get_vocab().items():
            data = None if token_id in excluded else token_bytes(token, byte_level)
            if not data:
                self.num_excluded += 1
                continue
            self.text_of[token_id] = normal_form(data)
            if BYTE_TOKEN.fullmatch(token):
                self.byte_fallback_ids.add(token_id)

    @cached_property
    def id_of(self) -> dict[str, int]:
        """Normal form -> id. A real piece wins over a byte-fallback token, then the lowest id."""
        ranked = sorted(self.text_of, key=lambda i: (i in self.byte_fallback_ids, i))
        mapping: dict[str, int] = {}
        for token_id in ranked:
            mapping.setdefault(self.text_of[token_id], token_id)
        return mapping

    @cached_property
    def _id_of_bytes(self) -> dict[bytes, int]:
        return {normal_form_bytes(text): token_id for text, token_id in self.id_of.items()}

    @cached_property
    def _longest_token(self) -> int:
        return max(map(len, self._id_of_bytes), default=0)

    def compose(self, text: str) -> list[int] | None:
        """Sub-token ids that spell `text` exactly: greedy longest match over the bytes, single bytes as
        the fallback. None when some byte has no token."""
        data = normal_form_bytes(text)
        pieces, start = [], 0
        while start < len(data):
            for end in range(min(len(data), start + self._longest_token), start, -1):
                if (token_id := self._id_of_bytes.get(data[start:end])) is not None:
                    pieces.append(token_id)
                    start = end
                    break
            else:
                return None
        return pieces

    def text_of_entry(self, entry: int | list[int]) -> str:
        """The normal form a vocabulary entry (one id, or composed sub-token ids) stands for."""
        ids = [entry] if isinstance(entry, int) else entry
        return normal_form(b"".join(normal_form_bytes(self.text_of[i]) for i in ids))

    def word_like_ids(self) -> list[int]:
        return sorted(i for i, text in self.text_of.items() if i not in self.byte_fallback_ids and is_word_like(text))


@dataclass
class VocabularyMapping:
    """A shared vocabulary placed onto one tokenizer: per token, its id or the sub-token ids composing it."""

    tokenizer_name: str
    entries: list[int | list[int] | None]
    found: list[str] = field(default_factory=list)
    composed: dict[str, list[int]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.entries)

    @property
    def coverage(self) -> float:
        """The share of tokens the tokenizer has exactly (composed ones are approximations)."""
        return len(self.found) / self.size if self.size else 1.0

    def report(self, show: int = 10) -> str:
        lines = [
            f"Coverage of {self.size} shared-vocabulary tokens on {self.tokenizer_name}: {self.coverage:.1%} found exactly",
            f"  found exactly: {len(self.found)}",
            f"  composed from sub-tokens: {len(self.composed)}",
            f"  missing (no sub-tokens spell them): {len(self.missing)}",
        ]
        if self.composed:
            shown = ", ".join(f"{t!r} = {len(ids)} pieces" for t, ids in list(self.composed.items())[:show])
            lines.append(f"  composed: {shown}{', ...' if len(self.composed) > show else ''}")
        if self.missing:
            lines.append(
                f"  missing: {', '.join(map(repr, self.missing[:show]))}{', ...' if len(self.missing) > show else ''}"
            )
        return "\n".join(lines)

    def require(self, min_coverage: float, force: bool = False) -> None:
        """Refuse a mapping too poor to carry a trained adapter, naming the coverage and the overrides."""
        if self.missing:
            raise LangBridgeUsageError(
                f"{len(self.missing)} shared-vocabulary tokens cannot be spelled by {self.tokenizer_name} at all "
                f"(e.g. {self.missing[:5]}); an adapter needs an embedding for every token."
            )
        if self.coverage < min_coverage and not force:
            raise LangBridgeUsageError(
                f"Only {self.coverage:.1%} of the shared vocabulary is in {self.tokenizer_name} exactly "
                f"({len(self.composed)} tokens would be composed from sub-tokens), below the minimum of "
                f"{min_coverage:.0%}. Lower it with --min-coverage, or pass --force to transfer anyway."
            )


@dataclass
class SharedVocabulary:
    """T token strings in normal form (most frequent first), with counts and where they came from."""

    tokens: list[str]
    counts: list[int] | None = None
    source: dict = field(default_factory=dict)

    def __post_init__(self):
        if len(set(self.tokens)) != len(self.tokens):
            duplicates = [t for t, n in Counter(self.tokens).items() if n > 1]
            raise LangBridgeUsageError(f"A shared vocabulary lists each token once; repeated: {duplicates[:5]}")

    def __len__(self) -> int:
        return len(self.tokens)

    @classmethod
    def build(
        cls,
        tokenizers: list,
        texts: Iterable[str],
        size: int | None,
        *,
        batch_size: int = 1000,
        corpus_name: str = "",
        progress: bool = True,
        min_count: int = 1,
    ) -> "SharedVocabulary":
        """The `size` most frequent tokens present in every tokenizer (`None`: all that occur `min_count` times).

        Frequency is a token's occurrences when each tokenizer encodes the corpus, summed over tokenizers;
        ties go to the first tokenizer's lower id (its earlier merge). A token the corpus never shows is left
        out: nothing says it matters, and an LLM's embedding of a token it never saw is noise. The corpus is
        read once, in batches.
        """
        if len(tokenizers) < 2:
            raise LangBridgeUsageError("A shared vocabulary needs at least two tokenizers.")
        if size is not None:
            check_size(size)
        vocabularies = [TokenizerVocabulary(t) for t in tokenizers]
        shared = set(vocabularies[0].id_of).intersection(*(v.id_of for v in vocabularies[1:]))
        id_counts = [Counter() for _ in tokenizers]
        num_texts = 0
        for batch in tqdm(_batches(texts, batch_size), desc="Counting tokens", unit=" batches", disable=not progress):
            num_texts += len(batch)
            for tokenizer, counter in zip(tokenizers, id_counts):
                counter.update(chain.from_iterable(tokenizer(batch, add_special_tokens=False)["input_ids"]))
        counts: Counter[str] = Counter()
        for vocabulary, counter in zip(vocabularies, id_counts):
            for token_id, n in counter.items():
                if token_id in vocabulary.text_of:
                    counts[vocabulary.text_of[token_id]] += n
        candidates = [text for text in shared if counts[text] >= min_count]
        size = len(candidates) if size is None else size
        if len(candidates) < size:
            raise LangBridgeUsageError(
                f"The tokenizers share {len(shared)} tokens in normal form, {len(candidates)} of them seen at least "
                f"{min_count} time(s) in the corpus; a vocabulary of {size} cannot be drawn from them. Ask for at most "
                f"{len(candidates)} tokens, or a larger corpus."
            )
        first = vocabularies[0].id_of
        chosen = heapq.nsmallest(size, candidates, key=lambda text: (-counts[text], first[text]))
        return cls(
            tokens=chosen,
            counts=[counts[text] for text in chosen],
            source={
                "tokenizers": [v.name for v in vocabularies],
                "corpus": corpus_name,
                "corpus_texts": num_texts,
                "ranking": "occurrences in the corpus summed over the tokenizers' encodings; ties by the first "
                "tokenizer's id",
            },
        )

    @classmethod
    def from_tokenizer(cls, tokenizer, size: int) -> "SharedVocabulary":
        """The first `size` word-like tokens by id: in BPE, lower ids are earlier merges, i.e. more frequent."""
        check_size(size)
        vocabulary = TokenizerVocabulary(tokenizer)
        ids = vocabulary.word_like_ids()
        if len(ids) < size:
            raise LangBridgeUsageError(
                f"The tokenizer has only {len(ids)} ordinary word-like tokens; a shared vocabulary of {size} "
                "cannot be drawn from it. Ask for a smaller size."
            )
        last = ids[size - 1]
        skipped = sum(1 for token_id in tokenizer.get_vocab().values() if token_id < last) - (size - 1)
        how = (
            f"the first {size} ordinary tokens of {vocabulary.name} by id (BPE merge order, a proxy for frequency "
            f"in its training data), skipping {skipped} special, added, byte, control, partial-UTF-8 or "
            f"whitespace-only tokens among ids 0-{last}"
        )
        return cls(tokens=[vocabulary.text_of[i] for i in ids[:size]], source={"chosen_as": how})

    @classmethod
    def from_model(cls, config, tokenizer) -> "SharedVocabulary":
        """The strings behind a LangBridge model's vocabulary ids, read through its tokenizer."""
        vocabulary = TokenizerVocabulary(tokenizer)
        try:
            tokens = [vocabulary.text_of_entry(entry) for entry in config.vocab_token_ids]
        except KeyError as error:
            raise LangBridgeUsageError(
                f"Vocabulary id {error} is special or absent in the model's tokenizer."
            ) from error
        return cls(tokens=tokens, source={"from_model": config.language_model_name_or_path or ""})

    def map_onto(self, tokenizer) -> VocabularyMapping:
        """This vocabulary in `tokenizer`'s ids: exact where it has the token, else composed, else missing."""
        vocabulary = TokenizerVocabulary(tokenizer)
        mapping = VocabularyMapping(tokenizer_name=vocabulary.name, entries=[])
        for text in self.tokens:
            if (token_id := vocabulary.id_of.get(text)) is not None:
                mapping.entries.append(token_id)
                mapping.found.append(text)
            elif pieces := vocabulary.compose(text):
                mapping.entries.append(pieces)
                mapping.composed[text] = pieces
            else:
                mapping.entries.append(None)
                mapping.missing.append(text)
        return mapping

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """The vocabulary as JSON, written whole; an existing file is kept unless `overwrite`."""
        payload = {
            "format": FORMAT,
            "size": len(self),
            "tokens": self.tokens,
            "counts": self.counts,
            "source": self.source,
        }
        return write_text_atomic(path, json.dumps(payload, ensure_ascii=False, indent=1), overwrite)

    @classmethod
    def load(cls, path: str | Path) -> "SharedVocabulary":
        path = Path(path)
        payload = _read_json(path, "a shared-vocabulary file")
        valid = (
            isinstance(payload, dict)
            and payload.get("format") == FORMAT
            and isinstance(payload.get("tokens"), list)
            and all(isinstance(t, str) for t in payload["tokens"])
        )
        if not valid:
            raise LangBridgeUsageError(
                f'{path} is not a shared-vocabulary file (expected JSON with "format": "{FORMAT}" and a list of '
                '"tokens"). Build one with `langbridge vocab build`; official LangBridge vocabularies '
                "(token -> id) go through `langbridge convert-official`."
            )
        if not payload["tokens"]:
            raise LangBridgeUsageError(f"{path} lists no tokens; build a vocabulary of at least one token.")
        return cls(tokens=payload["tokens"], counts=payload.get("counts"), source=payload.get("source") or {})

    @classmethod
    def from_official(cls, path: str | Path, tokenizer_size: int | None = None) -> "SharedVocabulary":
        """An official LangBridge vocabulary file (see `read_official_vocabulary`), as token strings in normal form."""
        path = Path(path)
        payload = read_official_vocabulary(path, tokenizer_size)
        byte_level = not any("▁" in token for token in payload)
        spelled = {token: token_bytes(token, byte_level) for token in payload}
        unreadable = [token for token, data in spelled.items() if not data]
        if unreadable:
            raise LangBridgeUsageError(
                f"{path}: {len(unreadable)} tokens are not byte-level spellings, e.g. {unreadable[:5]}"
            )
        tokens = [normal_form(data) for data in spelled.values()]
        return cls(tokens=tokens, source={"official_file": path.name, "official_ids": list(payload.values())})


def read_official_vocabulary(path: str | Path, tokenizer_size: int | None = None) -> dict[str, int]:
    """An official LangBridge vocabulary file as token string -> id, most frequent first: a JSON object of
    byte-level token string -> id (the 19,200-token files), or a list of `{token: [id, position]}` (the
    25,600-token Llama-3 file). The ids must be token ids: unique, non-negative, and below `tokenizer_size` when it
    is given; a token -> count frequency file (repeated or negative values, values beyond any tokenizer's size, or
    values falling through the whole file) is refused.
    """
    path = Path(path)
    payload = _read_json(path, "an official vocabulary file")
    is_int = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
    if (
        isinstance(payload, list)
        and payload
        and all(
            isinstance(e, dict)
            and len(e) == 1
            and isinstance(v := next(iter(e.values())), list)
            and len(v) == 2
            and all(map(is_int, v))
            for e in payload
        )
    ):  # [{token: [id, position]}, ...]
        entries = [(token, value[0], value[1]) for e in payload for token, value in e.items()]
        positions = sorted(position for _, _, position in entries)
        if positions != list(range(len(entries))):
            raise LangBridgeUsageError(
                f"{path} lists [id, position] pairs whose positions are not 0..{len(entries) - 1} once each; "
                "the file is damaged or in another layout."
            )
        payload = {token: token_id for token, token_id, _ in sorted(entries, key=lambda e: e[2])}
        if len(payload) != len(entries):
            raise LangBridgeUsageError(f"{path} lists a token more than once.")
    if not isinstance(payload, dict) or not payload or not all(map(is_int, payload.values())):
        raise LangBridgeUsageError(
            f"{path} is not an official LangBridge vocabulary: expected a JSON object of token string -> id (like "
            "vocab/19200_*_sub_llava_share_intersect_llama_qwen.json) or a list of {token: [id, position]} (the "
            "25,600-token Llama-3 file)."
        )
    ids = list(payload.values())
    repeated = len(ids) - len(set(ids))
    negative = [i for i in ids if i < 0]
    if repeated or negative:
        raise LangBridgeUsageError(
            f"{path} maps tokens to values that cannot be token ids ({repeated} repeated, {len(negative)} negative); "
            "it looks like a token -> count frequency file. Give the vocabulary file whose values are the LLM's "
            "token ids."
        )
    if max(ids) >= LARGEST_TOKENIZER:
        raise LangBridgeUsageError(
            f"{path} maps tokens to values up to {max(ids):,}, more than any tokenizer has tokens: it looks like a token "
            "-> count frequency file. Give the vocabulary file whose values are the LLM's token ids."
        )
    if len(ids) >= FALLING_RUN and all(a > b for a, b in zip(ids, ids[1:])):
        raise LangBridgeUsageError(
            f"{path} maps its {len(ids)} tokens to values that fall from {ids[0]:,} to {ids[-1]:,} in the file's "
            "order, as the counts of a token -> count frequency file do (token ids ranked by frequency are never "
            "ordered so). Give the vocabulary file whose values are the LLM's token ids."
        )
    if tokenizer_size is not None and (too_big := [i for i in ids if i >= tokenizer_size]):
        raise LangBridgeUsageError(
            f"{path} has {len(too_big)} ids at or above the tokenizer's size {tokenizer_size} (e.g. {too_big[0]}): "
            "it belongs to another tokenizer, or holds counts rather than ids."
        )
    return payload


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise resource_error(path, error, "read") or error from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise LangBridgeUsageError(f"{path} is not {what} ({error}); give a UTF-8 JSON file of that kind.") from None


def _batches(texts: Iterable[str], size: int):
    batch = []
    for text in texts:
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
