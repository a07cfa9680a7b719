"""A command line made of subcommands, each in its own module, imported only when used.

A subcommand module defines `HELP` (one line), `add_arguments(parser)` and `main(args) -> int`.
"""

import argparse
import importlib
import sys

from shared.cli_errors import run_cli


def build_parser(prog: str, description: str, commands: dict[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in commands.items():
        module = importlib.import_module(module_name)
        sub = subparsers.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(_module=module)
    return parser


def main_for(prog: str, description: str, commands: dict[str, str], argv: list[str] | None = None) -> int:
    parser = build_parser(prog, description, commands)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    return run_cli(lambda: args._module.main(args), prog)
