"""Where the modules of the first, flat layout went. Their old import paths keep working, with a FutureWarning that
names the new place, so code and notebooks written against 0.1 run unchanged."""

import importlib
import importlib.abc
import importlib.util
import warnings

MOVED = {
    **{
        f"modeling_langbridge.{name}_langbridge": f"modeling_langbridge.model.{name}_langbridge"
        for name in ("configuration", "modeling", "processing", "projection", "tiling")
    },
    **{
        f"modeling_langbridge.{name}": f"modeling_langbridge.assembly.{name}"
        for name in ("vocab", "corpus", "compose", "transfer", "adapter", "convert_official", "chat_templates", "tiny")
    },
    **{
        f"modeling_langbridge.{name}": f"modeling_langbridge.analysis.{name}"
        for name in ("interpret", "alignment", "evaluation", "harness")
    },
}


def new_location(name: str) -> str | None:
    """The module's current name, for an old name or a module below one (`...harness.models`); else None."""
    for old, new in MOVED.items():
        if name == old or name.startswith(old + "."):
            return new + name[len(old) :]
    return None


class MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers the old names, and only those, with the module at the new place (the same object, so classes and
    functions are identical)."""

    def find_spec(self, fullname, path, target=None):
        return importlib.util.spec_from_loader(fullname, self) if new_location(fullname) else None

    def create_module(self, spec):
        new = new_location(spec.name)
        warnings.warn(
            f"`{spec.name}` is now `{new}`; import it from there (the old path will be removed).",
            FutureWarning,
            stacklevel=2,
        )
        return importlib.import_module(new)

    def exec_module(self, module):
        pass  # the module at the new place is already imported
