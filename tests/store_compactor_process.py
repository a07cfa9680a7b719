"""A compactor in its own process, for the tests of compaction beside readers and writers.

    python -m tests.store_compactor_process URL STOP_FILE [--grace-seconds 0] [--log PATH]

Compacts URL over and over (grace 0 by default: replaced files are removed at the next round, the
hardest case for readers) until STOP_FILE exists, then once more; prints `COMPACTIONS <n>` (the
rounds that published a compacted file) and `REMOVED <n>` (files removed). With --log, a line is
appended to PATH for each compacted file published (a writer's --paced-by).
"""

import argparse
import sys
import time
from pathlib import Path

from shared.store.compaction import compact_store


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("stop_file")
    parser.add_argument("--grace-seconds", type=float, default=0.0)
    parser.add_argument("--pause", type=float, default=0.2, help="seconds between rounds")
    parser.add_argument("--log")
    args = parser.parse_args()
    compactions = removed = 0
    print("STARTED", flush=True)
    while True:
        stopping = Path(args.stop_file).exists()
        if Path(args.url).exists() or "://" in args.url:
            try:
                report = compact_store(args.url, grace_seconds=args.grace_seconds)
            except Exception as error:  # no store.json yet: the writer has not committed
                if "no store.json" not in str(error):
                    raise
                report = None
            if report is not None:
                compactions += report.written is not None
                if report.written is not None and args.log:
                    with open(args.log, "a") as log:
                        log.write(f"{report.written}\n")
                removed += len(report.removed)
        if stopping:
            break
        time.sleep(args.pause)
    print(f"COMPACTIONS {compactions}", flush=True)
    print(f"REMOVED {removed}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
