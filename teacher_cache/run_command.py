"""`teacher-cache run`: the command line of phase one; every flag is one CaptureConfig field.

    teacher-cache run --out runs/cache                           # embedded teacher, bundled prompts
    teacher-cache run --teacher PATH_OR_ID --prompts prompts.csv --out STORE --steps 50 --guidance 7.5 \\
        --features "down_blocks.*,mid_block,up_blocks.*" --fields noise,cond,final_latents

The flags and their help come from CaptureConfig's fields (config.py, shared/config_flags.py).
"""

import argparse

from shared.config_flags import add_config_flags, config_from_args
from teacher_cache.config import CaptureConfig

HELP = "run a diffusers teacher once over prompts x seeds and store everything it computed"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_flags(parser, CaptureConfig)


def main(args: argparse.Namespace) -> int:
    from teacher_cache.runner import print_summary, run  # torch and diffusers load only when running

    config = config_from_args(CaptureConfig, args)
    print_summary(config, run(config))
    return 0
