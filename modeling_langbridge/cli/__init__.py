"""The `langbridge` command: a dispatcher over one module per command group.

    assemble.py   compose, transfer, export-adapter, vocab build / inspect, convert-official
    train.py      train (the recipes), demo, quickstart
    analyse.py    interpret, eval, alignment
    common.py     the parser, argument types, path checks

Each group's `add_commands` declares its commands, binding each to its function and to the path arguments that
must exist; `main` parses, checks the paths, runs, and turns a user's mistake into one line and exit status 2.
"""

import sys

from . import analyse, assemble, train
from .common import Parser, check_paths

GROUPS = (assemble, train, analyse)


def build_parser() -> Parser:
    parser = Parser(prog="langbridge", description="LangBridge vision-language adapters for transformers.")
    commands = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.add_commands(commands)
    return parser


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
        print(f"langbridge {command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
