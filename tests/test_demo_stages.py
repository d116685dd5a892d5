"""The demo's stage cache: a finished stage is reused, and a moved demo folder resumes from where it is now."""

import json
import os
from pathlib import Path

from langbridge_training.demo.console import Console
from langbridge_training.demo.experiment import DemoSettings, Stages


def stages_in(out):
    out.mkdir(parents=True, exist_ok=True)
    return Stages(out, DemoSettings.quick(seed=0), Console(out / "demo.log"))


def write_model(folder):
    (folder / "weights.txt").write_text("trained")
    return {"path": str(folder / "weights.txt"), "files": [str(folder)], "note": "kept as it is"}


def test_a_moved_demo_folder_reuses_its_stages_at_the_new_place(tmp_path):
    first = stages_in(tmp_path / "run")
    result = first.run("llm1", ("seed",), write_model)
    assert result["path"] == str(tmp_path / "run" / "llm1" / "weights.txt")
    assert str(tmp_path) not in (tmp_path / "run" / "llm1" / ".done.json").read_text()

    (tmp_path / "run").rename(tmp_path / "moved")
    moved = stages_in(tmp_path / "moved")
    calls = []
    reused = moved.run("llm1", ("seed",), lambda folder: calls.append(folder))
    assert calls == [] and moved.cached == ["llm1"]
    assert reused == {
        "path": str(tmp_path / "moved" / "llm1" / "weights.txt"),
        "files": [str(tmp_path / "moved" / "llm1")],
        "note": "kept as it is",
    }
    assert open(reused["path"]).read() == "trained"


def test_a_relative_demo_folder_is_kept_relative_and_a_sibling_folder_untouched(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sibling = str(tmp_path / "run-2" / "x")  # shares the folder's name as a prefix, not its path
    stages = stages_in(tmp_path / "run")
    stages.run("a", ("seed",), lambda folder: {"own": str(folder), "sibling": sibling})
    done = json.loads((tmp_path / "run" / "a" / ".done.json").read_text())
    assert done["result"] == {"own": "<out>/a", "sibling": sibling}

    relative = Stages(Path("run"), stages.settings, stages.console)  # the same folder, named from the working dir
    assert relative.run("a", ("seed",), lambda folder: None) == {"own": os.path.join("run", "a"), "sibling": sibling}
