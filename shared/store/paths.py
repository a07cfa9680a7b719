"""Where a store lives: a local folder or any fsspec URL (memory://, s3://, gs://, hf://, ...).

    location = StoreLocation.open("s3://bucket/cache")
    location.read_bytes("store.json"); location.write_atomic("manifest/x.parquet", data)
    location.zarr_store(read_only=True)      # the same place, as a Zarr store (shared.store.confined)
    location.check_writable()                # before a writer writes anything: a folder we may write

Small files are published atomically: on a local disk they are written under a hidden temporary name
(`.<name>.<random>.tmp`) and renamed; on object stores one PUT is already all-or-nothing. Every file
read is checked first (`check_path`): a plain relative path, and on a disk one reached without any
symlink. Nothing here creates a bucket: writing to a missing one is an error. Errors of the
filesystem or the network (unreachable endpoint, missing credentials, no permission) become one
line naming the store and what to check.
"""

import os
import uuid
from dataclasses import dataclass

import fsspec
from fsspec.implementations.local import LocalFileSystem

from shared.errors import DistillCacheError, first_line
from shared.output_folder import check_output_folder
from shared.store.confined import ConfinedFsspecStore, ConfinedLocalStore, check_key, check_no_link

REMOTE_HINT = (
    "check the URL, that the endpoint is reachable and your credentials (for s3://: AWS_* variables)"
)


ACCESS_ERROR_MODULES = ("botocore", "aiobotocore", "aiohttp", "s3fs", "gcsfs", "google", "adlfs", "azure")


def is_access_error(error: BaseException) -> bool:
    """An error of reaching the data (filesystem, network, credentials), not of the data itself."""
    module = type(error).__module__.split(".")[0]
    return isinstance(error, (OSError, TimeoutError)) or module in ACCESS_ERROR_MODULES


def raise_error(error: BaseException):
    raise error


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
                f"cannot open store {url!r}: {first_line(error)}; give a folder or an fsspec URL "
                "(s3:// needs `pip install distillcache[s3]`)"
            ) from None
        return cls(url, fs, root.rstrip("/") or "/")

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def path(self, relative: str) -> str:
        return f"{self.root}/{relative}" if relative else self.root

    def call(self, what: str, call, *args):
        """`call(*args)` with filesystem and network errors as one line."""
        try:
            return call(*args)
        except DistillCacheError:
            raise
        except Exception as error:
            hint = "check the path and its permissions" if self.is_local else REMOTE_HINT
            raise DistillCacheError(
                f"cannot {what} of store {self.url} ({first_line(error)}); {hint}"
            ) from None

    def exists(self, relative: str = "") -> bool:
        return bool(self.call(f"look for {relative or 'the folder'}", self.fs.exists, self.path(relative)))

    def read_bytes(self, relative: str) -> bytes:
        self.check_path(relative)
        return self.call(f"read {relative}", self.fs.cat_file, self.path(relative))

    def read_bytes_if_exists(self, relative: str) -> bytes | None:
        """The file's bytes, or None when it does not exist (any other failure is one line)."""
        self.check_path(relative)

        def read() -> bytes | None:
            try:
                return self.fs.cat_file(self.path(relative))
            except FileNotFoundError:
                return None

        return self.call(f"read {relative}", read)

    def read_many_if_exist(self, relatives: list[str]) -> dict[str, bytes | None]:
        """{relative: its bytes, or None when it does not exist}; on an object store the reads run
        concurrently (fsspec's batched `cat`), one request per file but not one after another."""
        if self.is_local or len(relatives) < 2:
            return {relative: self.read_bytes_if_exists(relative) for relative in relatives}
        for relative in relatives:
            self.check_path(relative)
        paths = {self.path(relative): relative for relative in relatives}
        found = self.call(f"read {len(paths)} files", self.fs.cat, list(paths), False, "return")
        result = {}
        for path, relative in paths.items():
            data = found.get(path, found.get(self.fs._strip_protocol(path), FileNotFoundError(path)))
            if isinstance(data, FileNotFoundError):
                data = None
            elif isinstance(data, BaseException):
                self.call(f"read {relative}", raise_error, data)
            result[relative] = data
        return result

    def remove(self, relative: str) -> None:
        """Remove one file (not a folder); a file already gone is not an error."""
        self.check_path(relative)

        def remove() -> None:
            try:
                self.fs.rm_file(self.path(relative))
            except FileNotFoundError:
                pass

        self.call(f"remove {relative}", remove)

    def write_atomic(self, relative: str, data: bytes) -> None:
        """Publish a whole file at once: readers see the old state or the new file, never a part."""
        self.check_path(relative)
        target = self.path(relative)
        if not self.is_local:  # no makedirs: on an object store it would create a missing bucket
            self.call(f"write {relative}", self.fs.pipe_file, target, data)
            return
        folder, name = target.rsplit("/", 1)
        temporary = f"{folder}/.{name}.{uuid.uuid4().hex}.tmp"

        def write() -> None:
            os.makedirs(folder, exist_ok=True)
            with open(temporary, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, target)

        self.call(f"write {relative}", write)

    def list_names(self, relative: str, suffix: str, fresh: bool = False) -> list[str]:
        """Names of the visible files `relative/*suffix` (hidden temporary files excluded), sorted.
        `fresh`: bypass the filesystem's listing cache (s3fs keeps listings, and would not show files
        that other processes published since)."""
        folder = self.path(relative)
        if fresh:
            self.fs.invalidate_cache(folder)
        if not self.exists(relative):
            return []
        self.check_path(relative)
        entries = self.call(f"list {relative}", self.fs.ls, folder, False)
        names = (entry.rstrip("/").rsplit("/", 1)[-1] for entry in entries)
        return sorted(name for name in names if name.endswith(suffix) and not name.startswith("."))

    def check_path(self, relative: str) -> None:
        """Refuse a path that is not plain (`..`, absolute) or, on a disk, that passes through a symlink."""
        check_key(relative, self.url)
        if self.is_local:
            check_no_link(os.path.realpath(self.root), relative, self.url)

    def check_writable(self) -> None:
        """Before a writer writes anything: the store is (or can become) a folder this process may write;
        on an object store, its bucket exists (it is never created)."""
        if self.is_local:
            check_output_folder(self.root, "store")
            return
        bucket = self.root.split("/", 1)[0]
        if "://" in self.url and self.url.split("://", 1)[0] in ("s3", "s3a", "gs", "gcs", "az", "abfs"):
            if not self.exists_absolute(bucket):
                raise DistillCacheError(
                    f"the bucket of {self.url} does not exist (or these credentials cannot see it); "
                    "create it first: distillcache never creates buckets"
                )

    def exists_absolute(self, path: str) -> bool:
        return bool(self.call(f"look for {path}", self.fs.exists, path))

    def total_bytes(self, relative: str = "") -> int:
        """Bytes under `relative`. Other writers may remove their claims and temporary files while the
        walk runs, so a file that vanishes between listing and measuring counts as gone."""
        if not self.exists(relative):
            return 0

        def measure() -> int:
            listed = self.fs.find(self.path(relative), detail=False)
            total = 0
            for path in listed:
                try:
                    total += int(self.fs.size(path))
                except FileNotFoundError:
                    continue
            return total

        return self.call("measure the size", measure)

    def zarr_store(self, read_only: bool):
        """The store folder as a Zarr store whose every key is checked (shared.store.confined)."""
        if self.is_local:
            return ConfinedLocalStore(self.root, read_only=read_only)
        return self.call("open", ConfinedFsspecStore.from_url, self.url, None, read_only)
