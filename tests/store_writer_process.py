"""A writer in its own process, for the store's crash and concurrency tests.

    python -m tests.store_writer_process URL FIRST STOP [--batch-size 4] [--writer-id ID] [--hang-at-commit K]
        [--go-file PATH] [--log PATH] [--paced-by PATH] [--small]

Writes samples FIRST..STOP-1 (skipping those already committed). With --hang-at-commit K, the K-th
commit writes its arrays, prints ARRAYS_WRITTEN and then sleeps before publishing its manifest, so
the test can SIGKILL it in the middle of a batch; with --go-file, it publishes once PATH exists.
With --small, the samples are those of tests/small_store.py (no torch: the process starts faster).
With --log, the sample indices of each commit are appended to PATH (one line per commit) once the
commit has returned: every index logged is committed. With --paced-by, each commit after the second
waits (at most 60 s) until PATH, a compactor's --log, has gained a line since the previous commit: a
compaction runs between any two commits, however fast the machine.
"""

import argparse
import sys
import time
from pathlib import Path

from shared.store.writer import StoreWriter


def hang_at_commit(commit_number: int, go_file: str | None) -> None:
    publish = StoreWriter._publish_manifest
    calls = {"count": 0}

    def publish_or_hang(self, table, relative):
        calls["count"] += 1
        if calls["count"] == commit_number:
            print("ARRAYS_WRITTEN", flush=True)
            deadline = time.time() + 600
            while time.time() < deadline and not (go_file and Path(go_file).exists()):
                time.sleep(0.05)
        publish(self, table, relative)

    StoreWriter._publish_manifest = publish_or_hang


def log_commits(path: str) -> None:
    commit = StoreWriter.commit

    def commit_and_log(self, rows, arrays):
        commit(self, rows, arrays)
        indices = [row["seed"] for row in rows]  # in both fixtures the seed is the sample's index
        with open(path, "a") as log:
            log.write(" ".join(map(str, indices)) + "\n")

    StoreWriter.commit = commit_and_log


def pace_commits(path: str) -> None:
    commit = StoreWriter.commit
    state = {"commits": 0, "lines": 0}

    def lines() -> int:
        return len(Path(path).read_text().splitlines()) if Path(path).exists() else 0

    def paced_commit(self, rows, arrays):
        if state["commits"] >= 2:  # a compaction folds two files or more: none before the second commit
            deadline = time.time() + 60
            while time.time() < deadline and lines() <= state["lines"]:
                time.sleep(0.02)
        commit(self, rows, arrays)
        state["commits"] += 1
        state["lines"] = lines()

    StoreWriter.commit = paced_commit


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("first", type=int)
    parser.add_argument("stop", type=int)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--writer-id")
    parser.add_argument("--hang-at-commit", type=int, default=0)
    parser.add_argument("--go-file")
    parser.add_argument("--log")
    parser.add_argument("--paced-by")
    parser.add_argument("--small", action="store_true")
    args = parser.parse_args()
    if args.small:
        from tests.small_store import write_small as write_samples
    else:
        from tests.store_fixtures import write_samples
    if args.paced_by:
        pace_commits(args.paced_by)
    if args.log:
        log_commits(args.log)
    if args.hang_at_commit:
        hang_at_commit(args.hang_at_commit, args.go_file)
    print("STARTED", flush=True)
    write_samples(args.url, range(args.first, args.stop), args.batch_size, writer_id=args.writer_id)
    print("DONE", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
