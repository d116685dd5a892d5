"""The layout's promises: the files a checkpoint carries import only each other, the old import paths of the flat
layout still work (with a warning naming the new place), and the installed distribution has no generic names."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
MODEL_FILES = sorted((ROOT / "modeling_langbridge" / "model").glob("*_langbridge.py"))


def test_the_shipped_model_files_import_only_each_other():
    shipped = {path.stem for path in MODEL_FILES}
    assert shipped == {
        "configuration_langbridge",
        "modeling_langbridge",
        "processing_langbridge",
        "projection_langbridge",
        "tiling_langbridge",
        "compatibility_langbridge",
        "errors_langbridge",
    }
    for path in MODEL_FILES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                assert node.level == 1 and node.module in shipped, f"{path.name}: from {'.' * node.level}{node.module}"
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
                assert not any(n.split(".")[0] in ("modeling_langbridge", "langbridge_training") for n in names), (
                    path.name
                )


OLD_PATHS = [  # (old module, new module, a name both give)
    ("modeling_langbridge.transfer", "modeling_langbridge.assembly.transfer", "transfer"),
    ("modeling_langbridge.compose", "modeling_langbridge.assembly.compose", "compose"),
    ("modeling_langbridge.modeling_langbridge", "modeling_langbridge.model.modeling_langbridge", "LangBridgeProjector"),
    ("modeling_langbridge.harness.runner", "modeling_langbridge.analysis.harness.runner", "HarnessRunner"),
]


def test_old_import_paths_still_work_and_name_the_new_place():
    """In a fresh interpreter: each old path gives the very same object, and its first import warns where it went."""
    script = "; ".join(
        f"from {old} import {name} as a; from {new} import {name} as b; assert a is b" for old, new, name in OLD_PATHS
    )
    result = subprocess.run(
        [sys.executable, "-W", "always::FutureWarning", "-c", script], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    for old, new, _ in OLD_PATHS:
        moved_package = old if not old.endswith(".runner") else old.rsplit(".", 1)[0]  # the package that moved
        assert f"`{moved_package}` is now `{new.removesuffix('.runner')}`" in result.stderr


def test_compose_accepts_its_old_argument_names_with_a_warning(parts):
    from modeling_langbridge.assembly.compose import compose

    with pytest.warns(FutureWarning, match=r"compose\(vocab_size=...\) is now shared_vocab_size=..."):
        composed = compose(str(parts["clip"]), str(parts["qwen2"]), projector_hidden_size=8, vocab_size=16)
    assert composed.model.config.shared_vocab_size == 16


def test_the_recipes_install_under_a_name_that_cannot_collide():
    """The training/ folder is the package `langbridge_training`; no `training` is importable outside the repository."""
    import langbridge_training

    assert Path(langbridge_training.__file__).parent == ROOT / "training"
    outside = subprocess.run([sys.executable, "-c", "import training"], capture_output=True, text=True, cwd="/")
    assert outside.returncode != 0 and "No module named 'training'" in outside.stderr


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["pretrain", "sft"])
def test_the_recipes_launch_as_modules_from_any_folder(recipe, tmp_path):
    """`python -m langbridge_training.<recipe>` (what `accelerate launch -m` and torchrun run) outside the repository."""
    result = subprocess.run(
        [sys.executable, "-m", f"langbridge_training.{recipe}", "--help"], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "--model_name_or_path" in result.stdout and "--image_folder" in result.stdout


PACKAGES = {"modeling_langbridge": ROOT / "modeling_langbridge", "langbridge_training": ROOT / "training"}


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_every_relative_import_names_a_module_that_exists(package):
    """Read, not imported: modules that need an optional package (the lmms-eval plugin) cannot be imported here, yet
    a relative import one level off in them fails only where that package is installed."""
    root = PACKAGES[package]
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        here = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.ImportFrom) and node.level):
                continue
            base = here[: len(here) - (node.level - 1)]
            assert len(base) >= 1 and base[0] == package, (
                f"{path}: from {'.' * node.level}{node.module} leaves {package}"
            )
            target = root.joinpath(*base[1:], *(node.module.split(".") if node.module else []))
            if node.module:  # from .module import name: the module must exist
                found = target.with_suffix(".py").is_file() or (target / "__init__.py").is_file()
            else:  # from . import module: each name a module of the package
                found = all((target / f"{a.name}.py").is_file() or (target / a.name).is_dir() for a in node.names)
            assert found, f"{path.relative_to(ROOT)}: from {'.' * node.level}{node.module or ''} names no module"
