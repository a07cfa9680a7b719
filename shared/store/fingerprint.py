"""The teacher's identity in a store, and the digests it is made of.

    fingerprint = {"pipeline_class": "StableDiffusionPipeline",
                   "weights_hash": sha256 over every torch component's state_dict_digest,
                   "denoiser_hash": state_dict_digest(denoiser in float32)}     # identity: compared, hashed into ids
    teacher = {"source": "embedded:default_teacher" | "org/name" | "/abs/path", "revision": None}  # where to load it

The fingerprint says *which* teacher made the rows (appends and merges compare it, sample ids hash
it); the teacher record says *where* to load it from and may differ between copies of one teacher,
so it is not part of the identity. Phase two checks `denoiser_hash` on the denoiser it loads.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

from shared.errors import DistillCacheError

if TYPE_CHECKING:
    import torch

FINGERPRINT_KEYS = ("pipeline_class", "weights_hash", "denoiser_hash")


# json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False), without building an
# encoder per call (json.dumps does for any non-default option: most of its cost on small values)
CANONICAL_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_json(value: object) -> str:
    """One spelling for equal JSON values: sorted keys, no spaces."""
    return CANONICAL_ENCODER.encode(value)


def fingerprint_digest(fingerprint: dict) -> str:
    return hashlib.sha256(canonical_json(fingerprint).encode()).hexdigest()


def state_dict_digest(module: torch.nn.Module) -> str:
    """sha256 of every tensor of `module.state_dict()` (name, dtype, shape, bytes), in name order."""
    import torch

    digest = hashlib.sha256()
    for name, value in sorted(module.state_dict().items()):
        if not isinstance(value, torch.Tensor):
            digest.update(f"{name}:{value!r}\n".encode())
            continue
        tensor = value.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def check_fingerprint(fingerprint: object, where: str) -> dict:
    """A store's teacher identity: exactly pipeline_class, weights_hash and denoiser_hash, non-empty strings."""
    if (
        not isinstance(fingerprint, dict)
        or sorted(fingerprint) != sorted(FINGERPRINT_KEYS)
        or not all(isinstance(value, str) and value for value in fingerprint.values())
    ):
        raise DistillCacheError(
            f"{where}: the teacher fingerprint must be {{{', '.join(FINGERPRINT_KEYS)}}} (non-empty strings), "
            f"got {_short(fingerprint)}"
        )
    return fingerprint


def check_teacher_record(teacher: object, where: str) -> dict:
    """Where to load the teacher from: {"source": non-empty string, "revision": string or None}."""
    if (
        not isinstance(teacher, dict)
        or sorted(teacher) != ["revision", "source"]
        or not isinstance(teacher["source"], str)
        or not teacher["source"]
        or not isinstance(teacher["revision"], (str, type(None)))
    ):
        raise DistillCacheError(
            f"{where}: the teacher record must be {{'source': str, 'revision': str | None}}, got {_short(teacher)}"
        )
    return teacher


def _short(value: object, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
