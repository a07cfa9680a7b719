"""Claims: which jobs each writer of a store is computing right now, so that others start elsewhere.

    claims = WriterClaims("runs/cache", writer_id)
    claims.claim(sample_ids)        # before computing a batch: claims/<writer_id>.json
    taken = claims.others()         # sample_ids other writers are computing
    claims.release()                # at the end

A claim is advice, never a lock: a writer defers jobs that others claim to the end of its queue and
computes them then if they are still not committed (the claimant may have died). So a dead writer's
claim delays nothing for good, and two writers compute one sample only when they pick it at the same
moment or when nothing else is left. Claims are not part of the committed data: readers ignore
them, a damaged or unreadable claim counts as no claim, and `teacher-cache gc` removes claims older
than its grace period.
"""

import json

from shared.errors import DistillCacheError
from shared.store.paths import StoreLocation

CLAIMS = "claims"


class WriterClaims:
    def __init__(self, url, writer_id: str):
        self.location = StoreLocation.open(url)
        self.writer_id = writer_id
        self.relative = f"{CLAIMS}/{writer_id}.json"

    def claim(self, sample_ids: list[str]) -> None:
        self.location.write_atomic(self.relative, json.dumps(sorted(sample_ids)).encode())

    def others(self) -> set[str]:
        """sample_ids in the claims of every other writer (unreadable claims are skipped)."""
        taken: set[str] = set()
        for name in self.location.list_names(CLAIMS, ".json"):
            if name == f"{self.writer_id}.json":
                continue
            try:
                ids = json.loads(self.location.read_bytes(f"{CLAIMS}/{name}"))
            except (DistillCacheError, ValueError, UnicodeDecodeError):
                continue  # advice only: a claim that cannot be read is no claim
            if isinstance(ids, list):
                taken.update(str(sample_id) for sample_id in ids)
        return taken

    def release(self) -> None:
        """Remove this writer's claim (best effort: a claim left behind only delays others' picks)."""
        try:
            if self.location.exists(self.relative):
                self.location.call(
                    "remove a claim", self.location.fs.rm_file, self.location.path(self.relative)
                )
        except DistillCacheError:
            pass
