"""The jobs of one writer among many on one store: its own order, re-checked against the store before
every batch, so that writers started together do not compute the same samples.

    queue = JobQueue(pending_samples, batch_size=8, seed=random_seed)
    while batch := queue.next_batch(writer.committed_ids, claims.others()):   # committed: a CommittedIds
        claims.claim([sample.sample_id for sample in batch])                   # shared.store.claims
        ...capture and commit batch...

Each process draws its own random order of its jobs (grouped by guidance scale, as a pipeline call
takes one scale), so writers started at the same moment on the same job list start in different
places. Before each batch, jobs that any writer has committed meanwhile are skipped, and jobs other
writers have claimed (are computing) are deferred to the end of the queue, taken only when nothing
else is left (the claimant may have died). A sample is therefore computed twice only when two
writers pick it at the same moment, or at the end when all that is left is in flight elsewhere;
rows that another writer committed while this one computed them are dropped before the commit
(`without_committed`).
"""

import random
from collections import deque
from collections.abc import Set


class JobQueue:
    def __init__(self, samples: list, batch_size: int, seed: int | None):
        """`seed`: this writer's random order; None keeps the job list's order (for tests)."""
        shuffled = list(samples)
        if seed is not None:
            random.Random(seed).shuffle(shuffled)
        self.batch_size = batch_size
        self.groups: dict[float, deque] = {}  # guidance scale -> its jobs, in this writer's order
        self.deferred: dict[float, deque] = {}  # jobs others had claimed when they came up
        for sample in shuffled:
            self.groups.setdefault(sample.job.guidance_scale, deque()).append(sample)
            self.deferred.setdefault(sample.job.guidance_scale, deque())

    def next_batch(self, committed: Set[str], claimed: Set[str] = frozenset()) -> list:
        """Up to batch_size jobs of one guidance scale that nobody has committed, unclaimed ones first;
        [] when none is left."""
        for scale, group in self.groups.items():
            batch = []
            while group and len(batch) < self.batch_size:
                sample = group.popleft()
                if sample.sample_id in committed:
                    continue
                if sample.sample_id in claimed:
                    self.deferred[scale].append(sample)
                else:
                    batch.append(sample)
            deferred = self.deferred[scale]
            while not group and deferred and len(batch) < self.batch_size:  # nothing else left in this scale
                sample = deferred.popleft()
                if sample.sample_id not in committed:
                    batch.append(sample)
            if batch:
                return batch
        return []


def without_committed(samples: list, committed: Set[str]) -> list:
    """The samples nobody has committed yet (checked again after the batch was computed)."""
    return [sample for sample in samples if sample.sample_id not in committed]
