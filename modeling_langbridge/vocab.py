"""Shared vocabularies: token strings an adapter speaks, independent of any one tokenizer's ids.

Tokens are kept in a *normal form*, the text a token stands for: byte-level BPE's `Ġthe` and
SentencePiece's `▁the` are both `" the"`. Ids are per tokenizer; `map_onto` turns the strings into the ids of
a given tokenizer.
"""

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

BYTE_FALLBACK_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")
FORMAT = "langbridge-shared-vocabulary"


@lru_cache(maxsize=1)
def _byte_level_decoder() -> dict[str, int]:
    """GPT-2's printable stand-ins for bytes (`Ġ` is the space byte), inverted."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {chr(code): byte for byte, code in zip(printable, codes)}


def is_byte_level(tokenizer) -> bool:
    """Whether the tokenizer spells tokens in byte-level BPE (GPT-2, Qwen, Llama-3) rather than with `▁`."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    spec = json.loads(backend.to_str())
    return "ByteLevel" in json.dumps([spec.get("pre_tokenizer"), spec.get("decoder")])


def token_text(token: str, byte_level: bool) -> str | None:
    """The normal form of one token string, or None when it is not whole text (a lone or partial UTF-8 byte)."""
    if BYTE_FALLBACK_TOKEN.fullmatch(token):
        return None
    if byte_level:
        decoder = _byte_level_decoder()
        if any(char not in decoder for char in token):
            return None
        try:
            return bytes(decoder[char] for char in token).decode("utf-8")
        except UnicodeDecodeError:
            return None
    return token.replace("▁", " ")


@dataclass
class OrdinaryTokens:
    """A tokenizer's ordinary tokens (not special, not added, whole text) in id order, with what was left out."""

    ids: list[int]
    texts: list[str]
    skipped: dict[str, int]

    def id_of(self) -> dict[str, int]:
        """Normal form -> id; the lowest id wins where two tokens share a normal form."""
        mapping: dict[str, int] = {}
        for token_id, text in zip(self.ids, self.texts):
            mapping.setdefault(text, token_id)
        return mapping


def ordinary_tokens(tokenizer) -> OrdinaryTokens:
    """Every token of the tokenizer that stands for plain text, by increasing id."""
    byte_level = is_byte_level(tokenizer)
    special_ids = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    skipped = {"special or added": 0, "byte or partial UTF-8": 0, "whitespace only": 0}
    ids, texts = [], []
    for token, token_id in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1]):
        if token_id in special_ids:
            skipped["special or added"] += 1
            continue
        text = token_text(token, byte_level)
        if text is None:
            skipped["byte or partial UTF-8"] += 1
        elif not text.strip():
            skipped["whitespace only"] += 1
        else:
            ids.append(token_id)
            texts.append(text)
    return OrdinaryTokens(ids, texts, skipped)


@dataclass
class VocabularyMapping:
    """A shared vocabulary placed onto one tokenizer: an entry per token (an id, or sub-token ids)."""

    entries: list[int | list[int]]
    found: list[str] = field(default_factory=list)
    composed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    @property
    def coverage(self) -> float:
        total = len(self.found) + len(self.composed) + len(self.missing)
        return len(self.found) / total if total else 1.0


@dataclass
class SharedVocabulary:
    """T token strings in normal form (most frequent first), with counts and provenance."""

    tokens: list[str]
    counts: list[int] | None = None
    source: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.tokens)

    @classmethod
    def from_tokenizer(cls, tokenizer, size: int) -> "SharedVocabulary":
        """The first `size` ordinary tokens by id: in BPE, lower ids are earlier merges, i.e. more frequent."""
        ordinary = ordinary_tokens(tokenizer)
        if len(ordinary.ids) < size:
            raise ValueError(
                f"The tokenizer has only {len(ordinary.ids)} ordinary tokens (skipped: {ordinary.skipped}); "
                f"a shared vocabulary of {size} cannot be drawn from it. Ask for a smaller size."
            )
        how = (
            f"the first {size} ordinary tokens of {tokenizer.name_or_path or 'the tokenizer'} by id (BPE merge order, "
            f"a proxy for frequency in its training data), skipping {', '.join(f'{n} {k}' for k, n in ordinary.skipped.items())}"
        )
        return cls(tokens=ordinary.texts[:size], source={"chosen_as": how})

    def map_onto(self, tokenizer) -> VocabularyMapping:
        """The ids of these tokens in `tokenizer`; tokens it lacks are listed as missing."""
        id_of = ordinary_tokens(tokenizer).id_of()
        mapping = VocabularyMapping(entries=[])
        for text in self.tokens:
            if text in id_of:
                mapping.entries.append(id_of[text])
                mapping.found.append(text)
            else:
                mapping.missing.append(text)
        return mapping

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        payload = {"format": FORMAT, "size": len(self), "tokens": self.tokens, "counts": self.counts, "source": self.source}
        path.write_text(json.dumps(payload, ensure_ascii=False, indent=1), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "SharedVocabulary":
        path = Path(path)
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{path} is not a shared-vocabulary file: {error}") from error
        if not isinstance(payload, dict) or payload.get("format") != FORMAT or not isinstance(payload.get("tokens"), list):
            raise ValueError(
                f"{path} is not a shared-vocabulary file (expected JSON with \"format\": \"{FORMAT}\" and a "
                "\"tokens\" list). Build one with `langbridge vocab build`."
            )
        return cls(tokens=payload["tokens"], counts=payload.get("counts"), source=payload.get("source") or {})
