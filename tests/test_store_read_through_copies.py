"""The read-through copies of a remote store's shards (shared/store/read_cache.py), in seconds: the
"remote" store is an in-process fsspec filesystem that is neither a local folder nor memory://, so
StoreReader treats it as an object store (tests/far_memory.py; tests/test_store_read_cache.py runs
the same on moto's S3 server, as slow tests). Every expected value is read from the remote filesystem itself."""

import asyncio
import hashlib
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from zarr.core.buffer import default_buffer_prototype

from shared.errors import DistillCacheError
from shared.store import StoreReader
from shared.store.paths import StoreLocation
from shared.store.read_cache import ShardCache, choose_cache_dir, default_cache_root, is_shard_key
from tests.far_memory import FarMemoryFileSystem, new_far_url
from tests.small_store import FIELDS, assert_small_reads_back, small_arrays, small_ids, write_small


def remote_store(indices=range(10), batch_size: int = 4) -> str:
    url = new_far_url()
    write_small(url, indices, batch_size=batch_size)
    return url


def remote_shards(url: str) -> dict[str, bytes]:
    """{key inside the store: bytes} of every shard file of the remote store."""
    fs = FarMemoryFileSystem()
    root = url.removeprefix("farmem://")
    return {
        path.removeprefix("/").removeprefix(root + "/"): fs.cat_file(path)
        for path in fs.find(root)
        if "/c/" in path
    }


def local_files(cache_root: Path) -> dict[str, bytes]:
    return {
        path.relative_to(cache_root).as_posix(): path.read_bytes()
        for path in cache_root.rglob("*")
        if path.is_file()
    }


def test_first_reader_copies_every_shard_byte_for_byte_and_the_second_downloads_nothing(tmp_path):
    url = remote_store()  # 3 commits: 3 shards per field
    shards = remote_shards(url)
    assert len(shards) == 3 * len(FIELDS)

    first = StoreReader(url, cache_dir=tmp_path / "cache")
    root = tmp_path / "cache" / hashlib.sha256(url.encode()).hexdigest()[:16]
    assert first.cache.root == str(root)
    assert first.cache_note == ""  # a folder given: nothing to explain
    assert_small_reads_back(first, range(10))
    copies = local_files(root)
    assert copies.pop("store-url.txt") == (url + "\n").encode()
    assert copies == shards  # only shard files (no zarr.json, no manifest), each whole
    assert first.cache.downloaded_bytes == sum(len(data) for data in shards.values())

    second = StoreReader(url + "/", cache_dir=tmp_path / "cache")  # the same store, spelled with a '/'
    assert second.cache.root == str(root)
    assert_small_reads_back(second, range(10))
    assert second.cache.downloaded_bytes == 0


def test_a_damaged_local_copy_is_caught_and_read_again_from_the_store(tmp_path):
    url = remote_store()
    shards = remote_shards(url)
    StoreReader(url, cache_dir=tmp_path / "cache").read_stored("latents", np.arange(10))
    reader = StoreReader(url, cache_dir=tmp_path / "cache")
    key = sorted(key for key in shards if "/latents/" in key)[0]
    damaged = Path(reader.cache.local_path(key))
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0x01
    damaged.write_bytes(bytes(data))

    assert_small_reads_back(reader, range(10))
    assert damaged.read_bytes() == shards[key]  # downloaded again
    assert reader.cache.downloaded_bytes == sum(len(data) for data in shards.values())  # the cache emptied


def test_a_store_whose_data_is_damaged_is_read_from_the_store_once_then_refused(tmp_path):
    url = remote_store(range(4))
    fs = FarMemoryFileSystem()
    root = url.removeprefix("farmem://")
    key = next(key for key in remote_shards(url) if "/latents/" in key)
    data = bytearray(fs.cat_file(f"{root}/{key}"))
    data[len(data) // 2] ^= 0x01
    fs.pipe_file(f"{root}/{key}", bytes(data))
    reader = StoreReader(url, cache_dir=tmp_path / "cache")
    with pytest.raises(DistillCacheError, match="checksum|cannot be decoded"):
        reader.read_stored("latents", np.arange(4))
    assert reader._cache_cleared
    assert reader.cache.downloaded_bytes == 2 * len(data)  # copied, emptied, copied once more


def test_auto_keeps_copies_in_the_user_cache_folder_and_none_keeps_none(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    url = remote_store(range(6), batch_size=3)
    reader = StoreReader(url, cache_dir="auto")
    assert default_cache_root() == str(tmp_path / "xdg" / "distillcache" / "shards")
    assert reader.cache.root.startswith(default_cache_root() + "/")
    assert reader.cache_note == (
        f"reading {url} through local copies of its shards in {default_cache_root()} (later epochs and runs "
        "read them; --cache-dir none: no copies; --cache-dir DIR: another folder)"
    )
    assert_small_reads_back(reader, range(6))
    assert len(local_files(Path(reader.cache.root))) == 2 * len(FIELDS) + 1  # 2 shards a field, the url note

    for none in ("none", "", None):
        assert StoreReader(url, cache_dir=none).cache is None


def test_auto_weighs_the_stores_rows_at_their_uncompressed_bytes(monkeypatch):
    """6 rows of float16 latents (3, 4, 4) and an int32 label: 6 x (96 + 4) bytes."""
    weighed = []
    monkeypatch.setattr(
        "shared.store.reader.choose_cache_dir",
        lambda location, cache_dir, store_bytes: weighed.append(store_bytes) or (None, ""),
    )
    StoreReader(remote_store(range(6), batch_size=3), cache_dir="auto")
    assert weighed == [6 * sum(value.nbytes for value in small_arrays(0).values())] == [600]


def test_the_default_cache_root_without_xdg_is_under_the_home_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_root() == f"{tmp_path}/.cache/distillcache/shards"


def test_auto_measures_the_free_space_of_the_nearest_existing_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "not" / "made" / "yet"))
    measured = []
    free = 10**9

    def disk_usage(path):
        measured.append(path)
        return type("Usage", (), {"free": free})()

    monkeypatch.setattr("shared.store.read_cache.shutil.disk_usage", disk_usage)
    remote = StoreLocation.open("s3://some-bucket/store")
    assert choose_cache_dir(remote, "auto", store_bytes=free // 2)[0] == default_cache_root()  # half: fits
    folder, note = choose_cache_dir(remote, "auto", store_bytes=free // 2 + 1)
    assert measured == [str(tmp_path), str(tmp_path)]
    assert folder is None
    assert note == (
        "not keeping local copies of s3://some-bucket/store's shards: up to 0.5 GB, more than half of the "
        f"1.0 GB free in {tmp_path}; every epoch reads the store (give --cache-dir DIR on a disk with room)"
    )
    assert choose_cache_dir(remote, tmp_path / "mine", store_bytes=1) == (str(tmp_path / "mine"), "")
    for none in (None, "", "none"):
        assert choose_cache_dir(remote, none, store_bytes=1) == (None, "")


@pytest.mark.parametrize(
    "key, shard",
    [
        ("groups/w1/latents/c/0/0/0", True),
        ("groups/w1/label/c/2", True),
        ("groups/w1/label/zarr.json", False),
        ("groups/w1/label/c", False),
        ("groups/w1/c/0", False),
        ("manifest/0001.parquet", False),
        ("other/w1/label/c/0", False),
        ("store.json", False),
    ],
)
def test_only_shard_files_are_kept(key, shard):
    assert is_shard_key(key) is shard


def test_a_chunk_the_store_lacks_is_no_copy_and_leaves_nothing(tmp_path):
    url = remote_store(range(4))
    cache = ShardCache(StoreLocation.open(url), tmp_path / "cache")
    key = next(iter(remote_shards(url)))
    missing = key.rsplit("/", 1)[0] + "/999"
    assert cache.fetch(missing) is False
    assert cache.fetch(key) is True
    assert sorted(local_files(Path(cache.root))) == sorted(["store-url.txt", key])  # no temporary left
    assert cache.downloaded_bytes == len(remote_shards(url)[key])
    store = cache.zarr_store(StoreLocation.open(url).zarr_store(read_only=True))
    prototype = default_buffer_prototype()
    assert asyncio.run(store.get(missing, prototype)) is None
    whole = asyncio.run(store.get(key, prototype)).to_bytes()
    assert whole == remote_shards(url)[key]
    values = asyncio.run(store.get_partial_values(prototype, [(key, None), ("zarr.json", None)]))
    assert values[0].to_bytes() == whole
    assert values[1].to_bytes() == FarMemoryFileSystem().cat_file(
        url.removeprefix("farmem://") + "/zarr.json"
    )


def test_a_key_that_leaves_the_store_is_refused_before_any_download(tmp_path):
    url = remote_store(range(2))
    cache = ShardCache(StoreLocation.open(url), tmp_path / "cache")
    for key in ("groups/../../x/c/0", "/groups/w/f/c/0", "groups//w/f/c/0"):
        with pytest.raises(DistillCacheError, match="not a plain path"):
            cache.fetch(key)
    assert cache.downloaded_bytes == 0


def test_reads_that_ask_for_one_shard_at_once_download_it_once(tmp_path, monkeypatch):
    url = remote_store(range(4))
    key = next(iter(remote_shards(url)))
    cache = ShardCache(StoreLocation.open(url), tmp_path / "cache")
    downloads = []
    real_get_file = cache.location.fs.get_file

    def slow_get_file(remote, local):
        downloads.append(remote)
        time.sleep(0.05)  # long enough for every other thread to be waiting on this shard
        return real_get_file(remote, local)

    monkeypatch.setattr(cache.location.fs, "get_file", slow_get_file)
    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.fetch(key))) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [True] * 6
    assert len(downloads) == 1
    assert cache.downloaded_bytes == len(remote_shards(url)[key])


def test_a_cache_folder_that_is_a_file_is_refused_naming_the_flag(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(DistillCacheError) as error:
        ShardCache(StoreLocation.open(new_far_url()), tmp_path / "file")
    assert (
        str(error.value)
        == f"--cache-dir {tmp_path / 'file'} is a file, not a folder; choose another --cache-dir"
    )


def test_a_read_of_some_steps_read_again_from_the_store_gives_those_steps(tmp_path):
    url = remote_store(range(4), batch_size=4)
    StoreReader(url, cache_dir=tmp_path / "cache").read_stored("latents", np.arange(4))  # copies made
    reader = StoreReader(url, cache_dir=tmp_path / "cache")
    (key,) = [key for key in remote_shards(url) if "/latents/" in key]
    damaged = Path(reader.cache.local_path(key))
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0x01
    damaged.write_bytes(bytes(data))
    values = reader.read_stored("latents", [3, 0], steps=[2, 0])
    by_id = small_ids(range(4))
    ids = reader.manifest.column("sample_id").to_pylist()
    expected = np.stack([small_arrays(by_id[ids[row]])["latents"][[2, 0]] for row in (3, 0)])
    assert reader._cache_cleared and np.array_equal(values, expected)


def test_a_byte_range_of_a_shard_is_served_from_its_local_copy(tmp_path):
    from zarr.abc.store import RangeByteRequest

    url = remote_store(range(4))
    key, data = next(iter(remote_shards(url).items()))
    cache = ShardCache(StoreLocation.open(url), tmp_path / "cache")
    store = cache.zarr_store(StoreLocation.open(url).zarr_store(read_only=True))
    prototype = default_buffer_prototype()
    (part,) = asyncio.run(store.get_partial_values(prototype, [(key, RangeByteRequest(2, 9))]))
    assert part.to_bytes() == data[2:9]
    assert asyncio.run(store.get(key, prototype, RangeByteRequest(1, 4))).to_bytes() == data[1:4]


def test_stores_whose_urls_differ_only_in_trailing_letters_get_their_own_folders(tmp_path):
    roots = {
        ShardCache(StoreLocation.open(f"farmem://bucket/{name}"), tmp_path / "cache").root
        for name in ("store", "storeX", "store/", "storeXX/")
    }
    assert len(roots) == 2 + 1  # "store" and "store/" share one


def test_a_shard_already_copied_is_not_downloaded_again_and_clear_keeps_the_url_note(tmp_path):
    url = remote_store(range(4))
    key = next(iter(remote_shards(url)))
    cache = ShardCache(StoreLocation.open(url), tmp_path / "cache")
    cache.clear()  # nothing copied yet: nothing to do
    assert cache.fetch(key) is True and cache.fetch(key) is True
    assert cache.downloaded_bytes == len(remote_shards(url)[key])
    cache.clear()
    assert sorted(local_files(Path(cache.root))) == ["store-url.txt"]


def test_a_failed_download_is_one_line_and_leaves_no_partial_file(tmp_path, monkeypatch):
    url = remote_store(range(4))
    key = next(iter(remote_shards(url)))
    cache = ShardCache(StoreLocation.open(url), tmp_path / "cache")

    def broken_get_file(remote, local):
        Path(local).write_bytes(b"half a shard")
        raise ConnectionError("connection reset\nby peer")

    monkeypatch.setattr(cache.location.fs, "get_file", broken_get_file)
    with pytest.raises(DistillCacheError) as error:
        cache.fetch(key)
    assert str(error.value) == (
        f"cannot read {key} of store {url} (connection reset); check the URL, that the endpoint is reachable "
        "and your credentials (for s3://: AWS_* variables)"
    )
    assert sorted(local_files(Path(cache.root))) == ["store-url.txt"]


def test_a_bad_key_is_refused_naming_the_store(tmp_path):
    url = remote_store(range(2))
    cache = ShardCache(StoreLocation.open(url), tmp_path / "cache")
    with pytest.raises(DistillCacheError) as error:
        cache.local_path("groups/../../x")
    assert str(error.value) == (
        f"store {url}: the path 'groups/../../x' is not a plain path inside the store; the store is damaged or hostile"
    )


def test_a_byte_range_of_a_file_that_is_not_a_shard_is_read_from_the_store(tmp_path):
    from zarr.abc.store import RangeByteRequest

    url = remote_store(range(2))
    whole = FarMemoryFileSystem().cat_file(url.removeprefix("farmem://") + "/zarr.json")
    cache = ShardCache(StoreLocation.open(url), tmp_path / "cache")
    store = cache.zarr_store(StoreLocation.open(url).zarr_store(read_only=True))
    part = asyncio.run(store.get("zarr.json", default_buffer_prototype(), RangeByteRequest(1, 6)))
    assert part.to_bytes() == whole[1:6]
    assert local_files(Path(cache.root)) == {"store-url.txt": (url + "\n").encode()}  # nothing copied
