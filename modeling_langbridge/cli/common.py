"""What every command group shares: the parser (one-line errors, defaults in --help), argument types, the check
that given paths exist and that outputs can be written (before any work), and printing a build's notes."""

import argparse
import inspect
from pathlib import Path


class HelpWithDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """`--help` names every option's default: in its help text, or appended as "(default: X)"."""

    def _get_help_string(self, action):
        text = action.help or ""
        nothing = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if "default" in text or nothing or not action.option_strings:
            return text
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse with its errors on one line: `langbridge CMD: error: ...`, exit status 2; help shows defaults."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpWithDefaults)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not allowed; give a whole number of at least 1")
    return value


def non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0.0:
        raise argparse.ArgumentTypeError(f"{value} is not allowed; give 0 or a positive number")
    return value


def share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not a share; give a number from 0 to 1, such as 0.8")
    return value


def defaults_of(function) -> dict:
    """A function's own defaults, by parameter name: a command states them, never restates them."""
    return {name: p.default for name, p in inspect.signature(function).parameters.items() if p.default is not p.empty}


def add_kernels_option(parser) -> None:
    """The explicit Hub-kernels switch of every command that loads a model (transformers >= 5.25 asks for Hub
    kernels on CUDA by default, which fails offline without a cache)."""
    parser.add_argument(
        "--use-kernels",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="transformers' Hub kernels for the models loaded (default: only when the Hub may be reached, so never "
        "with HF_HUB_OFFLINE=1; USE_HUB_KERNELS=0 turns them off in any case)",
    )


def command(parser, run, existing: tuple = (), sources: tuple = (), outputs: tuple = ()) -> None:
    """Bind a subcommand to its function, with the path arguments that must exist when given ((attribute, what it
    is) pairs), those that are a local path or a Hub id, and the outputs it writes ((attribute, "file" or "folder")
    pairs: checked writable before any work)."""
    parser.set_defaults(run=run, existing=existing, sources=sources, outputs=outputs)


def flag_of(name: str) -> str:
    return name if name in ("image",) else "--" + name.replace("_", "-")


def check_paths(args) -> None:
    """Before any work: refuse a missing path as missing (before transformers reads it as a Hub id), and an output
    that cannot be written (its folder is a file, read-only or not ours to write in; an output folder that is a
    file or holds files already)."""
    from ..errors import LangBridgeUsageError
    from ..files import check_writable, require_source

    for name, what in args.existing:
        values = getattr(args, name, None)
        for value in values if isinstance(values, list) else [values]:
            if value is not None and not Path(value).expanduser().exists():
                raise LangBridgeUsageError(f"{value} does not exist ({flag_of(name)}); give an existing {what}.")
    for name in args.sources:
        values = getattr(args, name, None)
        for value in values if isinstance(values, list) else [values]:
            if value is not None:
                require_source(value, name.replace("_", " "))
    for name, kind in getattr(args, "outputs", ()):
        value = getattr(args, name, None)
        if value is not None:
            check_writable(value, kind, flag_of(name))


def print_notes(composed) -> None:
    for note in composed.notes:
        print(f"- {note}")
