"""`teacher-cache merge A B ... --out C`: combine teammates' stores of one teacher into one store.

    teacher-cache merge alice/cache bob/cache s3://team/cache-carol --out s3://team/cache

Only stores with the same teacher fingerprint, capture settings and fields combine; a sample present
in several is kept once (from the first store that has it). C must be new or an earlier (killed)
merge of these stores; run the command again to resume. Training, eval, info, verify and copy then
see one ordinary store (docs/store.md, "Copy and merge", says why merge rather than `--cache A,B`).
"""

import argparse
from dataclasses import dataclass

from shared.config_flags import add_config_flags, config_from_args, option
from teacher_cache.copy_command import CopyConfig, run_copy

HELP = "combine stores of one teacher and settings into one store, each sample once; resumable"


@dataclass(frozen=True, kw_only=True)  # kw_only: a required flag after CopyConfig's defaults
class MergeConfig(CopyConfig):
    out: str = option(None, "the merged store: a new place, or an earlier merge to resume", required=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "stores", metavar="STORE", nargs="+", help="the stores to combine (folders or fsspec URLs)"
    )
    add_config_flags(parser, MergeConfig)


def main(args: argparse.Namespace) -> int:
    config = config_from_args(MergeConfig, args)
    return run_copy(args.stores, config.out, config)
