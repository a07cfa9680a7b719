"""`teacher-cache verify STORE`: recompute every committed row's checksums.

Exit status 0 when every row of every field matches; 1 with the bad rows listed (sample_id,
writer group, row, field) otherwise; 2 when STORE is not a readable store.

    teacher-cache verify runs/cache && echo clean
"""

import argparse
import sys

from shared.store import StoreReader, verify_store

HELP = "check every committed row against its checksums; exit 0 only if all match"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store", metavar="STORE", help="store folder or fsspec URL (memory://, s3://, ...)")


def main(args: argparse.Namespace) -> int:
    reader = StoreReader(args.store)
    bad = verify_store(args.store)
    if not bad:
        print(f"ok: {len(reader)} rows x {len(reader.fields)} fields match their checksums")
        return 0
    rows = {(entry["writer"], entry["row"]) for entry in bad}
    print(f"teacher-cache verify: {len(rows)} of {len(reader)} rows are damaged:", file=sys.stderr)
    for entry in bad:
        print(f"{entry['sample_id']}\twriter {entry['writer']} row {entry['row']}\tfield {entry['field']}")
    return 1
