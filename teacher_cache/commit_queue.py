"""Commit batches on one background thread while the teacher computes the next batch.

    with CommitQueue(on_done=tally.add) as commits:
        for batch in batches:
            commits.submit(commit_finite, writer, ...)    # waits for the previous commit first

At most one commit is in flight, so memory stays bounded and commits stay in order; a failed commit
raises in the caller at the next submit or at the end of the block. Compression and Zarr I/O then
overlap with the denoiser's work instead of adding to it.
"""

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor


class CommitQueue:
    def __init__(self, on_done: Callable):
        self.on_done = on_done
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="commit")
        self._in_flight: Future | None = None

    def submit(self, commit: Callable, *args) -> None:
        self.wait()
        self._in_flight = self._executor.submit(commit, *args)

    def wait(self) -> None:
        """Block until the commit in flight (if any) is done; pass its result to on_done."""
        if self._in_flight is not None:
            in_flight, self._in_flight = self._in_flight, None
            self.on_done(in_flight.result())

    def __enter__(self) -> "CommitQueue":
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        try:
            if exc_type is None:
                self.wait()
        finally:
            self._executor.shutdown(wait=True)
