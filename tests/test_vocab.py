"""Shared vocabularies: normal form across tokenizer styles, frequency ranking, coverage, streaming corpora."""

import json
import tracemalloc
from collections import Counter

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from modeling_langbridge.assembly.corpus import iter_corpus, iter_json_array
from modeling_langbridge.assembly.tiny import tiny_corpus
from modeling_langbridge.assembly.vocab import SharedVocabulary, normal_form, normal_form_bytes, token_bytes
from modeling_langbridge.cli import main


@pytest.fixture(scope="module")
def tokenizers(parts):
    return AutoTokenizer.from_pretrained(parts["qwen2"]), AutoTokenizer.from_pretrained(parts["llama"])


@pytest.fixture(scope="module")
def corpus_files(tmp_path_factory):
    """The same texts as plain text, JSONL, and LLaVA's JSON array of conversations."""
    root = tmp_path_factory.mktemp("corpus")
    texts = tiny_corpus(size=400, seed=7)
    (root / "captions.txt").write_text("\n".join(texts) + "\n")
    (root / "captions.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    llava = [
        {
            "id": str(i),
            "image": f"{i}.jpg",
            "conversations": [
                {"from": "human", "value": "<image>\n" + texts[i]},
                {"from": "gpt", "value": texts[i + 1]},
            ],
        }
        for i in range(0, len(texts), 2)
    ]
    (root / "llava.json").write_text(json.dumps(llava, indent=1))
    return root, texts


def independent_normal_form(tokenizer, token: str) -> str | None:
    """The text a token stands for, by a route of its own: the byte-level decoder, or `▁` -> space."""
    if token.startswith("<0x") or token in tokenizer.all_special_tokens:
        return None
    if any("Ġ" in t for t in tokenizer.get_vocab()) and "▁" not in token:
        text = tokenizer.backend_tokenizer.decoder.decode([token])
        return None if "\ufffd" in text else text
    return token.replace("▁", " ")


def test_normal_form_maps_byte_level_and_sentencepiece_spellings_together():
    assert token_bytes("Ġthe", byte_level=True) == token_bytes("▁the", byte_level=False) == b" the"
    assert token_bytes("Ċ", byte_level=True) == b"\n"
    assert token_bytes("â", byte_level=True) == token_bytes("<0xE2>", byte_level=False) == b"\xe2"
    assert normal_form(b" the") == " the" and normal_form(b"\xe2\x80") == "<0xE2><0x80>"
    assert normal_form("é".encode()) == "é"
    for data in (b" the", b"\xe2", "日本".encode(), b"\xe6\x97"):
        assert normal_form_bytes(normal_form(data)) == data


def test_built_vocabulary_is_the_shared_tokens_in_frequency_order_none_special(tokenizers, corpus_files):
    root, texts = corpus_files
    qwen, llama = tokenizers
    vocabulary = SharedVocabulary.build([qwen, llama], iter_corpus([root / "captions.txt"]), size=60, progress=False)

    # Independently: each tokenizer's tokens read as text, the shared ones, counted over both encodings.
    readable = []
    for tokenizer in (qwen, llama):
        forms = {token: independent_normal_form(tokenizer, token) for token in tokenizer.get_vocab()}
        readable.append((tokenizer, {t: f for t, f in forms.items() if f}))
    shared = set(readable[0][1].values()) & set(readable[1][1].values())
    counts = Counter()
    for tokenizer, forms in readable:
        for text in texts:
            counts.update(forms[t] for t in tokenizer.tokenize(text) if t in forms)

    assert len(vocabulary) == 60 and set(vocabulary.tokens) <= shared
    assert vocabulary.counts == [counts[t] for t in vocabulary.tokens]
    assert vocabulary.counts == sorted(vocabulary.counts, reverse=True)
    least_kept = vocabulary.counts[-1]
    assert all(counts[t] <= least_kept for t in shared - set(vocabulary.tokens))  # nothing more frequent left out
    assert {" circle", " the", " red"} <= set(vocabulary.tokens)
    specials = {"<|endoftext|>", "<|im_start|>", "<|im_end|>", "<s>", "</s>", "<unk>", "<image>"}
    assert not specials & set(vocabulary.tokens)
    assert vocabulary.source["tokenizers"] == [str(qwen.name_or_path), str(llama.name_or_path)]


def test_every_corpus_format_gives_the_same_vocabulary(tokenizers, corpus_files):
    root, _ = corpus_files
    built = [
        SharedVocabulary.build(list(tokenizers), iter_corpus([root / name]), size=40, progress=False).tokens
        for name in ("captions.txt", "captions.jsonl", "llava.json")
    ]
    assert built[0] == built[1] == built[2]


def hand_built_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE with a vocabulary chosen by hand: the 256 byte symbols plus a few pieces."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    pieces = ["Ġred", "Ġgreen", "Ġcir", "cle", "Ġre", "en", "Ġgre"]
    vocab = {symbol: i for i, symbol in enumerate(sorted(alphabet))}
    for piece in pieces:
        vocab[piece] = len(vocab)
    merges = [
        ("Ġ", "r"),
        ("Ġr", "e"),
        ("Ġre", "d"),
        ("Ġ", "g"),
        ("Ġg", "r"),
        ("Ġgr", "e"),
        ("e", "n"),
        ("Ġgre", "en"),
        ("Ġ", "c"),
        ("Ġc", "i"),
        ("Ġci", "r"),
        ("c", "l"),
        ("cl", "e"),
    ]
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer)


def test_coverage_on_a_third_tokenizer_is_exact_on_a_hand_built_case():
    tokenizer = hand_built_tokenizer()
    vocabulary = SharedVocabulary(tokens=[" red", " green", " circle", " blue", "é", "<0xE2>"])
    mapping = vocabulary.map_onto(tokenizer)
    ids = tokenizer.convert_tokens_to_ids
    assert mapping.found == [" red", " green", "<0xE2>"]
    assert mapping.composed == {
        " circle": [ids("Ġcir"), ids("cle")],  # longest pieces first
        " blue": [ids("Ġ"), ids("b"), ids("l"), ids("u"), ids("e")],  # single bytes as the fallback
        "é": [ids("Ã"), ids("©")],  # its two UTF-8 bytes
    }
    assert mapping.missing == []
    assert mapping.entries[:3] == [ids("Ġred"), ids("Ġgreen"), [ids("Ġcir"), ids("cle")]]
    assert mapping.entries[5] == ids("â")
    assert mapping.coverage == pytest.approx(3 / 6)
    report = mapping.report()
    assert (
        "50.0% found exactly" in report and "composed from sub-tokens: 3" in report and "' circle' = 2 pieces" in report
    )


def test_a_token_no_sub_tokens_can_spell_is_missing():
    word_level = Tokenizer(models.WordLevel(vocab={"▁red": 0, "▁green": 1, "<unk>": 2}, unk_token="<unk>"))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=word_level, unk_token="<unk>")
    mapping = SharedVocabulary(tokens=[" red", " zebra"]).map_onto(tokenizer)
    assert (mapping.found, mapping.missing) == ([" red"], [" zebra"])
    with pytest.raises(ValueError, match="1 shared-vocabulary tokens cannot be spelled"):
        mapping.require(min_coverage=0.0, force=True)


def test_json_arrays_stream_in_small_pieces_and_bad_files_are_named(tmp_path):
    records = [{"id": i, "text": f"caption number {i} " + "é" * (i % 5), "n": 10**i} for i in range(30)]
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records))
    assert list(iter_json_array(path, chunk_size=7)) == records
    path.write_text(json.dumps(records)[:-40])
    with pytest.raises(ValueError, match="truncated|not valid JSON"):
        list(iter_json_array(path, chunk_size=64))
    path.write_text('{"not": "an array"}')
    with pytest.raises(ValueError, match="is not a JSON array"):
        list(iter_json_array(path))


def test_a_large_llava_file_is_read_without_holding_it(tmp_path):
    path = tmp_path / "blip_laion_cc_sbu_like.json"
    with open(path, "w") as file:
        file.write("[")
        for i in range(40_000):
            conversation = [
                {"from": "human", "value": "<image>\nRender a clear and concise summary of the photo."},
                {"from": "gpt", "value": f"a photo of a red circle next to {i} blue squares on a table"},
            ]
            file.write(
                ("," if i else "") + json.dumps({"id": f"{i:09d}", "image": f"{i}.jpg", "conversations": conversation})
            )
        file.write("]")
    size = path.stat().st_size
    tracemalloc.start()
    count = sum(1 for _ in iter_corpus([path]))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert count == 80_000
    assert size > 8_000_000 and peak < size / 3, (size, peak)


def test_vocab_cli_builds_and_inspects(tokenizers, corpus_files, parts, tmp_path, capsys):
    root, _ = corpus_files
    out = tmp_path / "vocab.json"
    assert (
        main(
            [
                "vocab",
                "build",
                "--tokenizer",
                str(parts["qwen2"]),
                "--tokenizer",
                str(parts["llama"]),
                "--corpus",
                str(root / "llava.json"),
                "--size",
                "50",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "Saved 50 shared tokens" in capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert saved["format"] == "langbridge-shared-vocabulary" and len(saved["tokens"]) == 50
    assert saved["source"]["corpus"] == "llava.json"

    assert main(["vocab", "inspect", str(out), "--tokenizer", str(parts["llama"])]) == 0
    printed = capsys.readouterr().out
    assert "50 tokens" in printed and "100.0% found exactly" in printed
    (tmp_path / "junk.json").write_text("[1, 2, 3]")
    assert main(["vocab", "inspect", str(tmp_path / "junk.json")]) == 2
    assert "is not a shared-vocabulary file" in capsys.readouterr().err


def test_a_datasets_column_streams_into_the_same_vocabulary(tokenizers, corpus_files, parts, tmp_path, capsys):
    root, texts = corpus_files
    dataset_dir = tmp_path / "captions-dataset"
    dataset_dir.mkdir()
    (dataset_dir / "train.jsonl").write_text(
        "".join(json.dumps({"caption": t, "id": n}) + "\n" for n, t in enumerate(texts))
    )
    out = tmp_path / "vocab.json"
    assert (
        main(
            [
                "vocab",
                "build",
                "--tokenizer",
                str(parts["qwen2"]),
                "--tokenizer",
                str(parts["llama"]),
                "--dataset",
                str(dataset_dir),
                "--column",
                "caption",
                "--size",
                "40",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    from_files = SharedVocabulary.build(list(tokenizers), iter_corpus([root / "captions.txt"]), size=40, progress=False)
    assert SharedVocabulary.load(out).tokens == from_files.tokens
    assert (
        main(
            [
                "vocab",
                "build",
                "--tokenizer",
                str(parts["qwen2"]),
                "--tokenizer",
                str(parts["llama"]),
                "--size",
                "40",
                "--out",
                str(tmp_path / "none.json"),
            ]
        )
        == 2
    )
    assert "--corpus FILE... or as --dataset" in capsys.readouterr().err
