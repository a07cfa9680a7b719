"""`teacher-cache gc STORE [--apply] [--grace-hours 24]`: list (dry run) or remove what killed and racing
writers left behind — temporary files, orphan groups, uncommitted shards — never a committed row.

    teacher-cache gc runs/cache              # lists what would be removed, by kind, with sizes
    teacher-cache gc runs/cache --apply      # removes it

Safe beside running writers: only files older than the grace period are touched, checked again
right before each removal (shared/store/gc.py says why that protects commits in flight).
"""

import argparse
from dataclasses import dataclass

from shared.config_flags import add_config_flags, config_from_args, option
from shared.errors import DistillCacheError
from shared.store.gc import find_garbage, remove_garbage

HELP = "list (or with --apply remove) temporary files, orphan groups and uncommitted shards of a store"
LISTED_FILES = 20  # per kind, in the dry run


@dataclass(frozen=True)
class GcConfig:
    """The flags of `teacher-cache gc` (STORE is positional, as for info and verify)."""

    apply: bool = option(False, "remove the garbage (without it, only list it)")
    grace_hours: float = option(
        24.0,
        "leave files younger than this alone: longer than any writer takes between writing a file and "
        "publishing the manifest that references it",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store", metavar="STORE", help="store folder or fsspec URL (memory://, s3://, ...)")
    add_config_flags(parser, GcConfig)


def main(args: argparse.Namespace) -> int:
    config = config_from_args(GcConfig, args)
    if not config.grace_hours >= 0:
        raise DistillCacheError(f"--grace-hours must be a number of hours >= 0, not {config.grace_hours}")
    garbage = find_garbage(args.store, grace_seconds=config.grace_hours * 3600)
    for kind, (count, size) in sorted(garbage.bytes_by_kind().items()):
        print(f"{kind}s: {count} files, {size / 1e6:.1f} MB")
        paths = sorted(item.relative for listed_kind, item in garbage.files if listed_kind == kind)
        for path in paths[:LISTED_FILES]:
            print(f"  {path}")
        if len(paths) > LISTED_FILES:
            print(f"  ... and {len(paths) - LISTED_FILES} more")
    if garbage.too_recent:
        print(
            f"kept: {len(garbage.too_recent)} unreferenced files younger than {config.grace_hours:g} h "
            "(a writer may be committing them)"
        )
    if garbage.symlinks:
        print(f"kept: {len(garbage.symlinks)} symlinks (readers refuse them; remove them by hand)")
    if not garbage.files:
        print("nothing to remove")
        return 0
    if not config.apply:
        print(f"dry run: pass --apply to remove these {len(garbage.files)} files")
        return 0
    removed = remove_garbage(garbage)
    print(f"removed {len(removed)} files, {sum(item.size for item in removed) / 1e6:.1f} MB")
    return 0
