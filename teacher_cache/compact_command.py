"""`teacher-cache compact STORE [--grace-minutes 15]`: fold the store's manifest files into one, so that
opening the store (and every resume check) reads one file instead of one per commit.

    teacher-cache compact runs/cache
    teacher-cache compact s3://bucket/cache --grace-minutes 0     # nothing else reads or writes it now

Safe beside readers and writers (shared/store/compaction.py, docs/store.md "Compaction"): the new
file is published whole before anything is removed; the files it replaces are removed by a later
compaction, once it is older than the grace period. `teacher-cache run` compacts by itself past
`--compact-after` commit files.
"""

import argparse
from dataclasses import dataclass

from shared.config_flags import add_config_flags, config_from_args, option
from shared.errors import DistillCacheError
from shared.store.compaction import DEFAULT_GRACE_SECONDS, compact_store

HELP = "fold a store's manifest files into one (fast opens at millions of rows); safe while others read and write"


@dataclass(frozen=True)
class CompactConfig:
    """The flags of `teacher-cache compact` (STORE is positional, as for info and verify)."""

    grace_minutes: float = option(
        DEFAULT_GRACE_SECONDS / 60,
        "remove files that an earlier compaction replaced only once it is this old: longer than any "
        "reader takes to list and read the manifest (0: now, when nothing else reads the store)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store", metavar="STORE", help="store folder or fsspec URL (memory://, s3://, ...)")
    add_config_flags(parser, CompactConfig)


def main(args: argparse.Namespace) -> int:
    config = config_from_args(CompactConfig, args)
    if not config.grace_minutes >= 0:
        raise DistillCacheError(
            f"--grace-minutes must be a number of minutes >= 0, not {config.grace_minutes}"
        )
    report = compact_store(args.store, grace_seconds=config.grace_minutes * 60)
    if report.removed:
        print(f"removed {len(report.removed)} manifest files replaced by an earlier compaction")
    if report.written:
        print(
            f"folded {report.folded} manifest files ({report.rows} rows) into manifest/{report.written.split('/', 1)[1]}"
        )
    else:
        print("nothing to fold: the manifest is one file already")
    if report.waiting:
        print(
            f"kept {report.waiting} replaced files until their replacement is {config.grace_minutes:g} min old "
            "(readers may be reading them); the next compact removes them"
        )
    return 0
