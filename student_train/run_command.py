"""`student-train run`: train a few-step student from a teacher cache alone and export it.

    student-train run --cache runs/cache --out runs/student --method lcm --student lora --lora-rank 16

Every flag is one field of `TrainConfig` (config.py), with its help text; the loop is
training_loop.py, the exported folder export.py.
"""

import argparse
import dataclasses
import typing

from student_train.config import TrainConfig

HELP = "train a few-step student (direct | lcm | progressive; full | lora) from a store and export it"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    hints = typing.get_type_hints(TrainConfig)
    for spec in dataclasses.fields(TrainConfig):
        flag = "--" + spec.name.replace("_", "-")
        kind = hints[spec.name]
        help_text = spec.metadata.get("help", "")
        if kind is bool:
            parser.add_argument(flag, dest=spec.name, action="store_true", help=help_text)
        elif spec.metadata.get("required"):
            parser.add_argument(flag, dest=spec.name, type=kind, required=True, help=help_text)
        else:
            parser.add_argument(
                flag,
                dest=spec.name,
                type=kind,
                default=spec.default,
                help=f"{help_text} (default: {spec.default})",
            )


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(**{spec.name: getattr(args, spec.name) for spec in dataclasses.fields(TrainConfig)})


def main(args: argparse.Namespace) -> int:
    from student_train.training_loop import train

    train(config_from_args(args))
    return 0
