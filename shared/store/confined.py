"""Zarr stores that cannot leave the store folder: every key is checked right before it is opened.

    store = ConfinedLocalStore("runs/cache", read_only=True)       # what StoreLocation.zarr_store gives
    store = ConfinedFsspecStore.from_url("s3://bucket/cache", read_only=True)

A key is a relative path made of plain components (no '', '.', '..', no leading '/', no '\\'). On a
local disk the file it names must also be reached without a symlink: its real path must be the
path spelled out under the (resolved) store root, so a chunk, shard or zarr.json that is a link, or
sits in a linked folder, is refused with one line before any byte of it is read — even a link that
points inside the store (a store must hold its own files). Object stores have no symlinks; there
only the key is checked. The check runs at each get / set / delete, right before the open: the file
itself each time, the folders above it once per store object (resolving a whole path costs ~0.4 ms,
a sixth of a small read). A link swapped in between the check and the open, or a checked folder
replaced by a link while the store object is in use (a race with a hostile local user), is outside
what this guards against.
"""

import os

from zarr.storage import FsspecStore, LocalStore

from shared.errors import DistillCacheError


def check_key(key: str, where: str) -> str:
    """`key` if it is a plain relative path; else one line naming it."""
    parts = key.split("/")
    if not key or key.startswith("/") or "\\" in key or any(part in ("", ".", "..") for part in parts):
        raise DistillCacheError(
            f"store {where}: the path {key!r} is not a plain path inside the store; the store is damaged or hostile"
        )
    return key


def check_no_link(root_real: str, relative: str, where: str) -> None:
    """Refuse `root/relative` unless its real path is exactly the path spelled out under the real root."""
    spelled = os.path.join(root_real, *relative.split("/"))
    if os.path.realpath(spelled) != spelled:
        raise DistillCacheError(
            f"store {where}: {relative!r} is a symbolic link or lies in a linked folder (it leads to "
            f"{os.path.realpath(spelled)}); a store must hold its own files: copy the data in instead of linking it"
        )


class ConfinedKeys:
    """Mixin (before a Zarr store class): every read, test and delete passes its key through
    `self._confined(key)` first."""

    def _confined(self, key: str) -> str:
        raise NotImplementedError

    async def get(self, key, prototype=None, byte_range=None):
        return await super().get(self._confined(key), prototype, byte_range)

    async def get_partial_values(self, prototype, key_ranges):
        key_ranges = [(self._confined(key), byte_range) for key, byte_range in key_ranges]
        return await super().get_partial_values(prototype, key_ranges)

    async def exists(self, key: str) -> bool:
        return await super().exists(self._confined(key))

    async def delete(self, key: str) -> None:
        await super().delete(self._confined(key))


class ConfinedLocalStore(ConfinedKeys, LocalStore):
    """LocalStore whose every key is a plain path reached without symlinks."""

    def __init__(self, root, *, read_only: bool = False) -> None:
        super().__init__(root, read_only=read_only)
        self._root_real = os.path.realpath(self.root)
        self._checked_folders: set[str] = set()  # existing folders found to be no links

    def _confined(self, key: str) -> str:
        check_key(key, str(self.root))
        folder = key.rpartition("/")[0]
        spelled = os.path.join(self._root_real, *key.split("/"))
        if folder not in self._checked_folders or os.path.islink(spelled):
            check_no_link(self._root_real, key, str(self.root))
            if folder and os.path.isdir(os.path.dirname(spelled)):
                self._checked_folders.add(folder)
        return key

    async def _set(self, key: str, value, exclusive: bool = False) -> None:
        await super()._set(self._confined(key), value, exclusive=exclusive)

    def get_sync(self, key, *, prototype=None, byte_range=None):
        return super().get_sync(self._confined(key), prototype=prototype, byte_range=byte_range)

    def set_sync(self, key: str, value) -> None:
        super().set_sync(self._confined(key), value)


class ConfinedFsspecStore(ConfinedKeys, FsspecStore):
    """FsspecStore whose every key is a plain relative path (no '..' out of the store's prefix)."""

    def _confined(self, key: str) -> str:
        return check_key(key, self.path)

    async def set(self, key: str, value, byte_range=None) -> None:
        await super().set(self._confined(key), value, byte_range)
