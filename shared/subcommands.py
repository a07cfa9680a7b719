"""A command line made of subcommands, each in its own module, imported only when used.

A subcommand module defines `HELP` (one line), `add_arguments(parser)` and `main(args) -> int`.
Only the chosen subcommand's module is imported (so `teacher-cache info` never pays for torch or
breaks with another subcommand); `--help` without a subcommand imports them all to list them.
"""

import argparse
import importlib
import sys

from shared.cli_errors import run_cli


def build_parser(
    prog: str, description: str, commands: dict[str, str], chosen: str | None = None
) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in commands.items():
        if chosen is not None and name != chosen:
            subparsers.add_parser(name)  # listed, not imported
            continue
        module = importlib.import_module(module_name)
        sub = subparsers.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(_module=module)
    return parser


def main_for(prog: str, description: str, commands: dict[str, str], argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    chosen = argv[0] if argv and argv[0] in commands else None
    args = build_parser(prog, description, commands, chosen).parse_args(argv)
    return run_cli(lambda: args._module.main(args), prog)
