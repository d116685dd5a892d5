"""Bad input and faults, round three (issue 28, part B): the CLI answers in one line only the errors raised for a
user's mistake or a failed resource and lets a bug show its traceback (a switch shows it for the others too); values
are checked for type before any work, naming the setting and the file; images come as transformers takes them (URL,
path, base64, PIL); a full disk, a read-only place or a path through a file is said as that, with the path, before
the work where it can be foreseen, and leaves nothing half-written; the API answers each refused input in a sentence.
"""

import ast
import base64
import errno
import functools
import http.server
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, AutoTokenizer, pipeline

from modeling_langbridge import LangBridgeConfig
from modeling_langbridge.analysis.interpret import read_patches
from modeling_langbridge.assembly.adapter import LangBridgeAdapter
from modeling_langbridge.assembly.compose import compose
from modeling_langbridge.assembly.hub_configs import read_hub_config
from modeling_langbridge.assembly.tiny import random_shapes_image
from modeling_langbridge.assembly.vocab import SharedVocabulary, TokenizerVocabulary
from modeling_langbridge.cli import main as cli
from modeling_langbridge.errors import (
    LangBridgeResourceError,
    LangBridgeUsageError,
    disk_full_error,
    user_error_message,
)
from modeling_langbridge.model.errors_langbridge import LangBridgeInputError
from modeling_langbridge.model.processing_langbridge import open_image

ROOT = Path(__file__).parents[1]


def run_cli(argv, capsys, env: dict | None = None, monkeypatch=None) -> tuple[int, str, str]:
    """The CLI in this process: its exit status, its one error line, and all it wrote to stderr."""
    for name, value in (env or {}).items():
        monkeypatch.setenv(name, value)
    capsys.readouterr()
    try:
        status = cli([str(a) for a in argv])
    except SystemExit as exit_:
        status = exit_.code
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if ": error:" in line]
    return status, "\n".join(errors), err


def one_line(argv, capsys, command: str) -> str:
    """Run a CLI mistake: status 2, no traceback, one `langbridge CMD: error:` line; the line."""
    status, error, err = run_cli(argv, capsys)
    assert "Traceback" not in err, err
    assert status == 2 and len(error.splitlines()) == 1, (status, err)
    assert error.startswith(f"langbridge {command}: error: "), error
    return error


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    random_shapes_image(0, size=64).save(root / "ok.png")
    Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)).save(root / "grey16.png")
    data = bytearray((root / "ok.png").read_bytes())  # 20 zeroed bytes of image data, the checksum left as it was
    start = data.index(b"IDAT")
    middle = start + 4 + struct.unpack(">I", data[start - 4 : start])[0] // 2
    data[middle : middle + 20] = bytes(20)
    (root / "damaged.png").write_bytes(bytes(data))
    return root


# ---------------------------------------------------------------- the policy: one line for mistakes, bugs show


def test_a_bug_that_raises_a_plain_value_error_or_os_error_shows_its_traceback(tmp_path, capsys, monkeypatch):
    """A ValueError or OSError raised deep inside, of no LangBridge type (the fault is made with monkeypatch: there
    is no real bug to call), leaves `main` as it is, so Python prints its traceback; nothing is printed as a user's
    mistake."""
    vocabulary = tmp_path / "vocab.json"
    SharedVocabulary(tokens=["a", "b"]).save(vocabulary)
    for fault in (ValueError("an index went wrong"), OSError("a device went away"), KeyError("text")):

        def broken(path, fault=fault):
            raise fault

        monkeypatch.setattr(SharedVocabulary, "load", classmethod(lambda cls, path, f=broken: f(path)))
        capsys.readouterr()
        with pytest.raises(type(fault)):
            cli(["vocab", "inspect", str(vocabulary)])
        assert ": error:" not in capsys.readouterr().err
        assert user_error_message(fault) is None


def test_the_real_command_prints_a_bugs_traceback_and_exits_1(tmp_path):
    script = (
        "import sys\n"
        "from modeling_langbridge.assembly.vocab import SharedVocabulary\n"
        "def broken(cls, path): raise ValueError('an index went wrong')\n"
        "SharedVocabulary.load = classmethod(broken)\n"
        "from modeling_langbridge.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    vocabulary = tmp_path / "vocab.json"
    SharedVocabulary(tokens=["a"]).save(vocabulary)
    result = subprocess.run(
        [sys.executable, "-c", script, "vocab", "inspect", str(vocabulary)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k not in ("LANGBRIDGE_TRACEBACK", "HF_DEBUG")},
    )
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr and "ValueError: an index went wrong" in result.stderr
    assert ": error:" not in result.stderr


@pytest.mark.parametrize(
    "switch",
    [
        ("--traceback", "before"),
        ("--traceback", "after"),
        ("LANGBRIDGE_TRACEBACK", "1"),
        ("HF_DEBUG", "1"),
    ],
)
def test_the_switch_shows_the_traceback_of_a_one_line_error(tmp_path, capsys, monkeypatch, switch):
    monkeypatch.delenv("LANGBRIDGE_TRACEBACK", raising=False)
    monkeypatch.delenv("HF_DEBUG", raising=False)
    missing = tmp_path / "missing.json"
    argv = ["vocab", "inspect", missing]
    env = None
    if switch == ("--traceback", "before"):
        argv = ["--traceback", *argv]
    elif switch == ("--traceback", "after"):
        argv = [*argv, "--traceback"]
    else:
        env = {switch[0]: switch[1]}
    status, error, err = run_cli(argv, capsys, env, monkeypatch)
    assert status == 2
    assert "Traceback (most recent call last)" in err and "LangBridgeUsageError" in err
    assert err.strip().splitlines()[-1] == error  # the one line comes last
    assert (
        error
        == f"langbridge vocab inspect: error: {missing} does not exist (--vocab); give an existing shared-vocabulary file."
    )

    monkeypatch.delenv(switch[0], raising=False)
    status, error, err = run_cli(["vocab", "inspect", missing], capsys)
    assert status == 2 and "Traceback" not in err and err.strip() == error  # without it: the line alone


def test_only_errors_a_user_can_act_on_are_one_line():
    assert user_error_message(LangBridgeInputError("x is wrong")) == "x is wrong"
    assert user_error_message(LangBridgeUsageError("y is wrong")) == "y is wrong"
    assert user_error_message(ValueError("an index went wrong")) is None
    assert user_error_message(OSError("no errno")) is None
    assert user_error_message(OSError(errno.EIO, "Input/output error", "/x")) is None
    assert user_error_message(FileNotFoundError(errno.ENOENT, "No such file or directory")) is None  # no path: a bug
    assert user_error_message(FileNotFoundError(errno.ENOENT, "No such file", "/data/a.png")) == (
        "cannot use /data/a.png: it does not exist; give an existing path."
    )
    assert user_error_message(PermissionError(errno.EACCES, "Permission denied", "/data")) == (
        "cannot use /data: permission denied; choose a path you may use, or change its permissions."
    )
    full = user_error_message(OSError(errno.ENOSPC, "No space left on device"))
    assert full.startswith("cannot use a file: the disk is full (no space left on the device)")
    assert disk_full_error("/out", ValueError("not a disk")) is None
    assert "(os error 28)" not in str(disk_full_error("/out", RuntimeError("I/O error: No space left (os error 28)")))


def test_no_plain_error_is_raised_for_a_users_mistake():
    """The sweep stays swept: in the model files, the toolbox and the CLI (training/ is its own), mistakes raise
    LangBridge's types; a plain ValueError, OSError or FileNotFoundError raised there would be shown as a bug."""
    folders = ["model", "assembly", "analysis", "cli"]
    files = [
        *(p for f in folders for p in (ROOT / "modeling_langbridge" / f).rglob("*.py")),
        ROOT / "modeling_langbridge" / "files.py",
    ]
    plain = {"ValueError", "OSError", "FileNotFoundError", "FileExistsError", "IOError", "NotADirectoryError"}
    found = []
    for path in files:
        if path.name == "train.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                name = getattr(node.exc.func, "id", None)
                if name in plain:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} raises {name}")
    assert not found, "\n".join(found)


# ---------------------------------------------------------------- values checked before any work, naming the file


@pytest.mark.parametrize("value", ["64", True, 100.7])
def test_a_wrong_type_in_a_hub_config_is_refused_naming_setting_and_file(parts, tmp_path, capsys, value):
    config = tmp_path / "pair.json"
    config.write_text(
        json.dumps(
            {
                "vision_model_name_or_path": str(parts["clip"]),
                "language_model_name_or_path": str(parts["qwen2"]),
                "projector_hidden_size": value,
                "shared_vocab_size": 64,
            }
        )
    )
    expected = f"{config}: projector_hidden_size must be a whole number of at least 1, such as 5120, not {value!r}."
    with pytest.raises(LangBridgeInputError) as caught:
        read_hub_config(config)
    assert str(caught.value) == expected
    error = one_line(["compose", "--config", config, "--out", tmp_path / "model"], capsys, "compose")
    assert error == f"langbridge compose: error: {expected}"
    assert not (tmp_path / "model").exists()


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        (
            "projector_hidden_size",
            "64",
            "projector_hidden_size must be a whole number of at least 1, such as 5120, not '64'.",
        ),
        ("combine_in_float32", "yes", "combine_in_float32 must be true or false, not 'yes'."),
        ("coefficient_activation", "soft", "coefficient_activation must be 'none' or 'softmax', not 'soft'."),
        (
            "vision_feature_layer",
            1.5,
            "vision_feature_layer must be a layer index such as -2, or a non-empty list of them, not 1.5.",
        ),
    ],
)
def test_a_wrong_type_in_a_saved_config_json_is_refused_naming_the_file(
    qwen_clip_dir, images, tmp_path, capsys, key, value, expected
):
    folder = tmp_path / "model"
    shutil.copytree(qwen_clip_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, key: value}))
    message = f"{folder / 'config.json'}: {expected}"
    for load in (LangBridgeConfig.from_pretrained, AutoModelForImageTextToText.from_pretrained):
        with pytest.raises(LangBridgeInputError) as caught:
            load(folder)
        assert str(caught.value) == message
    for command, argv in (
        ("export-adapter", ["--model", folder, "--out", tmp_path / "adapter"]),
        ("interpret", [images / "ok.png", "--model", folder, "--out", tmp_path / "o.png"]),
    ):
        assert one_line([*command.split(), *argv], capsys, command) == f"langbridge {command}: error: {message}"
    with pytest.raises(LangBridgeInputError, match=f"^{key} must be"):  # the API, without a file
        LangBridgeConfig(**{key: value})


def test_a_wrong_type_in_a_sub_config_names_the_file(qwen_clip_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(qwen_clip_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["text_config"]["hidden_size"] = "64"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(LangBridgeInputError, match=r"config\.json: Field 'hidden_size' expected int, got str"):
        AutoModelForImageTextToText.from_pretrained(folder)


def test_tiling_settings_without_a_grid_are_refused_and_old_folders_still_load(
    parts, qwen_clip_dir, tmp_path, capsys, caplog
):
    expected = (
        "vision_aspect_ratio 'anyres_max_4' only applies when images are tiled, and image_grid_pinpoints is not set "
        "(one view per image): give image_grid_pinpoints too (with langbridge-hf installed: `langbridge compose "
        "--image-grid-pinpoints llava-next`), or leave it out."
    )
    with pytest.raises(LangBridgeInputError) as caught:
        LangBridgeConfig(vision_aspect_ratio="anyres_max_4")
    assert str(caught.value) == expected
    with pytest.raises(LangBridgeInputError, match="patch_merge_type 'flat' only applies when images are tiled"):
        LangBridgeConfig(patch_merge_type="flat")
    with pytest.raises(LangBridgeInputError, match="anyres_max_4' and patch_merge_type 'flat' only apply"):
        compose(str(parts["clip"]), str(parts["qwen2"]), vision_aspect_ratio="anyres_max_4", patch_merge_type="flat")
    base = ["compose", "--vision-model", parts["clip"], "--language-model", parts["qwen2"], "--out", tmp_path / "m"]
    error = one_line([*base, "--vision-aspect-ratio", "anyres_max_4"], capsys, "compose")
    assert error == f"langbridge compose: error: {expected}" and not (tmp_path / "m").exists()

    hub_config = tmp_path / "pair.json"
    hub_config.write_text(json.dumps({"projector_hidden_size": 32, "patch_merge_type": "spatial"}))
    with pytest.raises(LangBridgeInputError, match=f"^{hub_config}: patch_merge_type 'spatial' only applies"):
        read_hub_config(hub_config)

    folder = tmp_path / "saved-with-it"  # what an earlier version saved: it loads, the setting ignored, with a warning
    shutil.copytree(qwen_clip_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "vision_aspect_ratio": "anyres_max_4"}))
    loaded = LangBridgeConfig.from_pretrained(folder)
    assert loaded.vision_aspect_ratio == "anyres" and not loaded.tiling
    assert (
        "sets vision_aspect_ratio 'anyres_max_4' without image_grid_pinpoints" in caplog.text + capsys.readouterr().err
    )


def test_dtype_and_top_k_are_refused_naming_the_flag_and_what_is_accepted(
    parts, qwen_clip_dir, images, tmp_path, capsys
):
    base = ["compose", "--vision-model", parts["clip"], "--language-model", parts["qwen2"], "--out", tmp_path / "m"]
    error = one_line([*base, "--dtype", "float64x"], capsys, "compose")
    assert "argument --dtype: invalid choice: 'float64x'" in error
    assert all(name in error for name in ("auto", "float32", "bfloat16", "float16"))
    with pytest.raises(LangBridgeUsageError, match=r"^dtype 'float64x' is not one of auto, float32, bfloat16, float16"):
        compose(
            str(parts["clip"]), str(parts["qwen2"]), projector_hidden_size=16, shared_vocab_size=8, dtype="float64x"
        )

    interpret = ["interpret", images / "ok.png", "--model", qwen_clip_dir, "--out", tmp_path / "o.png"]
    error = one_line([*interpret, "--top-k", 100000], capsys, "interpret")
    assert error == (
        f"langbridge interpret: error: --top-k 100000 is more than the 96 tokens of {qwen_clip_dir}'s shared "
        "vocabulary; give at most 96."
    )
    error = one_line([*interpret, "--top-k", 100000, "--method", "nearest"], capsys, "interpret")
    assert "top_k 100000 is not a whole number from 1 to" in error and "readable words" in error
    assert not (tmp_path / "o.png").exists()
    model = AutoModelForImageTextToText.from_pretrained(qwen_clip_dir)
    processor = AutoProcessor.from_pretrained(qwen_clip_dir)
    with pytest.raises(
        LangBridgeUsageError, match=r"^top_k 97 is not a whole number from 1 to 96, the number of tokens"
    ):
        read_patches(model, processor, random_shapes_image(0), top_k=97)
    assert len(read_patches(model, processor, random_shapes_image(0), top_k=96).tokens[0]) == 96


def test_a_frequency_file_is_refused_without_a_tokenizer_size(parts, tmp_path, capsys):
    """Counts unique and in falling order, in the millions, as a token -> count file has them: refused even when no
    tokenizer is given to compare with (convert-official --projector)."""
    tokenizer = AutoTokenizer.from_pretrained(parts["qwen2"])
    ids = TokenizerVocabulary(tokenizer).word_like_ids()[:12]
    tokens = [tokenizer.convert_ids_to_tokens(i) for i in ids]
    counts = [1_900_000 - 150_000 * n for n in range(12)]
    (tmp_path / "falling.json").write_text(json.dumps(dict(zip(tokens, counts))))
    with pytest.raises(LangBridgeUsageError, match=r"fall from 1,900,000 to 250,000 in the file's order"):
        SharedVocabulary.from_official(tmp_path / "falling.json")
    millions = [9_000_000 - 700_000 * n for n in range(12)]
    shuffled = dict(zip(tokens, [millions[i] for i in (3, 0, 7, 1, 11, 5, 2, 9, 4, 8, 6, 10)]))
    (tmp_path / "huge.json").write_text(json.dumps(shuffled))
    with pytest.raises(LangBridgeUsageError, match=r"values up to 9,000,000, more than any tokenizer has tokens"):
        SharedVocabulary.from_official(tmp_path / "huge.json")
    (tmp_path / "ids.json").write_text(json.dumps(dict(zip(tokens, ids))))  # real ids pass
    assert SharedVocabulary.from_official(tmp_path / "ids.json").source["official_ids"] == ids

    projector = tmp_path / "mm_projector.bin"
    torch.save(
        {f"model.mm_projector.{i}.{k}": torch.zeros(2) for i in (0, 2, 3) for k in ("weight", "bias")}, projector
    )
    argv = ["convert-official", "--projector", projector, "--vocab", tmp_path / "falling.json", "--out", tmp_path / "a"]
    error = one_line(argv, capsys, "convert-official")
    assert "as the counts of a token -> count frequency file do" in error and not (tmp_path / "a").exists()


# ---------------------------------------------------------------- image inputs as transformers takes them


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextmanager
def image_server(folder: Path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def chat(image_block: dict) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image", **image_block}, {"type": "text", "text": "What?"}]}]


def test_image_urls_are_fetched_and_refused_when_they_cannot_be(qwen_clip_dir, images, monkeypatch):
    """A real HTTP server on 127.0.0.1 (HF_HUB_OFFLINE=1 is set for the tests: it governs the Hub, not image URLs,
    as in transformers' own `load_image`)."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    processor = AutoProcessor.from_pretrained(qwen_clip_dir)
    local = processor(images=[str(images / "ok.png")], text="<image>", return_tensors="pt")["pixel_values"]
    answer = pipeline("image-text-to-text", model=str(qwen_clip_dir))
    expected = answer(text=chat({"path": str(images / "ok.png")}), max_new_tokens=3, do_sample=False)
    with image_server(images) as address:
        url = f"{address}/ok.png"
        fetched = processor(images=[url], text="<image>", return_tensors="pt")["pixel_values"]
        assert torch.equal(fetched, local)
        for block in ({"url": url}, {"image": url}):
            reply = answer(text=chat(block), max_new_tokens=3, do_sample=False)
            assert reply[0]["generated_text"][-1] == expected[0]["generated_text"][-1]
        grey = np.asarray(open_image(f"{address}/grey16.png"))  # the project's checks apply to fetched images too
        assert np.array_equal(grey, np.asarray(open_image(images / "grey16.png")))
        with pytest.raises(LangBridgeInputError, match=r"cannot read the image http://.*/damaged\.png .*checksum"):
            open_image(f"{address}/damaged.png")
        with pytest.raises(LangBridgeInputError) as caught:
            answer(text=chat({"url": f"{address}/missing.png"}), max_new_tokens=3)
        assert str(caught.value) == (
            f"could not fetch the image {address}/missing.png (the server answered 404 File not found); check the "
            "address and the network, or download the image and give its local path."
        )
    port = closed_port()
    with pytest.raises(
        LangBridgeInputError, match=rf"^could not fetch the image http://127\.0\.0\.1:{port}/ok\.png \(.+\); check"
    ):
        processor(images=[f"http://127.0.0.1:{port}/ok.png"], text="<image>", return_tensors="pt")


def test_base64_images_and_data_urls_work_as_in_transformers(qwen_clip_dir, images):
    processor = AutoProcessor.from_pretrained(qwen_clip_dir)
    local = processor(images=[str(images / "ok.png")], text="<image>", return_tensors="pt")["pixel_values"]
    encoded = base64.b64encode((images / "ok.png").read_bytes()).decode()
    for given in (encoded, f"data:image/png;base64,{encoded}"):
        assert torch.equal(processor(images=[given], text="<image>", return_tensors="pt")["pixel_values"], local)
    answer = pipeline("image-text-to-text", model=str(qwen_clip_dir))
    expected = answer(text=chat({"path": str(images / "ok.png")}), max_new_tokens=3, do_sample=False)
    for block in ({"base64": encoded}, {"url": f"data:image/png;base64,{encoded}"}):
        reply = answer(text=chat(block), max_new_tokens=3, do_sample=False)
        assert reply[0]["generated_text"][-1] == expected[0]["generated_text"][-1]
    with pytest.raises(LangBridgeInputError, match=r"cannot read the image base64 image data \(.*checksum"):
        open_image(base64.b64encode((images / "damaged.png").read_bytes()).decode())
    with pytest.raises(LangBridgeInputError, match=r"^cannot read the image no/such\.png \(no such file, and not an"):
        open_image("no/such.png")
    with pytest.raises(LangBridgeInputError, match=r"data: URL that is not base64-encoded"):
        open_image("data:image/png,rawbytes")


# ---------------------------------------------------------------- what the API answers


def test_pixel_values_with_one_or_four_channels_are_refused(qwen_clip_dir):
    model = AutoModelForImageTextToText.from_pretrained(qwen_clip_dir).eval()
    processor = AutoProcessor.from_pretrained(qwen_clip_dir)
    inputs = processor(images=[random_shapes_image(0)], text="<image> What?", return_tensors="pt")
    rgb = inputs["pixel_values"]
    for pixel_values, channels in ((rgb[:, :1], 1), (torch.cat([rgb, rgb[:, :1]], dim=1), 4)):
        with pytest.raises(LangBridgeInputError) as caught:
            model(input_ids=inputs["input_ids"], pixel_values=pixel_values)
        assert str(caught.value).startswith(
            f"pixel_values have {channels} colour channel(s) per pixel but the vision tower takes 3"
        )
    with pytest.raises(LangBridgeInputError, match=r"pixel_values have shape \(3, 32, 32\), not \[images, channels"):
        model(input_ids=inputs["input_ids"], pixel_values=rgb[0])


def test_an_empty_prompt_is_refused(qwen_clip_dir):
    model = AutoModelForImageTextToText.from_pretrained(qwen_clip_dir).eval()
    expected = r"^The prompt is empty \(input_ids hold no tokens\): give at least one token"
    with pytest.raises(LangBridgeInputError, match=expected):
        model.generate(input_ids=torch.zeros(1, 0, dtype=torch.long), max_new_tokens=2)
    with pytest.raises(LangBridgeInputError, match=expected):
        pipeline("image-text-to-text", model=str(qwen_clip_dir))(text="", max_new_tokens=2)


def test_an_image_without_pixels_is_refused(qwen_clip_dir):
    processor = AutoProcessor.from_pretrained(qwen_clip_dir)
    for image, shown in (
        (Image.new("RGB", (0, 0)), "the image given as a PIL image has no pixels (0x0)"),
        (Image.new("L", (0, 5)), "the image given as a PIL image has no pixels (0x5)"),
        (np.zeros((0, 0, 3), dtype=np.uint8), "the image given as an array has no pixels (0x0x3)"),
    ):
        with pytest.raises(LangBridgeInputError) as caught:
            processor(images=[image], text="<image>", return_tensors="pt")
        assert str(caught.value) == f"{shown}; give an image at least 1 pixel wide and high."
    with pytest.raises(LangBridgeInputError, match=r"has no pixels \(0x0\); give an image at least 1 pixel wide"):
        pipeline("image-text-to-text", model=str(qwen_clip_dir))(
            text=chat({"image": Image.new("RGB", (0, 0))}), max_new_tokens=2
        )


def test_an_empty_batch_fails_in_transformers_own_pipeline_before_langbridge(qwen_clip_dir):
    """`pipeline(text=[])`: transformers' ImageTextToTextPipeline indexes the empty list before anything of the
    model's runs (the same for every model), so LangBridge cannot answer it; this records where it fails, so a
    transformers that answers it differently is noticed."""
    answer = pipeline("image-text-to-text", model=str(qwen_clip_dir))
    with pytest.raises(IndexError) as caught:
        answer(text=[], max_new_tokens=2)
    frames = [str(entry.path) for entry in caught.traceback]
    assert "pipelines" in frames[-1] and not any("modeling_langbridge" in f for f in frames[1:])


# ---------------------------------------------------------------- resources: the path and the cause


@contextmanager
def small_disk(path: Path, size: str = "256k", read_only: bool = False):
    """A real small file system (tmpfs) mounted at `path`; skipped where mounting is not allowed (not root)."""
    path.mkdir()
    options = f"size={size}" + (",ro" if read_only else "")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small file system here ({mounted.stderr.strip()}); needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk: Path) -> None:
    """Write until the disk is full."""
    handle = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(handle, bytes(4096))
    except OSError as error:
        assert error.errno == errno.ENOSPC
    finally:
        os.close(handle)


@contextmanager
def unwritable(tmp_path: Path):
    """A folder this process may not write in: a read-only file system for root (which permissions do not stop),
    a folder without write permission for anyone else."""
    if os.geteuid() == 0:
        with small_disk(tmp_path / "read-only", read_only=True) as folder:
            yield folder, "the file system is read-only"
    else:
        folder = tmp_path / "locked"
        folder.mkdir()
        folder.chmod(0o555)
        try:
            yield folder, "permission denied"
        finally:
            folder.chmod(0o755)


def test_compose_onto_a_full_disk_is_refused_before_writing_naming_the_path(parts, tmp_path, capsys):
    with small_disk(tmp_path / "disk", "256k") as disk:
        out = disk / "model"
        argv = ["compose", "--vision-model", parts["clip"], "--language-model", parts["qwen2"], "--out", out]
        error = one_line([*argv, "--projector-hidden-size", 64, "--vocab-size", 96], capsys, "compose")
        assert error.startswith(f"langbridge compose: error: cannot write {out}: it needs about ")
        assert "(the model's weights) and the disk holding it has " in error
        assert error.endswith(" free; free space on that disk or choose another place.")
        assert "damaged" not in error and sorted(p.name for p in disk.iterdir()) == []


def test_a_disk_that_fills_while_writing_is_named_and_nothing_half_written_is_left(qwen_clip_dir, tmp_path, capsys):
    with small_disk(tmp_path / "disk", "128k") as disk:
        fill(disk)
        out = disk / "adapter"
        error = one_line(["export-adapter", "--model", qwen_clip_dir, "--out", out], capsys, "export-adapter")
        assert error.startswith(
            f"langbridge export-adapter: error: cannot write {out}: the disk is full (no space left on the device) "
        ) and error.endswith("free space on that disk or choose another place. Nothing half-written was kept.")
        with pytest.raises(LangBridgeResourceError) as caught:  # the API: an OSError with errno and path
            LangBridgeAdapter.from_model_folder(qwen_clip_dir).save_pretrained(out)
        assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(out)

        (tmp_path / "corpus.txt").write_text("a red circle\ntwo blue squares\n" * 50)
        vocabulary = disk / "vocab.json"
        argv = ["vocab", "build", "--tokenizer", qwen_clip_dir, "--tokenizer", qwen_clip_dir]
        argv += ["--corpus", tmp_path / "corpus.txt", "--size", 4, "--out", vocabulary]
        error = one_line(argv, capsys, "vocab build")
        assert error.startswith(f"langbridge vocab build: error: cannot write {vocabulary}: the disk is full")
        assert sorted(p.name for p in disk.iterdir()) == ["filler"]


def test_outputs_that_cannot_be_written_are_refused_before_any_work(qwen_clip_dir, images, parts, tmp_path, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a folder")
    error = one_line(
        ["export-adapter", "--model", qwen_clip_dir, "--out", a_file / "adapter"], capsys, "export-adapter"
    )
    assert error == (
        f"langbridge export-adapter: error: cannot write {a_file / 'adapter'} (--out): {a_file} is a file, not a "
        "folder; give a path under a folder."
    )
    error = one_line(["export-adapter", "--model", qwen_clip_dir, "--out", a_file], capsys, "export-adapter")
    assert error == f"langbridge export-adapter: error: {a_file} is a file, not a folder; give a new folder to save in."

    with unwritable(tmp_path) as (folder, cause):
        broken_llm = tmp_path / "broken-llm"  # loading it would fail: the output is refused first, before any work
        broken_llm.mkdir()
        argv = ["compose", "--vision-model", parts["clip"], "--language-model", broken_llm, "--out", folder / "m"]
        error = one_line(argv, capsys, "compose")
        assert error == (
            f"langbridge compose: error: cannot write {folder / 'm'} (--out): {cause} in {folder}; choose a place you "
            "may write to."
        )
        error = one_line(
            ["interpret", images / "ok.png", "--model", qwen_clip_dir, "--out", folder / "o.png"], capsys, "interpret"
        )
        assert error.endswith(f"{cause} in {folder}; choose a place you may write to.")
        (tmp_path / "q.jsonl").write_text(json.dumps({"image": "ok.png", "question": "?", "answers": ["a"]}) + "\n")
        error = one_line(
            ["eval", "--model", qwen_clip_dir, "--data", tmp_path / "q.jsonl", "--out", folder / "run"], capsys, "eval"
        )
        assert error.startswith(
            f"langbridge eval: error: cannot write {folder / 'run_predictions.jsonl'} (--out): {cause}"
        )
        assert sorted(p.name for p in folder.iterdir()) == []


# ---------------------------------------------------------------- remote code


def test_a_saved_folder_carries_errors_langbridge_and_raises_its_own_error_without_the_package(qwen_clip_dir, tmp_path):
    """The folder's own errors_langbridge.py travels and loads with trust_remote_code, where this package is absent:
    a refused input raises the folder's LangBridgeInputError, a ValueError."""
    assert (qwen_clip_dir / "errors_langbridge.py").exists()
    script = (
        "import sys, torch\n"
        "sys.modules['modeling_langbridge'] = None\n"
        "from transformers import AutoModelForImageTextToText\n"
        "model = AutoModelForImageTextToText.from_pretrained(sys.argv[1], trust_remote_code=True)\n"
        "try:\n"
        "    model(input_ids=torch.ones(1, 4, dtype=torch.long), pixel_values=torch.zeros(1, 4, 32, 32))\n"
        "except ValueError as error:\n"
        "    print(type(error).__module__, type(error).__name__, error)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(qwen_clip_dir)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=dict(os.environ, HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1"),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    module, name, *message = result.stdout.strip().splitlines()[-1].split(" ", 2)
    assert module.startswith("transformers_modules") and module.endswith("errors_langbridge")
    assert name == "LangBridgeInputError" and message[0].startswith("pixel_values have 4 colour channel(s)")
