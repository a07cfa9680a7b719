"""Checks on an output folder before anything is computed: one line instead of a traceback at the end.

check_output_folder("runs/student", "--out")   # a folder (or one that can be made) this process may write
"""

import os

from shared.errors import DistillCacheError


def check_output_folder(path: str | os.PathLike, flag: str) -> None:
    """Refuse an existing file, or a place whose nearest existing folder this process cannot write."""
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not os.path.isdir(path):
        raise DistillCacheError(f"{flag} {path} is a file, not a folder; choose another {flag}")
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        raise DistillCacheError(
            f"{flag} {path}: {existing} is not a folder this user may write; choose another {flag}"
        )
