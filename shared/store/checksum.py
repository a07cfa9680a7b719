"""One CRC-32C per row of a field, over the row's stored bytes (C order, storage dtype).

Written into the manifest as `checksum_<field>` at commit time; `verify_store` recomputes them.
"""

import crc32c
import numpy as np


def checksum_column(field: str) -> str:
    return f"checksum_{field}"


def row_checksums(stored: np.ndarray) -> list[int]:
    """CRC-32C of each row (first axis) of a stored array."""
    flat = np.ascontiguousarray(stored).reshape(len(stored), -1).view(np.uint8)  # (rows, bytes per row)
    return [crc32c.crc32c(row) for row in flat]
