"""`student-train run`: train a few-step student from a teacher cache alone and export it.

    student-train run --cache runs/cache --out runs/student --method lcm --student lora --lora-rank 16

Every flag is one field of `TrainConfig` (config.py), with its help text (shared/config_flags.py
makes the flags); the loop is training_loop.py, the exported folder export.py.
"""

import argparse

from shared.config_flags import add_config_flags, config_from_args
from student_train.config import TrainConfig

HELP = "train a few-step student (direct | lcm | progressive; full | lora) from a store and export it"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_flags(parser, TrainConfig)


def main(args: argparse.Namespace) -> int:
    from student_train.training.loop import train

    train(config_from_args(TrainConfig, args))
    return 0
