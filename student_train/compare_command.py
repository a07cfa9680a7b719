"""`student-train compare`: every method's default student from one cache, side by side.

    student-train compare --cache runs/cache --out runs/compare [--recipes direct,reflow] [--train-steps N]

Trains each recipe (student_train/compare/recipes.py; small budgets, stated there and in
docs/methods.md), evaluates it at 1, 2 and 4 steps on the val split and the unseen prompts, and
writes OUT/compare.json, OUT/compare.md and OUT/grid.png. Rerunning reuses finished students and
evals. Every flag is one field of `CompareConfig` (compare/run.py).
"""

import argparse

from shared.config_flags import add_config_flags, config_from_args
from student_train.compare.run import CompareConfig, run

HELP = "train every method's default student from one cache and compare them: compare.json/.md, grid.png"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_flags(parser, CompareConfig)


def main(args: argparse.Namespace) -> int:
    run(config_from_args(CompareConfig, args))
    return 0
