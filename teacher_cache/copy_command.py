"""`teacher-cache copy SRC DST`: copy a store's committed rows to another place (disk <-> S3, any fsspec URL).

    teacher-cache copy runs/cache s3://team-bucket/cache
    teacher-cache copy s3://team-bucket/cache /scratch/cache      # run it again after a kill: it resumes

Every row is checked against its CRC-32C as it is read; only committed rows travel; DST must be new
or an earlier (killed) copy of SRC, never another store. A progress bar shows the uncompressed bytes
copied and their rate (shared/store/copy.py says how it works).
"""

import argparse
from dataclasses import dataclass

from shared.config_flags import add_config_flags, config_from_args, option
from shared.errors import DistillCacheError
from shared.store.copy import CopyReport, copy_stores

HELP = "copy a store's committed rows to another folder or URL, checked as they are read; resumable"


@dataclass(frozen=True)
class CopyConfig:
    """The flags shared by `teacher-cache copy` and `teacher-cache merge`."""

    batch_mb: float = option(
        64.0, "uncompressed MB per commit to the destination (one shard per field; memory: about 3 batches)"
    )
    progress: bool = option(True, "no progress bar", flag="--no-progress")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="SRC", help="the store to copy: folder or fsspec URL")
    parser.add_argument(
        "destination", metavar="DST", help="where to: a new place, or an earlier copy to resume"
    )
    add_config_flags(parser, CopyConfig)


def run_copy(sources: list[str], destination: str, config: CopyConfig) -> int:
    if config.batch_mb <= 0:
        raise DistillCacheError(f"--batch-mb must be a positive number of megabytes, not {config.batch_mb}")
    report = copy_stores(sources, destination, int(config.batch_mb * 2**20), config.progress)
    print(describe(report, destination))
    return 0


def describe(report: CopyReport, destination: str) -> str:
    rate = report.bytes / 1e6 / report.seconds if report.seconds else 0.0
    lines = [
        f"{destination}: {report.copied} rows copied ({report.bytes / 1e6:.1f} MB uncompressed, "
        f"{rate:.1f} MB/s), {report.already} there already"
    ]
    if report.repeated:
        lines.append(
            f"{report.repeated} samples were in more than one source and were copied once"
            + (
                f" ({report.differing} of them with other values: the first source's were kept)"
                if report.differing
                else ""
            )
        )
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    return run_copy([args.source], args.destination, config_from_args(CopyConfig, args))
