"""A local read-through copy of a remote store's shards: after the first epoch, training reads local disk.

    reader = StoreReader("s3://bucket/cache", cache_dir="/scratch/distillcache")   # student-train run --cache-dir
    reader = StoreReader("s3://bucket/cache", cache_dir="auto")   # the default: ~/.cache/distillcache/shards if it fits
    reader.read("trajectory", rows)      # a shard's first read downloads it whole; later reads are local

What is kept: shard files (`groups/<writer>/<field>/c/...`), whole, the first time any byte of one is
read, in `<cache_dir>/<sha256 of the store URL, 16 hex>/` (beside a `store-url.txt` naming the store).
A shard is written once, by one commit, and never changed afterwards (every commit starts on fresh
shards), so a local copy does not go stale while the store lives. zarr.json files (which commits
change) and manifests are always read from the store. A download goes to a temporary name and is
renamed, so a killed process leaves no partial shard. Every row read is still checked against its
CRC-32C: a damaged or stale local copy (a store deleted and written again at the same URL) is caught,
and the reader then empties this store's cache and reads again from the store (once).

Downloads run PARALLEL_DOWNLOADS at a time on their own threads, one per shard however many reads ask
for it at once; together with the training loader's read-ahead (`--read-ahead`), that keeps enough
requests in flight to hide an object store's latency.

`cache_dir="auto"` (student-train run's default) keeps copies in `$XDG_CACHE_HOME/distillcache/shards`
(`~/.cache/...`) for a remote store whose rows, uncompressed, take at most half the free space there,
and reads without copies otherwise (`reader.cache_note` says which): a second epoch from an object
store then runs at local-disk speed without a flag, and a store too big for the disk is never
copied onto it.

Why our own: zarr's experimental CacheStore keeps byte-range reads (every read of a sharded array) in
memory only, and fsspec's simplecache is synchronous (Zarr would run it through a thread wrapper)
and would cache zarr.json too.
"""

import asyncio
import hashlib
import os
import shutil
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

from zarr.storage import WrapperStore

from shared.output_folder import check_output_folder
from shared.store.arrays import GROUPS
from shared.store.confined import ConfinedLocalStore, check_key
from shared.store.paths import StoreLocation

PARALLEL_DOWNLOADS = 16
AUTO = "auto"  # cache_dir: a per-user folder, when the store is remote and fits (choose_cache_dir)
NONE = "none"  # cache_dir: no local copies
AUTO_SHARE_OF_FREE = 0.5  # AUTO keeps copies only if the whole store, uncompressed, takes at most this
# share of the free space there


def default_cache_root() -> str:
    """`$XDG_CACHE_HOME/distillcache/shards` (`~/.cache/...` when unset): where AUTO keeps copies."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "distillcache", "shards")


def choose_cache_dir(location: StoreLocation, cache_dir, store_bytes: int) -> tuple[str | None, str]:
    """(the folder to keep local copies in, or None; one line saying so, or "") for a `cache_dir` of
    AUTO, NONE / "" / None, or a folder. AUTO: a remote store (not a local folder, not memory://)
    whose `store_bytes` (its rows' uncompressed bytes, more than its shards take) fit in
    AUTO_SHARE_OF_FREE of the free space of default_cache_root()'s disk; else no copies."""
    if location.is_local or location.url.startswith("memory://") or cache_dir in (None, "", NONE):
        return None, ""
    if os.fspath(cache_dir) != AUTO:
        return os.fspath(cache_dir), ""
    root = default_cache_root()
    existing = root
    while not os.path.isdir(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    free = shutil.disk_usage(existing).free
    if store_bytes <= AUTO_SHARE_OF_FREE * free:
        return root, (
            f"reading {location.url} through local copies of its shards in {root} (later epochs and runs read "
            "them; --cache-dir none: no copies; --cache-dir DIR: another folder)"
        )
    return None, (
        f"not keeping local copies of {location.url}'s shards: up to {store_bytes / 1e9:.1f} GB, more than "
        f"half of the {free / 1e9:.1f} GB free in {existing}; every epoch reads the store (give --cache-dir DIR "
        "on a disk with room)"
    )


def is_shard_key(key: str) -> bool:
    """`groups/<writer>/<field>/c/...`: a chunk or shard file, immutable once its commit is published."""
    parts = key.split("/")
    return len(parts) >= 5 and parts[0] == GROUPS and parts[3] == "c"


class ShardCache:
    """The local copies of one remote store's shards."""

    def __init__(self, location: StoreLocation, cache_dir: str | os.PathLike):
        check_output_folder(cache_dir, "--cache-dir")
        self.location = location
        digest = hashlib.sha256(location.url.rstrip("/").encode()).hexdigest()[:16]
        self.root = os.path.join(os.path.abspath(os.fspath(cache_dir)), digest)
        os.makedirs(self.root, exist_ok=True)
        with open(os.path.join(self.root, "store-url.txt"), "w") as note:
            note.write(location.url + "\n")
        self.local = ConfinedLocalStore(self.root, read_only=True)
        self.downloads = ThreadPoolExecutor(PARALLEL_DOWNLOADS, thread_name_prefix="shard-download")
        self.downloaded_bytes = 0
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def local_path(self, key: str) -> str:
        return os.path.join(self.root, *check_key(key, self.location.url).split("/"))

    def fetch(self, key: str) -> bool:
        """Make sure the shard is here (download it whole if not); False when the store has no such file
        (a chunk never written: Zarr reads its fill value)."""
        path = self.local_path(key)
        if os.path.exists(path):
            return True
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:  # one download per shard, however many reads wait for it
            if os.path.exists(path):
                return True
            os.makedirs(os.path.dirname(path), exist_ok=True)
            temporary = f"{path}.{uuid.uuid4().hex}.tmp"
            self.location.check_path(key)

            def download() -> bool:
                try:
                    self.location.fs.get_file(self.location.path(key), temporary)
                except FileNotFoundError:
                    return False
                return True

            try:
                found = self.location.call(f"read {key}", download)
                if found:
                    size = os.path.getsize(temporary)
                    with self._guard:  # downloads of other shards add to it from other threads
                        self.downloaded_bytes += size
                    os.replace(temporary, path)
            finally:
                if os.path.exists(temporary):
                    os.remove(temporary)
            return found

    def clear(self) -> None:
        """Drop every local copy of this store's shards."""
        shutil.rmtree(os.path.join(self.root, GROUPS), ignore_errors=True)

    def zarr_store(self, remote_store) -> "ReadThroughStore":
        return ReadThroughStore(remote_store, self)


class ReadThroughStore(WrapperStore):
    """The remote Zarr store, with shard reads served from (and first copied into) a ShardCache."""

    def __init__(self, store, cache: ShardCache):
        super().__init__(store)
        self.cache = cache

    def _with_store(self, store) -> "ReadThroughStore":
        return type(self)(store, self.cache)

    async def get(self, key, prototype=None, byte_range=None):
        if not is_shard_key(key):
            return await self._store.get(key, prototype, byte_range)
        # a shard copied already (every read after the first) is read here, not through the download pool
        if not os.path.exists(self.cache.local_path(key)):
            loop = asyncio.get_running_loop()
            if not await loop.run_in_executor(self.cache.downloads, self.cache.fetch, key):
                return None
        return await self.cache.local.get(key, prototype, byte_range)

    async def get_partial_values(self, prototype, key_ranges):
        return await asyncio.gather(*(self.get(key, prototype, byte_range) for key, byte_range in key_ranges))

    async def _get_many(self, requests):
        for key, prototype, byte_range in requests:
            yield key, await self.get(key, prototype, byte_range)
