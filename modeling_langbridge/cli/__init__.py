"""The `langbridge` command: a dispatcher over one module per command group.

    assemble.py   compose, transfer, export-adapter, vocab build / inspect, convert-official
    train.py      train (the recipes), demo, quickstart
    analyse.py    interpret, eval, alignment
    common.py     the parser, argument types, path checks

Each group's `add_commands` declares its commands, binding each to its function and to the path arguments that
must exist; `main` parses, checks the paths, runs, and turns a user's mistake (or a failed resource: a full disk, a
folder it may not write in) into one line and exit status 2. Any other error is a bug and shows its traceback;
`--traceback`, `LANGBRIDGE_TRACEBACK=1` or the Hugging Face CLIs' `HF_DEBUG=1` show the traceback of a one-line
error too.
"""

import argparse
import os
import sys
import traceback

from . import analyse, assemble, train
from .common import Parser, check_paths

GROUPS = (assemble, train, analyse)


TRACEBACK_HELP = (
    "on an error answered in one line, print its traceback first (also LANGBRIDGE_TRACEBACK=1 or HF_DEBUG=1); "
    "other errors are bugs and always show it"
)


def build_parser() -> Parser:
    parser = Parser(
        prog="langbridge",
        description="LangBridge vision-language adapters for transformers.",
        epilog="A mistake in the input is answered in one line (langbridge CMD: error: ...) with exit status 2; a "
        "traceback means a bug.",
    )
    parser.add_argument("--traceback", action="store_true", help=TRACEBACK_HELP)
    commands = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.add_commands(commands)
    add_traceback_flag(commands)
    return parser


def add_traceback_flag(commands) -> None:
    """`--traceback` after the command too (`langbridge compose ... --traceback`), in every subcommand's help."""
    for subparser in commands.choices.values():
        subparser.add_argument("--traceback", action="store_true", dest="traceback_after_command", help=TRACEBACK_HELP)
        for action in subparser._actions:
            if isinstance(action, argparse._SubParsersAction):
                add_traceback_flag(action)


def traceback_wanted(args) -> bool:
    """`--traceback`, or LANGBRIDGE_TRACEBACK / HF_DEBUG (the switch of huggingface_hub's `hf`) set to a true value."""
    true = ("1", "true", "yes", "on")
    flags = getattr(args, "traceback", False) or getattr(args, "traceback_after_command", False)
    return bool(flags) or any(
        os.environ.get(name, "").strip().lower() in true for name in ("LANGBRIDGE_TRACEBACK", "HF_DEBUG")
    )


def main(argv: list[str] | None = None) -> int:
    from ..notices import quiet_known_notices

    quiet_known_notices()
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and args.command != "train":
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.overrides = unknown
    command = args.command + (f" {args.vocab_command}" if args.command == "vocab" else "")
    try:
        check_paths(args)
        return args.run(args)
    except Exception as error:  # a user's mistake is one line and status 2; anything else is a bug: traceback
        from ..errors import user_error_message

        message = user_error_message(error)
        if message is None:
            raise
        if traceback_wanted(args):
            traceback.print_exception(error, file=sys.stderr)
        print(f"langbridge {command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
