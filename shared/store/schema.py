"""Field specs (per-sample dtype and shape of each stored array) and the names a store may use.

Field names and writer ids become paths inside the store, so they are checked against one pattern:
letters, digits, '_', '-' and '.', no '/', no '..'. A store.json or manifest that names anything else
is refused: nothing in a store can make the reader touch a path outside it.
"""

import math
import re
from dataclasses import dataclass

from shared.errors import DistillCacheError
from shared.store.dtypes import check_dtype, storage_dtype

SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,199}")


def check_name(name: object, what: str) -> str:
    """`name` if it is safe as one path component inside the store; else a DistillCacheError."""
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name) or ".." in name:
        raise DistillCacheError(
            f"{what} {name!r} is not allowed: names use only letters, digits, '_', '-' and '.' "
            "(no '/', no '..'), so that nothing can point outside the store"
        )
    return name


@dataclass(frozen=True)
class FieldSpec:
    """One field: dtype name (see shared.store.dtypes) and per-sample shape (the row axis excluded)."""

    dtype: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        check_dtype(self.dtype)
        if not isinstance(self.shape, (tuple, list)) or not all(
            isinstance(size, int) and not isinstance(size, bool) and size > 0 for size in self.shape
        ):
            raise DistillCacheError(f"field shape {self.shape!r} must be a tuple of positive integers")
        object.__setattr__(self, "shape", tuple(int(size) for size in self.shape))

    @property
    def sample_nbytes(self) -> int:
        return math.prod(self.shape) * storage_dtype(self.dtype).itemsize

    def to_json(self) -> dict:
        return {"dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, value: object) -> "FieldSpec":
        if not isinstance(value, dict) or not isinstance(value.get("shape"), list):
            raise DistillCacheError(f"field spec {value!r} must be {{'dtype': ..., 'shape': [...]}}")
        return cls(value.get("dtype"), tuple(value["shape"]))


def check_fields(fields: dict) -> dict[str, FieldSpec]:
    """A writer's field specs, validated: safe names, FieldSpec values, at least one field."""
    if not isinstance(fields, dict) or not fields:
        raise DistillCacheError(
            "a store needs at least one field: pass fields={name: FieldSpec(dtype, shape)}"
        )
    for name, spec in fields.items():
        check_name(name, "field name")
        if not isinstance(spec, FieldSpec):
            raise DistillCacheError(
                f"field {name!r}: expected a FieldSpec(dtype, shape), got {type(spec).__name__}"
            )
    return dict(fields)
