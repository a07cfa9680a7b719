"""`teacher-cache verify STORE`: check store.json, every manifest file and every committed row.

Exit status 0 when every row of every field matches its checksum; 1 with the bad rows listed
(sample_id, writer group, row, field, reason) otherwise; 2 with the reason when STORE is refused as
a whole (not a store, damaged store.json or manifest, a symlink, unsafe array metadata, unreachable).

    teacher-cache verify runs/cache && echo clean
"""

import argparse
import sys

from shared.store import verify_store
from shared.store.reader import StoreReader

HELP = "check store.json, the manifests and every committed row against their checksums; exit 0 only if all match"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store", metavar="STORE", help="store folder or fsspec URL (memory://, s3://, ...)")


def main(args: argparse.Namespace) -> int:
    reader = StoreReader(
        args.store, verify=False
    )  # refuses a damaged store.json or manifest, with the reason
    bad = verify_store(args.store)
    if not bad:
        duplicates = reader.duplicates.num_rows
        also = f" ({duplicates} rows of samples committed twice are skipped by readers)" if duplicates else ""
        print(f"ok: {len(reader)} rows x {len(reader.fields)} fields match their checksums{also}")
        return 0
    rows = {(entry["writer"], entry["row"]) for entry in bad}
    reasons = sorted({entry["reason"] for entry in bad})
    print(
        f"teacher-cache verify: {len(rows)} of {len(reader)} rows are damaged ({'; '.join(reasons)}); "
        "recapture them into a fresh store or restore the store from a good copy",
        file=sys.stderr,
    )
    for entry in bad:
        print(
            f"{entry['sample_id']}\twriter {entry['writer']} row {entry['row']}\tfield {entry['field']}\t{entry['reason']}"
        )
    return 1
