"""The dtypes a store field may have, and how each is kept in Zarr.

bfloat16 is not a Zarr dtype: its bits are stored as uint16 and the real dtype is recorded in
store.json, so a reader gets bfloat16 back. Everything else is stored as itself.

torch is imported where a tensor is made, not with the module: the store's command-line tools
(info, verify, gc, compact, copy) start without it.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import numpy as np

from shared.errors import DistillCacheError

if TYPE_CHECKING:
    import torch

STORAGE_DTYPES = {
    "float16": np.dtype(np.float16),
    "float32": np.dtype(np.float32),
    "bfloat16": np.dtype(np.uint16),  # the bf16 bits
    "uint8": np.dtype(np.uint8),
    "int32": np.dtype(np.int32),
    "int64": np.dtype(np.int64),
}


def check_dtype(name: str) -> str:
    if name not in STORAGE_DTYPES:
        raise DistillCacheError(f"dtype {name!r} cannot be stored; use one of {', '.join(STORAGE_DTYPES)}")
    return name


def storage_dtype(name: str) -> np.dtype:
    return STORAGE_DTYPES[check_dtype(name)]


def to_storage(values: np.ndarray | torch.Tensor, dtype: str) -> np.ndarray:
    """`values` cast to the field's dtype, as the C-contiguous numpy array that Zarr stores. numpy values
    of a numpy dtype are cast by numpy (the same IEEE rounding as torch), without importing torch."""
    torch = sys.modules.get("torch")
    if (torch is None or not isinstance(values, torch.Tensor)) and check_dtype(dtype) != "bfloat16":
        return np.ascontiguousarray(np.asarray(values).astype(storage_dtype(dtype), copy=False))
    import torch

    tensor = (
        values.detach().cpu() if isinstance(values, torch.Tensor) else torch.from_numpy(np.asarray(values))
    )
    tensor = tensor.to(getattr(torch, check_dtype(dtype))).contiguous()
    if dtype == "bfloat16":
        return tensor.view(torch.int16).numpy().view(np.uint16)
    return tensor.numpy()


def from_storage(stored: np.ndarray, dtype: str) -> torch.Tensor:
    """The tensor a stored array stands for, in its real dtype (bfloat16 restored from its bits)."""
    import torch

    stored = np.ascontiguousarray(stored)
    if dtype == "bfloat16":
        return torch.from_numpy(stored.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(stored)
