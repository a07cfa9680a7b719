"""Digests that identify a teacher: of a fingerprint dict, and of a module's weights.

fingerprint_digest({"pipeline_class": ..., "source": ..., "revision": ..., "weights_hash": ...})
state_dict_digest(pipe.unet)    # sha256 over names, dtypes, shapes and raw bytes of the state dict
"""

import hashlib
import json

import torch


def canonical_json(value: object) -> str:
    """One spelling for equal JSON values: sorted keys, no spaces."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def fingerprint_digest(fingerprint: dict) -> str:
    return hashlib.sha256(canonical_json(fingerprint).encode()).hexdigest()


def state_dict_digest(module: torch.nn.Module) -> str:
    """sha256 of every tensor of `module.state_dict()` (name, dtype, shape, bytes), in name order."""
    digest = hashlib.sha256()
    for name, value in sorted(module.state_dict().items()):
        if not isinstance(value, torch.Tensor):
            digest.update(f"{name}:{value!r}\n".encode())
            continue
        tensor = value.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
