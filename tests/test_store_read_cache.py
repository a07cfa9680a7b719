"""The local read-through cache of a remote store's shards (shared/store/read_cache.py, `--cache-dir`),
on moto's S3 server: a second reader reads local copies only, every value as written; a damaged local
copy is caught by the row checksum and read again from the store; a local store is read directly."""

from pathlib import Path

import pytest
import s3fs

from shared.store import StoreReader
from tests.small_store import FIELDS, assert_small_reads_back, write_small


def cached_shards(cache_dir: Path) -> list[Path]:
    return sorted(path for path in cache_dir.rglob("*") if path.is_file() and "/c/" in path.as_posix())


@pytest.mark.slow  # moto's server
def test_second_reader_reads_local_copies_and_a_damaged_copy_is_read_again(s3, tmp_path):
    url = s3.new_bucket() + "/store"
    write_small(url, range(10), batch_size=4)  # 3 commits: 3 shards per field
    remote = s3fs.S3FileSystem(skip_instance_cache=True)
    shards = [path for path in remote.find(url.removeprefix("s3://")) if "/c/" in path]
    assert len(shards) == 3 * len(FIELDS)

    first = StoreReader(url, cache_dir=tmp_path / "cache")
    assert_small_reads_back(first, range(10))
    local = cached_shards(tmp_path / "cache")
    assert len(local) == len(shards)
    assert first.cache.downloaded_bytes == sum(remote.size(path) for path in shards)
    assert (tmp_path / "cache").glob("*/store-url.txt").__next__().read_text() == url + "\n"

    second = StoreReader(url, cache_dir=tmp_path / "cache")
    assert_small_reads_back(second, range(10))
    assert second.cache.downloaded_bytes == 0  # every shard read from the local copies

    damaged = local[0]
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0x01
    damaged.write_bytes(bytes(data))
    third = StoreReader(url, cache_dir=tmp_path / "cache")
    assert_small_reads_back(third, range(10))  # caught by the row checksum; read again from the store
    assert third.cache.downloaded_bytes > 0
    key = damaged.relative_to(third.cache.root).as_posix()
    assert damaged.read_bytes() == remote.cat_file(f"{url.removeprefix('s3://')}/{key}")  # downloaded again


def test_a_local_store_is_read_directly(tmp_path):
    write_small(tmp_path / "store", range(3))
    reader = StoreReader(tmp_path / "store", cache_dir=tmp_path / "cache")
    assert reader.cache is None and not (tmp_path / "cache").exists()
    assert_small_reads_back(reader, range(3))


@pytest.mark.slow
def test_auto_keeps_copies_in_the_user_cache_folder_when_the_store_fits(s3, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    url = s3.new_bucket() + "/store"
    write_small(url, range(6), batch_size=3)
    reader = StoreReader(url, cache_dir="auto")
    assert reader.cache is not None and reader.cache.root.startswith(
        str(tmp_path / "xdg" / "distillcache" / "shards")
    )
    assert str(tmp_path / "xdg") in reader.cache_note and "--cache-dir none" in reader.cache_note
    assert_small_reads_back(reader, range(6))
    assert len(cached_shards(tmp_path / "xdg")) == 2 * len(FIELDS)  # 2 commits: 2 shards per field

    assert StoreReader(url, cache_dir="none").cache is None


def test_auto_keeps_no_copies_of_a_store_too_big_for_the_disk_nor_of_a_local_one(tmp_path, monkeypatch):
    import shutil

    from shared.store.paths import StoreLocation
    from shared.store.read_cache import choose_cache_dir

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    remote = StoreLocation.open("s3://some-bucket/store")  # nothing is read: only the URL counts
    free = shutil.disk_usage(tmp_path).free
    folder, note = choose_cache_dir(remote, "auto", store_bytes=int(0.4 * free))
    assert folder == str(tmp_path / "xdg" / "distillcache" / "shards") and folder in note
    folder, note = choose_cache_dir(remote, "auto", store_bytes=int(0.6 * free))
    assert folder is None and note.startswith("not keeping local copies of s3://some-bucket/store")
    assert choose_cache_dir(remote, str(tmp_path / "mine"), store_bytes=10**18) == (
        str(tmp_path / "mine"),
        "",
    )
    assert choose_cache_dir(remote, "none", store_bytes=1) == (None, "")
    for local in (StoreLocation.open(tmp_path / "store"), StoreLocation.open("memory://store")):
        assert choose_cache_dir(local, "auto", store_bytes=1) == (None, "")
    assert not (tmp_path / "xdg").exists()  # deciding creates nothing
