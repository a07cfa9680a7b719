"""`student-train eval`: the student at 1, 2, 4 steps next to the teacher at the same steps.

    student-train eval --cache runs/cache --student runs/student --out runs/eval [--steps 1,2,4]

Evaluates on the store's `val` split (never trained on) and on every row of the unseen-prompt
store (`--unseen-cache`, default `<cache>_unseen` when it exists); writes metrics.json and grid.png.
Every flag is one field of `EvalConfig` (evaluation.py), with its help text.
"""

import argparse

from shared.config_flags import add_config_flags, config_from_args
from student_train.eval.run import EvalConfig, run

HELP = "evaluate a student on the val split and unseen prompts: metrics.json + grid.png"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_flags(parser, EvalConfig)


def main(args: argparse.Namespace) -> int:
    run(config_from_args(EvalConfig, args))
    return 0
