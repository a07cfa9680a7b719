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
