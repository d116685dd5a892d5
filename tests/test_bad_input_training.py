"""Bad input and faults on the training side (issue 28): values refused before any work by the one place that owns
them, runs that would lose work (a finished run overwritten, two runs into one folder, a full disk), and training data
named in this project's words. Each refusal is one sentence naming the setting or file and what is accepted; through
the CLI, `langbridge CMD: error: ...` and status 2, never a traceback."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import yaml
from transformers import TrainerCallback

from langbridge_training import pretrain
from langbridge_training.arguments import LangBridgeArguments, SettingError, parse_recipe
from langbridge_training.data import load_training_data
from langbridge_training.demo.experiment import DemoSettings
from langbridge_training.demo.study import run_study
from langbridge_training.outputs import LOCK_FILE, claim_output_dir
from modeling_langbridge.assembly.tiny import random_shapes_image
from modeling_langbridge.cli import main as cli
from modeling_langbridge.errors import LangBridgeUsageError

REPOSITORY = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    for seed in range(2):
        random_shapes_image(seed, size=64).save(root / f"{seed}.png")
    return root


def captions(n: int = 4) -> list[dict]:
    return [
        {
            "image": f"{i % 2}.png",
            "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "a red circle"}],
        }
        for i in range(n)
    ]


def recipe(path: Path, **settings) -> Path:
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


@pytest.fixture
def stage1(qwen_clip_dir, images, tmp_path):
    """A stage-1 recipe on the tiny model and four captions, into tmp_path/run (write it with `make(**changes)`)."""
    data = tmp_path / "data.json"
    data.write_text(json.dumps(captions()))

    def make(name: str = "p.yaml", **changes) -> Path:
        settings = {
            "model_name_or_path": str(qwen_clip_dir),
            "dataset": str(data),
            "image_folder": str(images),
            "output_dir": str(tmp_path / "run"),
        }
        return recipe(tmp_path / name, **{**settings, **changes})

    return make


def run_cli(argv, capsys) -> tuple[int, str]:
    """The CLI in this process: its exit status and its error line (there must be no traceback)."""
    capsys.readouterr()
    try:
        status = cli([str(a) for a in argv])
    except SystemExit as exit_:
        status = exit_.code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if ": error:" in line]
    assert len(errors) <= 1, errors
    return status, "\n".join(errors)


def run_recipe(recipe_module, config: Path, callbacks=None):
    return recipe_module.main(*parse_recipe(config), callbacks=callbacks)


def weights(folder: Path) -> dict[str, bytes]:
    return {
        name: (folder / name).read_bytes()
        for name in ("model.safetensors", "adapter/langbridge_adapter.safetensors")
        if (folder / name).exists()
    }


# ---------------------------------------------------------------- bad case 1: an infinite or huge caption_word_loss


@pytest.mark.parametrize(("written", "said"), [(".inf", "inf"), ("1.0e+30", "1e+30")])
def test_an_infinite_or_huge_caption_word_loss_in_a_recipe_is_refused_before_any_work(
    stage1, tmp_path, capsys, written, said
):
    config = stage1()
    config.write_text(config.read_text() + f"caption_word_loss: {written}\n")
    status, error = run_cli(["train", "pretrain", "--config", config], capsys)
    assert status == 2
    assert error == (
        f"langbridge train: error: caption_word_loss (in recipe {config}) is {said}; give 0 (off) or a weight above 0 "
        "and at most 100, such as 0.1 (the study's remedy)."
    )
    assert not (tmp_path / "run").exists()  # refused before any work: no model loaded, nothing written
    status, error = run_cli(["train", "pretrain", "--config", stage1(), "--caption_word_loss", "inf"], capsys)
    assert status == 2 and "caption_word_loss (given as --caption_word_loss) is inf" in error
    for value in (math.inf, 1e30, math.nan, -0.5, True):  # the API refuses what the recipe file would give
        with pytest.raises(
            SettingError, match=r"^caption_word_loss is .*; give 0 \(off\) or a weight above 0 and at most 100"
        ):
            LangBridgeArguments(dataset="data.json", caption_word_loss=value)
    assert LangBridgeArguments(dataset="data.json", caption_word_loss=100).caption_word_loss == 100
    with pytest.raises(SettingError, match=r"^coefficient_spread_loss is nan; give 0 \(off\) or a weight above 0"):
        LangBridgeArguments(dataset="data.json", coefficient_spread_loss=math.nan)


@pytest.mark.parametrize("value", ["inf", "1e30", "nan", "-1"])
def test_the_demo_refuses_an_infinite_or_huge_caption_word_loss_when_parsing(tmp_path, capsys, value):
    out = tmp_path / "a-file"  # were the value accepted, the demo would stop at once here, on another error
    out.write_text("")
    status, error = run_cli(["demo", "--quick", "--caption-word-loss", value, "--out", out], capsys)
    assert status == 2
    assert error.startswith(f"langbridge demo: error: argument --caption-word-loss: {float(value)!r} is not allowed")
    assert "give 0 (off) or a weight above 0 and at most 100, such as 0.1" in error
    with pytest.raises(SettingError, match=r"caption_word_loss is inf; give 0 \(off\) or a weight"):
        DemoSettings(caption_word_loss=math.inf)


# ---------------------------------------------------------------- bad case 2: a repeated study seed


def test_a_repeated_study_seed_is_refused_before_any_work(tmp_path, capsys):
    out = tmp_path / "a-file"  # were the seeds accepted, the study would stop at once here, on another error
    out.write_text("")
    status, error = run_cli(["demo", "--study", "--quick", "--seeds", "0", "0", "1", "--out", out], capsys)
    assert status == 2
    assert error == (
        "langbridge demo: error: --seeds 0 0 1 repeats seed 0, which would run once and count twice in every mean, "
        "minimum, maximum and spread of the summary; give each seed once."
    )
    with pytest.raises(LangBridgeUsageError, match=r"^seeds 2 1 2 repeats seed 2"):
        run_study(out, seeds=[2, 1, 2], quick=True)


# ---------------------------------------------------------------- bad case 3: a finished run's output_dir


def test_a_finished_runs_folder_is_kept_unless_resume_or_overwrite_is_asked(stage1, tmp_path, capsys):
    run = tmp_path / "run"
    assert run_cli(["train", "pretrain", "--config", stage1()], capsys)[0] == 0
    before = weights(run)
    assert set(before) == {"model.safetensors", "adapter/langbridge_adapter.safetensors"}
    assert not (run / LOCK_FILE).exists()  # the claim goes with the run

    again = stage1("again.yaml", learning_rate=0.1)
    status, error = run_cli(["train", "pretrain", "--config", again], capsys)
    assert status == 2
    assert error == (
        f"langbridge train: error: output_dir {run} holds a finished run (adapter, model.safetensors, "
        "trainer_state.json), which is kept: set resume_from_checkpoint: true to continue that run, or "
        "overwrite_output_dir: true to start over and replace it (or give this run another output_dir)."
    )
    assert weights(run) == before

    assert run_cli(["train", "pretrain", "--config", again, "--overwrite_output_dir", "true"], capsys)[0] == 0
    after = weights(run)
    assert set(after) == set(before) and all(after[name] != before[name] for name in before)
    assert not list(run.glob(".*partial*"))


def test_an_interrupted_runs_checkpoints_are_kept_unless_resume_or_overwrite_is_asked(stage1, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoint-2").mkdir(parents=True)
    (run / "checkpoint-2" / "trainer_state.json").write_text("{}")
    with pytest.raises(
        LangBridgeUsageError, match=r"holds an earlier run's checkpoints \(checkpoint-2\), which is kept"
    ):
        run_recipe(pretrain, stage1())
    assert (run / "checkpoint-2" / "trainer_state.json").exists()


# ---------------------------------------------------------------- bad case 4: two runs into one output_dir


class Paused(TrainerCallback):
    """Holds a training at its first step until released."""

    def __init__(self):
        self.started, self.release = threading.Event(), threading.Event()

    def on_step_begin(self, args, state, control, **kwargs):
        self.started.set()
        assert self.release.wait(timeout=300)


def test_two_trainings_into_one_folder_the_second_is_refused_at_once(stage1, tmp_path):
    run, paused, outcome = tmp_path / "run", Paused(), {}
    # Both read first: reading a recipe resets accelerate's process-wide state, which the running Trainer uses.
    first_arguments, second_arguments = parse_recipe(stage1()), parse_recipe(stage1("second.yaml", learning_rate=0.1))

    def first():
        try:
            outcome["trainer"] = pretrain.main(*first_arguments, callbacks=[paused])
        except BaseException as error:  # noqa: BLE001  (reported by the assertion below)
            outcome["error"] = error
        finally:
            paused.started.set()

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert paused.started.wait(timeout=300) and "error" not in outcome, outcome
        with pytest.raises(LangBridgeUsageError) as refused:
            pretrain.main(*second_arguments)
    finally:
        paused.release.set()
        thread.join(timeout=300)
    message = str(refused.value)
    assert message.startswith(f"output_dir {run} is being written by another run (PID {os.getpid()} on ")
    assert message.endswith("wait for it to end, or give this run another output_dir.")
    assert "error" not in outcome and set(weights(run)) == {
        "model.safetensors",
        "adapter/langbridge_adapter.safetensors",
    }


def test_a_claim_is_refused_across_processes_and_dies_with_its_process(stage1, tmp_path, capsys):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
                import time
                from langbridge_training.outputs import claim_output_dir
                with claim_output_dir({str(run)!r}):
                    print("held", flush=True)
                    time.sleep(300)
            """),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPOSITORY,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        status, error = run_cli(["train", "pretrain", "--config", stage1()], capsys)
        assert status == 2 and f"is being written by another run (PID {holder.pid} on " in error
        with claim_output_dir(run, claims=False):  # another rank of the holder's run: shares its claim
            pass
    finally:
        holder.send_signal(signal.SIGKILL)  # a crash: no clean-up runs
        holder.wait(timeout=30)
    assert (run / LOCK_FILE).exists()  # left behind by the killed run, and claimed again at once
    with claim_output_dir(run):
        assert json.loads((run / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert not run.exists() or not (run / LOCK_FILE).exists()


# ---------------------------------------------------------------- weak: demo seeds and flags the run would ignore


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["--seed", "-1"], "argument --seed: -1 is not allowed; give a whole number from 0 to 2147483647"),
        (["--seed", "2.5"], "argument --seed: '2.5' is not a whole number"),
        (["--seed", str(2**40)], f"argument --seed: {2**40} is not allowed; give a whole number from 0 to 2147483647"),
        (["--study", "--seeds", "0", "-3"], "argument --seeds: -3 is not allowed; give a whole number from 0"),
        (["--seeds", "1", "2"], "--seeds is for --study or --remedies; a single demo run takes one seed: --seed N."),
        (["--study", "--seed", "3"], "--seed is for a single demo run; --study runs without it (give its seeds with"),
        (["--study", "--coefficients", "softmax"], "--coefficient-activation is for a single demo run; --study runs"),
        (["--remedies", "--caption-word-loss", "0.1"], "--caption-word-loss is for a single demo run; --remedies runs"),
        (
            ["--study", "--coefficient-spread-loss", "1"],
            "--coefficient-spread-loss is for a single demo run; --study runs without it",
        ),
        (["--remedies", "--langbridge-pretrain-lr", "5e-3"], "--langbridge-pretrain-lr is for a single demo run"),
        (
            ["--langbridge-pretrain-lr", "0"],
            "argument --langbridge-pretrain-lr: 0.0 is not allowed; give a learning rate above 0 and at most 1",
        ),
        (
            ["--coefficient-spread-loss", "-1"],
            "argument --coefficient-spread-loss: -1.0 is not allowed; give 0 (off) or a weight above 0 and at most 100",
        ),
        (["--study", "--remedies"], "--study and --remedies are separate runs; give one of them"),
        (["--study", "--paper-stage-1"], "--paper-stage-1 is for a single demo run; --study runs it, with both"),
        (
            ["--remedies", "--paper-stage-1"],
            "--paper-stage-1 is for a single demo run; --remedies runs it beside every",
        ),
        (
            ["--paper-stage-1", "--caption-word-loss", "1"],
            "--paper-stage-1 trains LangBridge's stage 1 with the caption loss alone at stage 1's rate; "
            "--caption-word-loss changes that stage 1. Give one of them.",
        ),
        (["--paper-stage-1", "--langbridge-pretrain-lr", "5e-3"], "--langbridge-pretrain-lr changes that stage 1"),
    ],
)
def test_demo_seeds_and_ignored_flags_are_refused_when_parsing(tmp_path, capsys, arguments, expected):
    out = tmp_path / "a-file"
    out.write_text("")
    status, error = run_cli(["demo", "--quick", *arguments, "--out", out], capsys)
    assert status == 2 and error.startswith("langbridge demo: error: ") and expected in error


def test_demo_settings_refuse_seeds_that_cannot_be_seeds():
    for seed in (-1, 2**31, 1.5, "3"):
        with pytest.raises(SettingError, match="^seed is .*; give a whole number from 0 to 2147483647"):
            DemoSettings(seed=seed)


# ---------------------------------------------------------------- weak: malformed training data


def test_malformed_training_data_is_named_in_this_projects_words(tmp_path, capsys, stage1):
    records = captions(2)
    records[1]["image"] = 5
    (tmp_path / "int.json").write_text(json.dumps(records))
    with pytest.raises(LangBridgeUsageError, match=r'int\.json: record 1 has an "image" of 5; give an image path'):
        load_training_data(str(tmp_path / "int.json"))

    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(LangBridgeUsageError, match=r"empty\.json holds no records; give at least one LLaVA record"):
        load_training_data(str(tmp_path / "empty.json"))

    lines = tmp_path / "data.jsonl"
    lines.write_text("\n".join(json.dumps(record) for record in captions(3)) + "\n")
    assert len(load_training_data(str(lines))) == 3  # a JSON Lines file that exists is read, one record a line
    lines.write_text(json.dumps(captions(1)[0]) + "\n{oops\n")
    with pytest.raises(LangBridgeUsageError, match=r"data\.jsonl: line 2 is not JSON .*one LLaVA record per line"):
        load_training_data(str(lines))

    (tmp_path / "data.csv").write_text("image,caption\n")
    with pytest.raises(LangBridgeUsageError, match=r"data\.csv is a file of a kind the recipes do not read; give a"):
        load_training_data(str(tmp_path / "data.csv"))

    status, error = run_cli(["train", "pretrain", "--config", stage1(dataset=str(tmp_path / "empty.json"))], capsys)
    assert status == 2 and error.endswith(
        f"{tmp_path / 'empty.json'} holds no records; give at least one LLaVA record "
        '({"image": ..., "conversations": [{"from": "human", "value": ...}, '
        '{"from": "gpt", "value": ...}]}).'
    )
    assert not (tmp_path / "run").exists()


def test_a_messages_dataset_with_malformed_rows_names_the_row(tmp_path, qwen_clip_dir):
    from datasets import Dataset
    from transformers import AutoProcessor

    from langbridge_training.data import DataReport, fit_to_length

    folder = tmp_path / "messages"
    Dataset.from_dict({"messages": [["hello"], ["there"]], "images": [[], []]}).save_to_disk(folder)
    processor = AutoProcessor.from_pretrained(qwen_clip_dir)
    with pytest.raises(LangBridgeUsageError, match=rf"{folder}: row 0: a turn is 'hello'; give `messages` as a list"):
        fit_to_length(load_training_data(str(folder)), processor, 16, None, "chat", DataReport(), str(folder))
    Dataset.from_dict({"text": ["a"]}).save_to_disk(tmp_path / "text")
    with pytest.raises(
        LangBridgeUsageError, match=r"has no \['images', 'messages'\] column\(s\) \(it has \['text'\]\)"
    ):
        load_training_data(str(tmp_path / "text"))


# ---------------------------------------------------------------- weak: a full disk during training


@pytest.fixture
def small_disk(tmp_path):
    """A real 32 MB file system (tmpfs) to fill, where this user may mount one (root); None elsewhere."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = (
        hasattr(os, "geteuid")
        and os.geteuid() == 0
        and shutil.which("mount") is not None
        and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(disk)], capture_output=True
        ).returncode
        == 0
    )
    try:
        yield disk if mounted else None
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path, leave: int = 256 * 1024) -> None:
    """Fill `disk` until `leave` bytes are free: enough to start a run, not to save a model."""
    free = shutil.disk_usage(disk).free
    with open(disk / "filler", "wb") as filler:
        filler.write(b"\0" * max(0, free - leave))


def test_a_full_disk_is_said_as_that_and_keeps_the_previous_weights(stage1, small_disk, tmp_path, capsys, monkeypatch):
    """On a real small file system where it can be mounted; elsewhere the writer safetensors uses is made to fail as
    it does on a full disk (the only stand-in in this module)."""
    run = (small_disk or tmp_path) / "run"
    config = stage1(output_dir=str(run))
    assert run_cli(["train", "pretrain", "--config", config], capsys)[0] == 0
    before = weights(run)
    if small_disk is not None:
        fill(small_disk)
    else:
        from safetensors import SafetensorError

        def full(*args, **kwargs):
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

        monkeypatch.setattr("transformers.modeling_utils.safe_save_file", full)
    status, error = run_cli(["train", "pretrain", "--config", config, "--overwrite_output_dir", "true"], capsys)
    assert status == 2
    assert error.startswith(f"langbridge train: error: cannot save the run into output_dir {run}: the disk is full")
    assert "damaged" not in error and "free space on that disk or choose another place" in error
    assert weights(run) == before  # the previous weights and adapter, whole
    assert not list(run.glob(".*partial*")) and not (run / LOCK_FILE).exists()
