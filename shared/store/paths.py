"""Where a store lives: a local folder or any fsspec URL (memory://, s3://, gs://, hf://, ...).

    location = StoreLocation.open("s3://bucket/cache")
    location.read_bytes("store.json"); location.write_atomic("manifest/x.parquet", data)
    location.zarr_store(read_only=True)      # the same place, as a Zarr store

Small files are published atomically: on a local disk they are written under a hidden temporary name
and renamed; on object stores one PUT is already all-or-nothing. Relative paths given here are built
from checked names only (shared.store.schema.check_name); on a local disk `check_inside` also refuses
a symlink that leads out of the store.
"""

import os
import uuid
from dataclasses import dataclass

import fsspec
import zarr
from fsspec.implementations.local import LocalFileSystem

from shared.errors import DistillCacheError


@dataclass(frozen=True)
class StoreLocation:
    url: str
    fs: fsspec.AbstractFileSystem
    root: str  # the store folder in `fs`'s own path syntax, no trailing '/'

    @classmethod
    def open(cls, url: str | os.PathLike) -> "StoreLocation":
        url = os.fspath(url)
        try:
            fs, root = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as error:
            raise DistillCacheError(
                f"cannot open store {url!r}: {error}; give a folder or an fsspec URL"
            ) from None
        return cls(url, fs, root.rstrip("/") or "/")

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def path(self, relative: str) -> str:
        return f"{self.root}/{relative}" if relative else self.root

    def exists(self, relative: str = "") -> bool:
        return self.fs.exists(self.path(relative))

    def read_bytes(self, relative: str) -> bytes:
        self.check_inside(relative)
        return self.fs.cat_file(self.path(relative))

    def write_atomic(self, relative: str, data: bytes) -> None:
        """Publish a whole file at once: readers see the old state or the new file, never a part."""
        target = self.path(relative)
        folder = target.rsplit("/", 1)[0]
        self.fs.makedirs(folder, exist_ok=True)
        if not self.is_local:
            self.fs.pipe_file(target, data)
            return
        temporary = f"{folder}/.{target.rsplit('/', 1)[1]}.{uuid.uuid4().hex}.tmp"
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)

    def list_names(self, relative: str, suffix: str) -> list[str]:
        """Names of the visible files `relative/*suffix` (hidden temporary files excluded), sorted."""
        folder = self.path(relative)
        if not self.fs.exists(folder):
            return []
        names = (entry.rstrip("/").rsplit("/", 1)[-1] for entry in self.fs.ls(folder, detail=False))
        return sorted(name for name in names if name.endswith(suffix) and not name.startswith("."))

    def check_inside(self, relative: str) -> None:
        """On a local disk, refuse a path that resolves (through symlinks) outside the store."""
        if not self.is_local:
            return
        root = os.path.realpath(self.root)
        resolved = os.path.realpath(self.path(relative))
        if resolved != root and not resolved.startswith(root + os.sep):
            raise DistillCacheError(
                f"store {self.url}: {relative!r} leads outside the store (to {resolved}); "
                "a store must hold its own files: copy the data in instead of linking it"
            )

    def total_bytes(self, relative: str = "") -> int:
        return int(self.fs.du(self.path(relative))) if self.exists(relative) else 0

    def zarr_store(self, read_only: bool) -> zarr.abc.store.Store:
        if self.is_local:
            return zarr.storage.LocalStore(self.root, read_only=read_only)
        return zarr.storage.FsspecStore.from_url(self.url, read_only=read_only)
