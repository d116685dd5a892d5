"""Bad input and faults (issue 17): nothing silently wrong, nothing lost, every refusal one sentence naming the
problem, the file and the fix; the CLI turns a user's mistake into `langbridge CMD: error: ...` and status 2."""

import json
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file
from transformers import AutoProcessor, AutoTokenizer, pipeline

from langbridge_training import pretrain, sft
from langbridge_training.data import DataReport, fit_to_length, load_llava_json, with_lazy_images
from langbridge_training.outputs import resume_argument, save_adapter
from modeling_langbridge import LangBridgeConfig
from modeling_langbridge.assembly.adapter import LangBridgeAdapter
from modeling_langbridge.assembly.compose import compose
from modeling_langbridge.assembly.corpus import iter_corpus
from modeling_langbridge.assembly.tiny import random_shapes_image
from modeling_langbridge.assembly.vocab import SharedVocabulary, TokenizerVocabulary, is_word_like
from modeling_langbridge.cli import main as cli
from modeling_langbridge.errors import LangBridgeUsageError
from modeling_langbridge.files import read_checkpoint_tensors
from modeling_langbridge.model.processing_langbridge import open_image


def damage_png(source: Path, target: Path) -> Path:
    """20 zeroed bytes in the middle of the image data; the chunk's checksum is left as it was."""
    data = bytearray(source.read_bytes())
    start = data.index(b"IDAT")
    length = struct.unpack(">I", data[start - 4 : start])[0]
    middle = start + 4 + length // 2
    data[middle : middle + 20] = bytes(20)
    target.write_bytes(bytes(data))
    return target


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    random_shapes_image(0, size=64).save(root / "ok.png")
    random_shapes_image(1, size=64).save(root / "other.png")
    damage_png(root / "ok.png", root / "damaged.png")
    (root / "truncated.png").write_bytes((root / "ok.png").read_bytes()[:80])
    Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)).save(root / "grey16.png")
    return root


def run_cli(argv, capsys) -> tuple[int, str]:
    """The CLI in this process: its exit status and the line it printed as its error."""
    capsys.readouterr()
    try:
        status = cli([str(a) for a in argv])
    except SystemExit as exit_:
        status = exit_.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if ": error:" in line]
    return status, "\n".join(errors)


def llava_records(n: int, captions=None, image="ok.png") -> list[dict]:
    captions = captions or ["a red circle"] * n
    return [
        {
            "id": str(i),
            "image": image,
            "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": captions[i]}],
        }
        for i in range(n)
    ]


# ---------------------------------------------------------------- the bad ones


def test_per_sample_image_lists_must_match_each_text(qwen_clip_dir):
    processor = AutoProcessor.from_pretrained(qwen_clip_dir)
    a, b = random_shapes_image(0), random_shapes_image(1)
    with pytest.raises(ValueError, match=r"Sample 0 has 1 <image> in its text but 2 image\(s\) in its list"):
        processor(images=[[a, b], []], text=["one <image>", "one <image>"], return_tensors="pt", padding=True)
    with pytest.raises(ValueError, match="2 per-sample lists but there are 3 texts"):
        processor(images=[[a], [b]], text=["<image>", "<image>", "none"], return_tensors="pt", padding=True)
    nested = processor(images=[[a], [b]], text=["<image> x", "<image> y"], return_tensors="pt", padding=True)
    flat = processor(images=[a, b], text=["<image> x", "<image> y"], return_tensors="pt", padding=True)
    assert torch.equal(nested["pixel_values"], flat["pixel_values"])


def test_damaged_png_data_fails_everywhere_an_image_is_read(qwen_clip_dir, images, tmp_path, capsys):
    damaged = images / "damaged.png"
    plain = Image.open(damaged)
    plain.load()  # Pillow alone decodes it without a word
    with pytest.raises(
        ValueError, match=r"cannot read the image .*damaged\.png.*checksum"
    ):  # training reads with it too
        open_image(damaged)
    with pytest.raises(ValueError, match=r"damaged\.png"):  # a PIL image opened by the caller is checked too
        AutoProcessor.from_pretrained(qwen_clip_dir)(images=[Image.open(damaged)], text="<image>", return_tensors="pt")

    chat = pipeline("image-text-to-text", model=str(qwen_clip_dir))
    with pytest.raises(ValueError, match=r"cannot read the image .*damaged\.png"):
        chat(
            text=[
                {"role": "user", "content": [{"type": "image", "url": str(damaged)}, {"type": "text", "text": "hi"}]}
            ],
            max_new_tokens=1,
        )

    status, error = run_cli(["interpret", damaged, "--model", qwen_clip_dir, "--out", tmp_path / "o.png"], capsys)
    assert status == 2 and "damaged.png" in error and not (tmp_path / "o.png").exists()


def test_sixteen_bit_greyscale_is_scaled_not_washed_out(qwen_clip_dir, images):
    grey16 = Image.open(images / "grey16.png")
    assert grey16.mode == "I;16"
    expected = np.rint(np.asarray(grey16).astype(float) / 257).astype(np.uint8)
    rgb = np.asarray(open_image(images / "grey16.png"))
    assert np.array_equal(rgb[..., 0], expected) and np.array_equal(rgb[..., 1], expected)
    assert (np.asarray(grey16.convert("RGB"))[..., 0] == 255).mean() > 0.9  # Pillow alone clips: nearly all white

    processor = AutoProcessor.from_pretrained(qwen_clip_dir)
    eight_bit = Image.fromarray(expected, mode="L")
    assert torch.equal(
        processor(images=[grey16], text="<image>", return_tensors="pt")["pixel_values"],
        processor(images=[eight_bit], text="<image>", return_tensors="pt")["pixel_values"],
    )


@pytest.mark.parametrize("size", [0, -5])
def test_vocabulary_sizes_below_one_are_refused_in_the_api(parts, size):
    tokenizer = AutoTokenizer.from_pretrained(parts["qwen2"])
    with pytest.raises(LangBridgeUsageError, match="at least 1"):
        SharedVocabulary.from_tokenizer(tokenizer, size)
    with pytest.raises(LangBridgeUsageError, match="at least 1"):
        SharedVocabulary.build([tokenizer, tokenizer], ["a red circle"], size, progress=False)
    with pytest.raises(LangBridgeUsageError, match="at least 1"):
        compose(str(parts["clip"]), str(parts["qwen2"]), projector_hidden_size=16, shared_vocab_size=size)
    with pytest.raises(ValueError, match="shared_vocab_size must be a whole number of at least 1"):
        LangBridgeConfig(shared_vocab_size=size)


def test_an_empty_vocabulary_file_is_refused(tmp_path):
    (tmp_path / "empty.json").write_text(json.dumps({"format": "langbridge-shared-vocabulary", "tokens": []}))
    with pytest.raises(LangBridgeUsageError, match="lists no tokens"):
        SharedVocabulary.load(tmp_path / "empty.json")


@pytest.mark.parametrize("flag", ["--out", "--json"])
def test_interpret_never_writes_over_its_input(qwen_clip_dir, images, tmp_path, capsys, flag):
    image = tmp_path / "photo.png"
    shutil.copy(images / "ok.png", image)
    before = image.read_bytes()
    extra = ["--out", tmp_path / "overlay.png"] if flag == "--json" else []
    status, error = run_cli(["interpret", image, "--model", qwen_clip_dir, flag, image, *extra], capsys)
    assert status == 2 and f"{flag} {image} is the input image" in error
    assert image.read_bytes() == before


def test_stage_one_drops_empty_captions_and_refuses_when_none_is_left(qwen_clip_dir, images, tmp_path):
    processor = AutoProcessor.from_pretrained(qwen_clip_dir)
    (tmp_path / "some.json").write_text(json.dumps(llava_records(4, ["a red circle", "", "  ", "two squares"])))
    report = DataReport()
    kept = fit_to_length(load_llava_json(tmp_path / "some.json", images), processor, 16, None, "plain", report)
    assert (len(kept), report.dropped_no_target) == (2, 2)

    (tmp_path / "none.json").write_text(json.dumps(llava_records(3, ["", " ", "\n"])))
    with pytest.raises(ValueError, match="No sample is left to train on: 0 of 3 .* 3 with no trainable token"):
        fit_to_length(load_llava_json(tmp_path / "none.json", images), processor, 16, None, "plain", DataReport())


def recipe_config(path: Path, **settings) -> Path:
    base = {
        "use_cpu": True,
        "bf16": False,
        "report_to": [],
        "save_strategy": "no",
        "max_steps": 1,
        "per_device_train_batch_size": 2,
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
        "activation_checkpointing": False,
    }
    path.write_text(yaml.safe_dump({**base, **settings}))
    return path


def run_recipe(recipe, config: Path):
    from trl import ModelConfig, SFTConfig, TrlParser

    from langbridge_training.arguments import LangBridgeArguments

    return recipe.main(
        *TrlParser((LangBridgeArguments, SFTConfig, ModelConfig)).parse_args_and_config(["--config", str(config)])
    )


def test_pretrain_never_deletes_an_adapter_folder_it_did_not_write(qwen_clip_dir, images, tmp_path):
    (tmp_path / "data.json").write_text(json.dumps(llava_records(4)))
    out = tmp_path / "run"
    (out / "adapter").mkdir(parents=True)
    (out / "adapter" / "my_notes.txt").write_text("a week of work")
    config = recipe_config(
        tmp_path / "p.yaml",
        model_name_or_path=str(qwen_clip_dir),
        dataset=str(tmp_path / "data.json"),
        image_folder=str(images),
        output_dir=str(out),
    )
    with pytest.raises(LangBridgeUsageError, match=r"adapter exists and is not a LangBridge adapter.*will not delete"):
        run_recipe(pretrain, config)
    assert (out / "adapter" / "my_notes.txt").read_text() == "a week of work"


def test_a_runs_own_adapter_is_replaced_whole(qwen_clip_dir, tmp_path):
    adapter = LangBridgeAdapter.from_model_folder(qwen_clip_dir)
    target = tmp_path / "run" / "adapter"
    save_adapter(adapter, target)
    first = (target / "langbridge_adapter.safetensors").read_bytes()
    adapter.weights["linear_1.bias"] = adapter.weights["linear_1.bias"] + 1
    save_adapter(adapter, target)
    assert (target / "langbridge_adapter.safetensors").read_bytes() != first
    assert torch.equal(
        LangBridgeAdapter.from_pretrained(target).weights["linear_1.bias"], adapter.weights["linear_1.bias"]
    )
    assert sorted(p.name for p in target.parent.iterdir()) == ["adapter"]  # no scratch or old copy left


def test_sft_into_the_model_folder_is_refused(qwen_clip_dir, images, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(qwen_clip_dir, model)
    before = (model / "model.safetensors").read_bytes()
    (tmp_path / "data.json").write_text(json.dumps(llava_records(4)))
    for output_dir in (model, model.parent):
        config = recipe_config(
            tmp_path / "s.yaml",
            model_name_or_path=str(model),
            dataset=str(tmp_path / "data.json"),
            image_folder=str(images),
            output_dir=str(output_dir),
        )
        with pytest.raises(LangBridgeUsageError, match="is \\(or holds\\) the model being trained"):
            run_recipe(sft, config)
    assert (model / "model.safetensors").read_bytes() == before


# ---------------------------------------------------------------- the weak ones, by kind


def test_pickled_and_truncated_weights_are_named_and_never_run(qwen_clip_dir, tmp_path):
    class Payload:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    torch.save({"model.multi_modal_projector.linear_1.weight": Payload()}, pickled / "pytorch_model.bin")
    with pytest.raises(LangBridgeUsageError, match=r"pytorch_model\.bin cannot be read as weights") as caught:
        read_checkpoint_tensors(pickled)
    assert "weights_only=False" not in str(caught.value) and not (tmp_path / "pwned").exists()

    truncated = tmp_path / "truncated"
    shutil.copytree(qwen_clip_dir, truncated)
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(LangBridgeUsageError, match=r"model\.safetensors is damaged or truncated"):
        read_checkpoint_tensors(truncated)


def test_llava_json_with_an_unknown_role_names_file_and_record(tmp_path):
    records = llava_records(3)
    records[2]["conversations"][1]["from"] = "bot"
    (tmp_path / "data.json").write_text(json.dumps(records))
    with pytest.raises(LangBridgeUsageError, match=r"data\.json: record 2 has a turn .*bot.*rename the role"):
        load_llava_json(tmp_path / "data.json", tmp_path)


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("corpus.txt", bytes(range(256)) * 4, r"corpus\.txt:1 is not UTF-8 text"),
        ("corpus.jsonl", b'{"text": "a red circle"}\n{"text": oops}\n', r"corpus\.jsonl:2 is not valid JSON"),
        ("corpus.jsonl", b'{"text": "a"}\n[1, 2]\n', r"corpus\.jsonl:2 is a JSON list"),
        ("corpus.json", b'[{"text": "a"}, {"other": 1}]', r"corpus\.json: record 1: Cannot tell which field"),
    ],
)
def test_corpus_errors_name_file_and_line(tmp_path, name, content, expected):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(LangBridgeUsageError, match=expected):
        list(iter_corpus([tmp_path / name]))


def test_eval_errors_name_the_data_file_and_line(qwen_clip_dir, images, tmp_path, capsys):
    shutil.copy(images / "truncated.png", tmp_path / "truncated.png")
    shutil.copy(images / "ok.png", tmp_path / "ok.png")
    lines = [
        {"image": "ok.png", "question": "What?", "answers": ["red"]},
        {"image": "truncated.png", "question": "What?", "answers": ["red"]},
    ]
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    status, error = run_cli(
        ["eval", "--model", qwen_clip_dir, "--data", tmp_path / "q.jsonl", "--batch-size", 1], capsys
    )
    assert status == 2 and "truncated.png" in error and "q.jsonl:2" in error

    (tmp_path / "bad.jsonl").write_text(json.dumps(lines[0]) + "\n{not json\n")
    status, error = run_cli(["eval", "--model", qwen_clip_dir, "--data", tmp_path / "bad.jsonl"], capsys)
    assert status == 2 and "bad.jsonl:2 is not valid JSON" in error


def test_missing_local_paths_are_reported_as_missing(parts, tmp_path):
    with pytest.raises(
        LangBridgeUsageError, match=r"\./no/such/llm does not exist; give an existing language model folder"
    ):
        compose(str(parts["clip"]), "./no/such/llm", projector_hidden_size=16, shared_vocab_size=8)
    with pytest.raises(LangBridgeUsageError, match="does not exist"):
        compose(str(tmp_path / "missing-clip"), str(parts["qwen2"]), projector_hidden_size=16, shared_vocab_size=8)


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"vision_feature_layer": 99}, "vision_feature_layer 99 does not exist"),
        ({"vision_feature_layer": -40}, "vision_feature_layer -40 does not exist"),
        ({"projector_hidden_size": 0}, "projector_hidden_size must be a whole number of at least 1"),
        ({"image_seq_length": 0}, "image_seq_length must be a whole number of at least 1"),
    ],
)
def test_invalid_settings_are_refused_when_given(settings, expected):
    with pytest.raises(ValueError, match=expected):
        LangBridgeConfig(**settings)


def test_bad_images_are_counted_once_per_sample(qwen_clip_dir, images, tmp_path):
    records = llava_records(6)
    records[1]["image"] = records[2]["image"] = "truncated.png"
    records[4]["image"] = "missing.png"
    (tmp_path / "data.json").write_text(json.dumps(records))
    report = DataReport()
    dataset, loader = with_lazy_images(load_llava_json(tmp_path / "data.json", images), report=report)
    for _ in range(2):  # two epochs; replacements meet the bad samples again
        for row in range(len(dataset)):
            assert len(dataset[row]["images"]) == 1
    assert loader.skipped == 3
    assert sorted(Path(e).name for e in report.bad_image_examples) == ["missing.png", "truncated.png"]


def test_resume_takes_the_newest_complete_checkpoint_and_says_so(tmp_path, capsys):
    def checkpoint(step, state=True, weights=True, truncate=False):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if weights:
            save_file({"w": torch.zeros(64)}, folder / "model.safetensors")
            if truncate:
                (folder / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes()[:40])
        if state:
            (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))

    checkpoint(3)
    checkpoint(6)
    checkpoint(9, state=False)  # killed while saving: the Trainer writes trainer_state.json last
    checkpoint(12, truncate=True)
    (tmp_path / "checkpoint-15").mkdir()  # empty
    assert resume_argument("true", str(tmp_path)) == str(tmp_path / "checkpoint-6")
    printed = capsys.readouterr().out
    assert all(f"skipping {tmp_path / f'checkpoint-{n}'}" in printed for n in (9, 12, 15))
    assert f"from {tmp_path / 'checkpoint-6'}, the newest complete checkpoint" in printed
    for name in ("checkpoint-3", "checkpoint-6"):
        shutil.rmtree(tmp_path / name)
    with pytest.raises(LangBridgeUsageError, match="holds no complete checkpoint-N folder"):
        resume_argument(True, str(tmp_path))


def test_sigterm_leaves_no_scratch_folder(tmp_path):
    script = textwrap.dedent(f"""
        import sys, time
        from modeling_langbridge.files import atomic_folder, atomic_file
        with atomic_folder({str(tmp_path / "out")!r}) as scratch, atomic_file({str(tmp_path / "vocab.json")!r}) as part:
            (scratch / "half.bin").write_bytes(b"x" * 100)
            part.write_text("half")
            print("ready", flush=True)
            time.sleep(60)
    """)
    process = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[1]
    )
    assert process.stdout.readline().strip() == "ready"
    assert len(list(tmp_path.glob(".*.partial-*"))) == 2
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == -signal.SIGTERM
    assert list(tmp_path.iterdir()) == []


def test_vocab_and_eval_outputs_are_kept_unless_overwrite(tokenizer_folders, qwen_clip_dir, images, tmp_path, capsys):
    (tmp_path / "corpus.txt").write_text("a red circle\ntwo blue squares\n")
    out = tmp_path / "vocab.json"
    out.write_text("precious")
    build = [
        "vocab",
        "build",
        *[x for t in tokenizer_folders for x in ("--tokenizer", t)],
        "--corpus",
        tmp_path / "corpus.txt",
        "--size",
        3,
        "--out",
        out,
    ]
    status, error = run_cli(build, capsys)
    assert status == 2 and "vocab.json already exists" in error and "--overwrite" in error
    assert out.read_text() == "precious"
    assert run_cli([*build, "--overwrite"], capsys)[0] == 0
    assert len(SharedVocabulary.load(out)) == 3

    shutil.copy(images / "ok.png", tmp_path / "ok.png")
    (tmp_path / "q.jsonl").write_text(json.dumps({"image": "ok.png", "question": "What?", "answers": ["red"]}) + "\n")
    (tmp_path / "q_scores.json").write_text("precious")
    evaluate = ["eval", "--model", qwen_clip_dir, "--data", tmp_path / "q.jsonl", "--max-new-tokens", 2]
    status, error = run_cli(evaluate, capsys)
    assert status == 2 and "q_scores.json already exists" in error
    assert (tmp_path / "q_scores.json").read_text() == "precious" and not (tmp_path / "q_predictions.jsonl").exists()
    assert run_cli([*evaluate, "--overwrite"], capsys)[0] == 0
    assert json.loads((tmp_path / "q_scores.json").read_text())["overall"]["count"] == 1
    assert not list(tmp_path.glob(".*partial*"))


def test_interpret_and_alignment_outputs_are_kept_unless_overwrite(qwen_clip_dir, images, tmp_path, capsys):
    """An existing overlay, reading or plot is refused before any model loads; with --overwrite it is replaced
    whole (written beside it first, as a file of its own format)."""
    overlay, reading, plot = tmp_path / "o.png", tmp_path / "o.json", tmp_path / "a.png"
    for path in (overlay, reading, plot, plot.with_suffix(".json")):
        path.write_text("precious")
    interpret = ["interpret", images / "ok.png", "--model", qwen_clip_dir, "--out", overlay, "--json", reading]
    status, error = run_cli(interpret, capsys)
    assert status == 2 and "o.png already exists" in error and "--overwrite" in error
    status, error = run_cli([*interpret[:-2]], capsys)  # the overlay alone
    assert status == 2 and "o.png already exists" in error
    overlay.unlink()
    status, error = run_cli(interpret, capsys)  # the JSON too is checked before the work
    assert status == 2 and "o.json already exists" in error and not overlay.exists()

    alignment = ["alignment", "--checkpoints", qwen_clip_dir, qwen_clip_dir, "--images", images / "ok.png"]
    status, error = run_cli([*alignment, "--out", plot], capsys)
    assert status == 2 and "a.png already exists" in error
    plot.unlink()
    status, error = run_cli([*alignment, "--out", plot], capsys)  # its figures' .json beside it is kept too
    assert status == 2 and "a.json already exists" in error and not plot.exists()
    status, error = run_cli([*alignment, "--out", tmp_path / "figures.json"], capsys)
    assert status == 2 and "ends in .json" in error
    assert {p.read_text() for p in (reading, plot.with_suffix(".json"))} == {"precious"}

    assert run_cli([*interpret, "--overwrite"], capsys)[0] == 0
    assert run_cli([*alignment, "--out", plot, "--overwrite"], capsys)[0] == 0
    for png in (overlay, plot):
        with Image.open(png) as written:
            assert written.format == "PNG"
    assert json.loads(reading.read_text())["grid"] and len(json.loads(plot.with_suffix(".json").read_text())) == 2
    assert not list(tmp_path.glob(".*partial*"))


def test_a_pipeline_batch_mixes_image_and_text_only_chats(qwen_clip_dir):
    chat = pipeline("image-text-to-text", model=str(qwen_clip_dir))
    with_image = [
        {
            "role": "user",
            "content": [{"type": "image", "image": random_shapes_image(0)}, {"type": "text", "text": "What?"}],
        }
    ]
    text_only = [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}]
    replies = chat(text=[with_image, text_only, text_only], batch_size=3, max_new_tokens=2, do_sample=False)
    single = chat(text=text_only, max_new_tokens=2, do_sample=False)
    assert len(replies) == 3
    assert replies[1][0]["generated_text"][-1] == replies[2][0]["generated_text"][-1] == single[0]["generated_text"][-1]


# ---------------------------------------------------------------- real vocabularies


@pytest.fixture(scope="module")
def tokenizer_folders(parts):
    return [parts["qwen2"], parts["llama"]]


def official_tokens(parts, n=12) -> dict[str, int]:
    """The first n ordinary byte-level tokens of the tiny Qwen2-style tokenizer, with their real ids."""
    tokenizer = AutoTokenizer.from_pretrained(parts["qwen2"])
    vocabulary = TokenizerVocabulary(tokenizer)
    ids = vocabulary.word_like_ids()[:n]
    return {tokenizer.convert_ids_to_tokens(i): i for i in ids}


def test_official_frequency_files_and_foreign_ids_are_refused(parts, tmp_path):
    tokens = official_tokens(parts)
    counts = dict(zip(tokens, [900, 500, 500, 120, 80, 80, 40, 12, 12, 3, 2, 2]))
    (tmp_path / "frequency.json").write_text(json.dumps(counts))
    with pytest.raises(LangBridgeUsageError, match="looks like a token -> count frequency file"):
        SharedVocabulary.from_official(tmp_path / "frequency.json")
    size = len(AutoTokenizer.from_pretrained(parts["qwen2"]))
    shifted = {token: token_id + size for token, token_id in tokens.items()}
    (tmp_path / "shifted.json").write_text(json.dumps(shifted))
    with pytest.raises(LangBridgeUsageError, match=f"ids at or above the tokenizer's size {size}"):
        SharedVocabulary.from_official(tmp_path / "shifted.json", tokenizer_size=size)
    (tmp_path / "ids.json").write_text(json.dumps(tokens))
    assert SharedVocabulary.from_official(tmp_path / "ids.json", tokenizer_size=size).source["official_ids"] == list(
        tokens.values()
    )


def test_the_llama3_id_position_layout_reads_in_position_order(parts, tmp_path):
    tokens = official_tokens(parts)
    as_dict = SharedVocabulary.from_official(_write(tmp_path / "dict.json", tokens))
    layout = [{token: [token_id, position]} for position, (token, token_id) in enumerate(tokens.items())]
    layout.reverse()  # the file's order is not the ranking; positions are
    as_list = SharedVocabulary.from_official(_write(tmp_path / "llama3.json", layout))
    assert as_list.tokens == as_dict.tokens and as_list.source["official_ids"] == list(tokens.values())
    with pytest.raises(LangBridgeUsageError, match="positions are not 0..1 once each"):
        SharedVocabulary.from_official(_write(tmp_path / "gap.json", [{"a": [1, 0]}, {"b": [2, 5]}]))


def _write(path: Path, payload) -> Path:
    path.write_text(json.dumps(payload))
    return path


def test_from_tokenizer_skips_control_characters_and_counts_what_it_skipped(parts):
    tokenizer = AutoTokenizer.from_pretrained(parts["qwen2"])
    vocabulary = SharedVocabulary.from_tokenizer(tokenizer, 96)
    assert not any(
        ch < " " and ch not in "\t\n\r\x0b\x0c" or ch == "\x7f" for token in vocabulary.tokens for ch in token
    )
    assert not is_word_like("\x00") and not is_word_like("\x1b") and is_word_like(".\n")
    ids = TokenizerVocabulary(tokenizer).word_like_ids()[:96]
    skipped = sum(1 for i in tokenizer.get_vocab().values() if i < ids[-1]) - 95
    assert f"skipping {skipped} special" in vocabulary.source["chosen_as"]
    assert skipped < len(tokenizer.get_vocab()) - 96  # only what lies below the cut


# ---------------------------------------------------------------- every subcommand: status 2, one line, no traceback


def cli_cases(parts, qwen_clip_dir, images, tmp_path):
    """(subcommand, arguments) of user mistakes, a few per subcommand."""
    clip, qwen2 = parts["clip"], parts["qwen2"]
    missing = tmp_path / "missing"
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    for name in (
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "processor_config.json",
        "chat_template.jinja",
    ):
        shutil.copy(Path(qwen_clip_dir) / name, pickled / name)

    class Payload:
        def __reduce__(self):
            return (print, ("never",))

    torch.save({"x": Payload()}, pickled / "pytorch_model.bin")
    torn = tmp_path / "torn"
    shutil.copytree(qwen_clip_dir, torn)
    (torn / "model.safetensors").write_bytes((torn / "model.safetensors").read_bytes()[:1000])
    (tmp_path / "binary.txt").write_bytes(bytes(range(256)) * 8)
    (tmp_path / "bad.jsonl").write_text('{"image": "ok.png", "question": "q", "answers": ["a"]}\n{oops\n')
    (tmp_path / "frequency.json").write_text(json.dumps({"Ġthe": 5, "Ġa": 5}))
    records = llava_records(2)
    records[0]["conversations"][1]["from"] = "bot"
    (tmp_path / "bot.json").write_text(json.dumps(records))
    recipe = recipe_config(
        tmp_path / "bot.yaml",
        model_name_or_path=str(qwen_clip_dir),
        dataset=str(tmp_path / "bot.json"),
        image_folder=str(images),
        output_dir=str(tmp_path / "run"),
    )
    into_model = recipe_config(
        tmp_path / "into.yaml", model_name_or_path=str(torn), dataset=str(tmp_path / "bot.json"), output_dir=str(torn)
    )
    compose_base = ["--vision-model", clip, "--language-model", qwen2, "--out", tmp_path / "c"]
    return [
        ("compose", [*compose_base, "--vocab-size", 0]),
        ("compose", [*compose_base, "--vocab-size", -5]),
        ("compose", [*compose_base, "--projector-hidden-size", "wide"]),
        ("compose", ["--vision-model", "./no/clip", "--language-model", qwen2, "--out", tmp_path / "c"]),
        ("compose", [*compose_base, "--vocab", tmp_path / "binary.txt"]),
        ("compose", [*compose_base, "--min-coverage", 3]),
        ("transfer", ["--adapter", missing, "--language-model", qwen2, "--out", tmp_path / "t"]),
        ("transfer", ["--adapter", qwen_clip_dir, "--language-model", qwen2, "--out", tmp_path / "t"]),
        ("export-adapter", ["--model", qwen2, "--out", tmp_path / "a"]),
        ("export-adapter", ["--model", torn, "--out", tmp_path / "a"]),
        ("export-adapter", ["--model", pickled, "--out", tmp_path / "a"]),
        (
            "vocab build",
            [
                "--tokenizer",
                qwen2,
                "--tokenizer",
                qwen2,
                "--corpus",
                tmp_path / "binary.txt",
                "--size",
                0,
                "--out",
                tmp_path / "v.json",
            ],
        ),
        (
            "vocab build",
            [
                "--tokenizer",
                qwen2,
                "--tokenizer",
                parts["llama"],
                "--corpus",
                tmp_path / "binary.txt",
                "--size",
                4,
                "--out",
                tmp_path / "v.json",
            ],
        ),
        (
            "vocab build",
            [
                "--tokenizer",
                qwen2,
                "--tokenizer",
                "./no/tokenizer",
                "--corpus",
                tmp_path / "bad.jsonl",
                "--size",
                4,
                "--out",
                tmp_path / "v.json",
            ],
        ),
        ("vocab inspect", [tmp_path / "binary.txt"]),
        ("vocab inspect", [missing]),
        (
            "convert-official",
            [
                "--projector",
                pickled / "pytorch_model.bin",
                "--vocab",
                tmp_path / "frequency.json",
                "--out",
                tmp_path / "o",
            ],
        ),
        (
            "convert-official",
            ["--checkpoint", missing, "--vocab", tmp_path / "frequency.json", "--out", tmp_path / "o"],
        ),
        ("train", ["pretrain", "--config", missing]),
        ("train", ["pretrain", "--config", recipe]),
        ("train", ["sft", "--config", into_model]),
        ("train", ["sft", "--config", recipe, "--max_steps", "many"]),
        ("demo", ["--seed", "one"]),
        ("demo", ["--caption-word-loss", "-1"]),
        ("demo", ["--study", "--caption-word-loss", "0.1"]),
        ("interpret", [images / "damaged.png", "--model", qwen_clip_dir, "--out", tmp_path / "o.png"]),
        ("interpret", [images / "ok.png", "--model", torn, "--out", tmp_path / "o.png"]),
        ("interpret", [images / "ok.png", "--model", pickled, "--out", tmp_path / "o.png"]),
        ("interpret", [images / "ok.png", "--model", qwen_clip_dir, "--out", tmp_path / "o.png", "--top-k", 0]),
        ("eval", ["--model", qwen_clip_dir, "--data", tmp_path / "bad.jsonl", "--image-folder", images]),
        ("eval", ["--model", missing, "--data", tmp_path / "bad.jsonl"]),
        ("eval", ["--model", qwen_clip_dir, "--data", tmp_path / "bad.jsonl", "--batch-size", 0]),
        ("alignment", ["--checkpoints", qwen_clip_dir, "--images", images / "ok.png", "--out", tmp_path / "a.png"]),
        ("alignment", ["--checkpoints", missing, qwen_clip_dir, "--images", images, "--out", tmp_path / "a.png"]),
        ("quickstart", ["--seed", "x"]),
    ]


def test_every_subcommand_answers_mistakes_with_one_line_and_status_2(parts, qwen_clip_dir, images, tmp_path, capsys):
    failures = []
    for command, arguments in cli_cases(parts, qwen_clip_dir, images, tmp_path):
        status, error = run_cli([*command.split(), *arguments], capsys)
        if status != 2 or len(error.splitlines()) != 1 or not error.startswith(f"langbridge {command}: error: "):
            failures.append((command, [str(a) for a in arguments], status, error))
    assert not failures, "\n".join(map(str, failures))
    assert not list(tmp_path.glob(".*partial*")) and not (tmp_path / "c").exists() and not (tmp_path / "run").exists()
