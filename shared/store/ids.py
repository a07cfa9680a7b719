"""Deterministic sample ids (the dedupe key) and the train/val split drawn from them.

    sample_id_for(fingerprint, "a red seven on blue", "", seed=3, guidance_scale=4.0)  # 32 hex chars
    sample_id_for(fingerprint, prompt, "", seed, 4.0, source_key="image:0042")         # a row made from an image
    sample_ids_for(fingerprint, [(prompt, "", seed, 4.0, ""), ...])                    # many: the same ids, faster
    split_for(sample_id, val_fraction=0.1)                                              # "train" | "val"

The id depends on the teacher fingerprint (its identity, not where it was loaded from), prompt,
negative prompt, seed, guidance and `source_key` (what the row was made from besides the prompt: ""
for pipeline rows, an image's id for noised points of a user's image) only, so the same job gets the
same id in any process, batch or run: that is what makes resume and multi-writer stores dedupe. The
split is a hash of the id, so it never changes as the store grows.
"""

import hashlib
from collections.abc import Iterable

from shared.store.fingerprint import canonical_json, fingerprint_digest


def sample_id_for(
    fingerprint: dict,
    prompt: str,
    negative_prompt: str | None,
    seed: int,
    guidance_scale: float,
    source_key: str = "",
) -> str:
    """The id of one row (see the module docstring)."""
    return sample_ids_for(fingerprint, [(prompt, negative_prompt, seed, guidance_scale, source_key)])[0]


def sample_ids_for(fingerprint: dict, jobs: Iterable[tuple]) -> list[str]:
    """sample_id_for of many jobs, each (prompt, negative_prompt, seed, guidance_scale, source_key): the
    fingerprint's digest is computed once (a run's job list: ~5 us per job instead of ~15).

    An id is sha256(canonical_json([fingerprint digest, prompt, negative prompt or "", int(seed),
    float(guidance), str(source key)])), first 32 hex characters; the list's opening and first item
    are the same for every job, so each job encodes only the rest."""
    opening = canonical_json([fingerprint_digest(fingerprint)])[:-1] + ","  # '["<digest>",'
    ids = []
    for prompt, negative_prompt, seed, guidance_scale, source_key in jobs:
        rest = canonical_json(
            [prompt, negative_prompt or "", int(seed), float(guidance_scale), str(source_key)]
        )
        ids.append(hashlib.sha256((opening + rest[1:]).encode()).hexdigest()[:32])
    return ids


def split_for(sample_id: str, val_fraction: float) -> str:
    """ "val" for a `val_fraction` share of ids (uniform hash), else "train"."""
    position = int.from_bytes(hashlib.sha256(f"split:{sample_id}".encode()).digest()[:8], "big") / 2**64
    return "val" if position < val_fraction else "train"
