"""The jobs of one writer among many on one store: its own order, re-checked against the store before
every batch, so that writers started together do not compute the same samples.

    queue = JobQueue(pending_samples, batch_size=8, seed=random_seed)
    while batch := queue.next_batch(writer.committed_ids):   # reads only the manifest files new since the last look
        ...capture and commit batch...

Each process draws its own random order of its jobs (grouped by guidance scale, as a pipeline call
takes one scale), so writers started at the same moment on the same job list start in different
places instead of computing the same first batches; before each batch, jobs that any writer has
committed meanwhile are skipped. A sample is computed twice only when two writers pick it while
neither has committed it yet, i.e. at most the batches in flight; rows that another writer committed
while this one computed them are dropped before the commit (`without_committed`).
"""

import random
from collections import deque


class JobQueue:
    def __init__(self, samples: list, batch_size: int, seed: int):
        shuffled = list(samples)
        random.Random(seed).shuffle(shuffled)
        self.batch_size = batch_size
        self.groups: dict[float, deque] = {}  # guidance scale -> its jobs, in this writer's order
        for sample in shuffled:
            self.groups.setdefault(sample.job.guidance_scale, deque()).append(sample)

    def next_batch(self, committed: set[str]) -> list:
        """Up to batch_size jobs of one guidance scale that nobody has committed; [] when none is left."""
        for group in self.groups.values():
            batch = []
            while group and len(batch) < self.batch_size:
                sample = group.popleft()
                if sample.sample_id not in committed:
                    batch.append(sample)
            if batch:
                return batch
        return []


def without_committed(samples: list, committed: set[str]) -> list:
    """The samples nobody has committed yet (checked again after the batch was computed)."""
    return [sample for sample in samples if sample.sample_id not in committed]
