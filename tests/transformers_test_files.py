"""transformers' own shared model test suites, taken at test time from the installed version's source distribution.

transformers publishes its common test mixins (`ModelTesterMixin`, `ConfigTester`, ...) only in its source tree, and
its sdist on the package registry carries the top-level `tests/test_*.py` files of that tree. `load()` downloads the
sdist of the installed `transformers.__version__` with pip, extracts the test files it needs into a cache outside the
repository and imports them as the package `hf_transformers_tests`, so their relative imports
(`from .generation.test_utils import ...`) resolve. Nothing of transformers' is kept in this repository.

The sdist lacks the test sub-packages the mixins import (`tests/generation/test_utils.py`, `tests/exporters/`,
`tests/utils/`): each one the sdist lacks is replaced by a stub written here (see `STUBS`), and `missing` names them so
that the tests which needed them are skipped with that reason. Their own test dependency, `parameterized`, is in the
project's `dev` extra.

Cache: `$LANGBRIDGE_TEST_CACHE`, else `$XDG_CACHE_HOME/langbridge-tests`, else `~/.cache/langbridge-tests`; one folder
per transformers version, built in a temporary folder and renamed into place, so a finished folder is never seen half
written and two processes building it at once both end up with one complete copy. Where the sdist cannot be had (no
route to the package registry, a version the registry does not have), `load()` raises `Unavailable` with the reason;
nothing is cached then, so the next run tries again.
"""

import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from types import SimpleNamespace

import transformers

PACKAGE = "hf_transformers_tests"

# The files wanted from the sdist's `tests/` folder. The first two are required; the others are the modules the
# first two import relatively, taken from the sdist when it has them (no release so far does).
REQUIRED = ("test_modeling_common.py", "test_configuration_common.py")
OPTIONAL = ("generation/test_utils.py", "exporters/test_export.py", "utils/test_configuration_utils.py")

# Stand-ins for the optional files when the sdist lacks them: just the names the required files import.
STUBS = {
    "generation/test_utils.py": '''"""Stub written by langbridge's tests: the sdist lacks transformers' tests/generation/test_utils.py."""


class GenerationTesterMixin:
    """Not transformers' mixin: a placeholder that runs no test (see `missing` in transformers_test_files.py)."""
''',
    "exporters/test_export.py": '''"""Stub written by langbridge's tests: the sdist lacks transformers' tests/exporters/test_export.py."""


class ExportTesterMixin:
    """Not transformers' mixin: a placeholder that runs no test (see `missing` in transformers_test_files.py)."""
''',
    "utils/test_configuration_utils.py": '''"""Stub written by langbridge's tests: the sdist lacks transformers' tests/utils/test_configuration_utils.py."""

# ConfigTester reads these only for configs without sub-configs (check_config_arguments_init); composite configs
# return before using them.
config_common_kwargs = {}
''',
}
MISSING_LIST = "MISSING.txt"  # in the cached folder: the optional files the sdist lacked, one a line
COMPLETE = "COMPLETE"  # written last: the folder is whole


class Unavailable(RuntimeError):
    """transformers' test files cannot be had here; the message says why."""


def cache_root() -> Path:
    if os.environ.get("LANGBRIDGE_TEST_CACHE"):
        return Path(os.environ["LANGBRIDGE_TEST_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "langbridge-tests"


def version_folder(version: str = transformers.__version__) -> Path:
    return cache_root() / f"transformers-{version}"


def pip(*args: str, timeout: int = 600) -> None:
    """Run pip of this interpreter; `Unavailable` with pip's last lines when it fails."""
    quick = ["--retries", "2", "--timeout", "30"]  # fail fast without a route to the registry (pip's default: 5 tries)
    command = [sys.executable, "-m", "pip", *args, *quick, "--disable-pip-version-check", "--no-input", "--quiet"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as error:
        raise Unavailable(
            f"`pip {' '.join(args)}` took more than {timeout} s (no route to the package registry?)"
        ) from error
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        tail = " | ".join([line for line in lines if line.startswith("ERROR")] or lines[-3:])
        raise Unavailable(f"`pip {' '.join(args)}` failed (no route to the package registry?): {tail}")


def build(version: str, folder: Path) -> None:
    """Download transformers' sdist for `version` and lay its wanted test files out in `folder` as `PACKAGE`."""
    with tempfile.TemporaryDirectory() as download:
        pip("download", f"transformers=={version}", "--no-deps", "--no-binary", ":all:", "--dest", download)
        archives = list(Path(download).glob("transformers-*.tar.gz"))
        if not archives:
            raise Unavailable(f"pip downloaded no source distribution of transformers {version}")
        with tarfile.open(archives[0]) as archive:
            members = {}
            for member in archive.getmembers():
                parts = Path(member.name).parts  # transformers-<version>/tests/...
                if len(parts) > 2 and parts[1] == "tests" and member.isfile():
                    members["/".join(parts[2:])] = member
            absent = [name for name in REQUIRED if name not in members]
            if absent:
                raise Unavailable(f"the source distribution of transformers {version} has no tests/{absent[0]}")
            package = folder / PACKAGE
            missing = []
            for name in REQUIRED + OPTIONAL:
                target = package / name
                target.parent.mkdir(parents=True, exist_ok=True)
                if name in members:
                    target.write_bytes(archive.extractfile(members[name]).read())
                else:
                    target.write_text(STUBS[name], encoding="utf-8")
                    missing.append(name)
    for init in [package, *(p for p in package.rglob("*") if p.is_dir())]:
        (init / "__init__.py").touch()
    (folder / MISSING_LIST).write_text("".join(f"{name}\n" for name in missing), encoding="utf-8")
    (folder / COMPLETE).touch()


def ensure(version: str = transformers.__version__) -> Path:
    """The cached folder for `version`, built first if needed (idempotent; safe when processes race)."""
    folder = version_folder(version)
    if (folder / COMPLETE).exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        build(version, scratch)
        scratch.chmod(0o755)  # mkdtemp makes it private; the cache is as readable as any other
        if folder.exists() and not (folder / COMPLETE).exists():
            shutil.rmtree(folder, ignore_errors=True)  # left half-built by a process that died before renaming
        try:
            scratch.rename(folder)
        except OSError:
            if not (folder / COMPLETE).exists():  # not another process's finished copy: a real failure
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return folder


def load(version: str = transformers.__version__) -> SimpleNamespace:
    """transformers' test modules for the installed version: `modeling` (test_modeling_common), `configuration`
    (test_configuration_common), `generation` (tests/generation/test_utils, or its stub), `missing` (the optional
    files the sdist lacked and stubs replace), `folder` and `version`. Raises `Unavailable` with the reason."""
    if importlib.util.find_spec("parameterized") is None:
        raise Unavailable("their test dependency `parameterized` is not installed (the project's dev extra has it)")
    folder = ensure(version)
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    missing = (folder / MISSING_LIST).read_text(encoding="utf-8").split()
    try:
        modules = {
            name: importlib.import_module(f"{PACKAGE}.{module}")
            for name, module in (
                ("modeling", "test_modeling_common"),
                ("configuration", "test_configuration_common"),
                ("generation", "generation.test_utils"),
            )
        }
    except ImportError as error:
        raise Unavailable(f"transformers {version}'s test files do not import here: {error}") from error
    return SimpleNamespace(**modules, missing=missing, folder=folder, version=version)
