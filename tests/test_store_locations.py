"""StoreLocation (shared/store/paths.py) on a local folder and on an in-process object store
(tests/far_memory.py): what each file operation reads, writes, lists and refuses, checked against
the filesystem itself; errors are one line naming the store and what to check.

    .venv/bin/python -m pytest tests/test_store_locations.py -q
"""

import asyncio
import os

import fsspec
import pytest
from zarr.core.buffer import default_buffer_prototype

from shared.errors import DistillCacheError
from shared.store.confined import ConfinedFsspecStore, ConfinedLocalStore
from shared.store.paths import REMOTE_HINT, StoreLocation, is_access_error
from tests.far_memory import new_far_url


@pytest.fixture(params=["local", "remote"])
def location(request, tmp_path) -> StoreLocation:
    if request.param == "local":
        return StoreLocation.open(tmp_path / "store")
    return StoreLocation.open(new_far_url())


def test_open_gives_the_root_without_a_trailing_slash(tmp_path):
    local = StoreLocation.open(f"{tmp_path}/store/")
    assert local.root == f"{tmp_path}/store" and local.url == f"{tmp_path}/store/" and local.is_local
    remote = StoreLocation.open("farmem://bucket/store/")
    assert remote.root == "/bucket/store" and not remote.is_local
    assert StoreLocation.open("/").root == "/"
    assert remote.path("manifest/a.parquet") == "/bucket/store/manifest/a.parquet"
    assert remote.path("") == "/bucket/store"


def test_an_unknown_protocol_is_one_line_saying_what_to_give():
    with pytest.raises(DistillCacheError) as error:
        StoreLocation.open("nosuchprotocol://bucket/store")
    try:  # the reason is fsspec's own
        fsspec.core.url_to_fs("nosuchprotocol://bucket/store")
    except ValueError as reason:
        expected = f"cannot open store 'nosuchprotocol://bucket/store': {str(reason).splitlines()[0]}; "
    assert str(error.value).startswith(expected)
    assert str(error.value).endswith(
        "give a folder or an fsspec URL (s3:// needs `pip install distillcache[s3]`)"
    )


def test_written_files_read_back_and_leave_no_temporary(location):
    location.write_atomic("manifest/one.parquet", b"first")
    location.write_atomic("manifest/one.parquet", b"second")  # replaced whole
    location.write_atomic("store.json", b"{}")
    assert location.read_bytes("manifest/one.parquet") == b"second"
    assert location.read_bytes_if_exists("store.json") == b"{}"
    assert location.read_bytes_if_exists("manifest/two.parquet") is None
    assert location.exists("manifest") and location.exists() and not location.exists("groups")
    assert location.list_names("manifest", ".parquet") == ["one.parquet"]
    assert sorted(location.fs.find(location.root)) == sorted(
        location.path(name) for name in ("manifest/one.parquet", "store.json")
    )


def test_read_many_gives_each_file_or_none(location):
    for name in ("a", "b", "c"):
        location.write_atomic(f"manifest/{name}.parquet", name.encode() * 3)
    wanted = ["manifest/c.parquet", "manifest/missing.parquet", "manifest/a.parquet"]
    assert location.read_many_if_exist(wanted) == {
        "manifest/c.parquet": b"ccc",
        "manifest/missing.parquet": None,
        "manifest/a.parquet": b"aaa",
    }
    assert location.read_many_if_exist(["manifest/b.parquet"]) == {"manifest/b.parquet": b"bbb"}
    assert location.read_many_if_exist([]) == {}
    with pytest.raises(DistillCacheError, match="not a plain path"):
        location.read_many_if_exist(["manifest/a.parquet", "../outside"])


def test_a_failed_batched_read_is_one_line(monkeypatch):
    location = StoreLocation.open(new_far_url())
    location.write_atomic("manifest/a.parquet", b"a")
    location.write_atomic("manifest/b.parquet", b"b")
    cat_file = location.fs.cat_file
    denied = location.path("manifest/b.parquet")  # fsspec's own batched cat meets the error of one file
    monkeypatch.setattr(
        location.fs,
        "cat_file",
        lambda path, **kwargs: (
            (_ for _ in ()).throw(PermissionError("denied")) if path == denied else cat_file(path)
        ),
    )
    with pytest.raises(DistillCacheError) as error:
        location.read_many_if_exist(["manifest/a.parquet", "manifest/b.parquet"])
    assert str(error.value) == (
        f"cannot read manifest/b.parquet of store {location.url} (denied); check the URL, that the endpoint "
        "is reachable and your credentials (for s3://: AWS_* variables)"
    )


def test_list_names_keeps_visible_files_with_the_suffix_sorted(location):
    for name in ("b.parquet", "a.parquet", ".a.parquet.123.tmp", "c.json", ".hidden.parquet"):
        if name.startswith("."):
            location.fs.pipe_file(location.path(f"manifest/{name}"), b"x")
        else:
            location.write_atomic(f"manifest/{name}", b"x")
    assert location.list_names("manifest", ".parquet") == ["a.parquet", "b.parquet"]
    assert location.list_names("manifest", ".json") == ["c.json"]
    assert location.list_names("manifest", ".parquet", fresh=True) == ["a.parquet", "b.parquet"]
    assert location.list_names("claims", ".json") == []  # no such folder: nothing, not an error


def test_fresh_listing_bypasses_the_filesystem_cache(monkeypatch):
    location = StoreLocation.open(new_far_url())
    location.write_atomic("manifest/a.parquet", b"x")
    invalidated = []
    monkeypatch.setattr(location.fs, "invalidate_cache", invalidated.append)
    location.list_names("manifest", ".parquet")
    assert invalidated == []
    location.list_names("manifest", ".parquet", fresh=True)
    assert invalidated == [location.path("manifest")]


def test_remove_removes_one_file_and_a_missing_one_is_no_error(location):
    location.write_atomic("claims/a.json", b"[]")
    location.write_atomic("claims/b.json", b"[]")
    location.remove("claims/a.json")
    location.remove("claims/a.json")
    assert location.list_names("claims", ".json") == ["b.json"]
    with pytest.raises(DistillCacheError, match="not a plain path"):
        location.remove("claims/../store.json")


def test_total_bytes_counts_every_file_below(location):
    location.write_atomic("manifest/a.parquet", b"x" * 10)
    location.write_atomic("groups/w/f/c/0", b"y" * 7)
    location.write_atomic("store.json", b"z" * 3)
    assert location.total_bytes() == 20
    assert location.total_bytes("groups") == 7
    assert location.total_bytes("claims") == 0


def test_a_file_that_vanishes_while_measuring_counts_as_gone(monkeypatch):
    location = StoreLocation.open(new_far_url())
    location.write_atomic("a", b"x" * 10)
    location.write_atomic("b", b"y" * 5)
    real_size = location.fs.size

    def size(path):
        if path.endswith("/a"):
            raise FileNotFoundError(path)
        return real_size(path)

    monkeypatch.setattr(location.fs, "size", size)
    assert location.total_bytes() == 5


@pytest.mark.parametrize("relative", ["../x", "a/../../x", "/etc/passwd", "a//b", "a\\b", "./a", ""])
def test_paths_that_are_not_plain_are_refused_before_any_access(location, relative):
    with pytest.raises(DistillCacheError) as error:
        location.read_bytes(relative)
    assert str(error.value).startswith(f"store {location.url}: the path {relative!r} is not a plain path")
    with pytest.raises(DistillCacheError, match="is not a plain path inside the store"):
        location.write_atomic(relative, b"x")
    assert not location.exists()


def test_a_symlinked_file_is_refused_on_a_disk(tmp_path):
    location = StoreLocation.open(tmp_path / "store")
    location.write_atomic("real.json", b"{}")
    os.symlink(tmp_path / "store" / "real.json", tmp_path / "store" / "link.json")
    with pytest.raises(DistillCacheError) as error:
        location.read_bytes("link.json")
    assert str(error.value).startswith(f"store {location.url}: 'link.json' is a symbolic link")
    with pytest.raises(DistillCacheError, match="is a symbolic link"):
        location.read_bytes_if_exists("link.json")


def test_errors_of_the_filesystem_are_one_line_naming_the_store(tmp_path, monkeypatch):
    local = StoreLocation.open(tmp_path / "store")
    with pytest.raises(DistillCacheError) as error:
        local.read_bytes("store.json")
    assert str(error.value).startswith(f"cannot read store.json of store {tmp_path}/store (")
    assert str(error.value).endswith("); check the path and its permissions")
    remote = StoreLocation.open(new_far_url())
    monkeypatch.setattr(remote.fs, "cat_file", lambda path: (_ for _ in ()).throw(TimeoutError("slow\nmore")))
    with pytest.raises(DistillCacheError) as error:
        remote.read_bytes_if_exists("store.json")
    assert str(error.value) == (
        f"cannot read store.json of store {remote.url} (slow); check the URL, that the endpoint is reachable "
        "and your credentials (for s3://: AWS_* variables)"
    )
    original = DistillCacheError("already one line")
    with pytest.raises(DistillCacheError) as error:
        remote.call("do it", lambda: (_ for _ in ()).throw(original))
    assert error.value is original


def test_every_operation_on_an_unreachable_object_store_is_one_line_naming_it(monkeypatch):
    from shared.store.gc import list_store_files

    location = StoreLocation.open(new_far_url())
    for method in ("cat", "ls", "exists", "find", "rm_file", "pipe_file"):
        monkeypatch.setattr(
            location.fs, method, lambda *args, **kwargs: (_ for _ in ()).throw(TimeoutError("slow"))
        )
    folder = location.path("manifest")

    def refused(operation, what: str) -> None:
        with pytest.raises(DistillCacheError) as error:
            operation()
        assert str(error.value) == f"cannot {what} of store {location.url} (slow); {REMOTE_HINT}"

    refused(lambda: location.read_many_if_exist(["manifest/a", "manifest/b"]), "read 2 files")
    refused(lambda: location.remove("manifest/a"), "remove manifest/a")
    refused(lambda: location.write_atomic("manifest/a", b"1"), "write manifest/a")
    refused(lambda: location.exists_absolute(folder), f"look for {folder}")
    refused(lambda: location.exists(), "look for the folder")
    refused(lambda: list_store_files(location), "list the files")
    monkeypatch.setattr(location.fs, "exists", lambda path: True)  # found, then unreachable
    refused(lambda: location.list_names("manifest", ".parquet"), "list manifest")
    refused(lambda: location.total_bytes(), "measure the size")


def test_a_missing_bucket_is_refused_and_never_created(monkeypatch):
    location = StoreLocation.open("s3://no-such-bucket/store")
    asked = []
    monkeypatch.setattr(location.fs, "exists", lambda path: asked.append(path) or False)
    with pytest.raises(DistillCacheError, match="the bucket of s3://no-such-bucket/store does not exist"):
        location.check_writable()
    assert asked == ["no-such-bucket"]
    monkeypatch.setattr(location.fs, "exists", lambda path: True)
    location.check_writable()
    StoreLocation.open(new_far_url()).check_writable()  # no bucket to check on other filesystems


def test_a_local_store_must_be_a_folder_we_may_write(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(DistillCacheError) as error:
        StoreLocation.open(tmp_path / "file").check_writable()
    assert str(error.value) == f"store {tmp_path / 'file'} is a file, not a folder; choose another store"
    StoreLocation.open(tmp_path / "new").check_writable()


def test_access_errors_are_those_of_the_filesystem_or_network():
    assert is_access_error(FileNotFoundError("x")) and is_access_error(PermissionError("x"))
    assert is_access_error(TimeoutError("x")) and is_access_error(ConnectionError("x"))
    assert not is_access_error(ValueError("x")) and not is_access_error(KeyError("x"))
    botocore_error = type("NoCredentialsError", (Exception,), {"__module__": "botocore.exceptions"})
    assert is_access_error(botocore_error())
    for module in (
        "aiohttp.client",
        "s3fs.core",
        "gcsfs",
        "google.auth",
        "adlfs",
        "azure.core",
        "aiobotocore.x",
    ):
        assert is_access_error(type("E", (Exception,), {"__module__": module})())
    assert not is_access_error(type("E", (Exception,), {"__module__": "numcodecs.zstd"})())


def test_the_zarr_store_of_a_location_reads_its_files_and_refuses_keys_that_leave_it(location):
    location.write_atomic("zarr.json", b"{}")
    for read_only in (True, False):
        store = location.zarr_store(read_only=read_only)
        assert isinstance(store, ConfinedLocalStore if location.is_local else ConfinedFsspecStore)
        assert store.read_only is read_only
        assert asyncio.run(store.get("zarr.json", default_buffer_prototype())).to_bytes() == b"{}"
        with pytest.raises(DistillCacheError, match="not a plain path"):
            asyncio.run(store.get("../zarr.json", default_buffer_prototype()))


def test_an_object_store_reads_many_files_in_one_batched_call(monkeypatch):
    location = StoreLocation.open(new_far_url())
    for name in ("a", "b"):
        location.write_atomic(f"manifest/{name}.parquet", name.encode())
    calls = []
    real_cat = location.fs.cat
    monkeypatch.setattr(
        location.fs, "cat", lambda paths, *args: calls.append(list(paths)) or real_cat(paths, *args)
    )
    assert location.read_many_if_exist(["manifest/a.parquet", "manifest/b.parquet"]) == {
        "manifest/a.parquet": b"a",
        "manifest/b.parquet": b"b",
    }
    assert calls == [[location.path("manifest/a.parquet"), location.path("manifest/b.parquet")]]
    location.read_many_if_exist(["manifest/a.parquet"])  # one file: one plain read
    assert len(calls) == 1


class RecordingFileSystem:
    """Just enough of a filesystem for check_writable: records which paths were looked for."""

    def __init__(self, exists: bool):
        self.asked, self.answer = [], exists

    def exists(self, path):
        self.asked.append(path)
        return self.answer


@pytest.mark.parametrize("protocol", ["s3", "s3a", "gs", "gcs", "az", "abfs"])
def test_the_bucket_is_checked_on_every_object_store_protocol(protocol):
    for exists in (True, False):
        fs = RecordingFileSystem(exists)
        location = StoreLocation(f"{protocol}://team-bucket/stores/cache", fs, "team-bucket/stores/cache")
        if exists:
            location.check_writable()
        else:
            with pytest.raises(DistillCacheError) as error:
                location.check_writable()
            assert str(error.value) == (
                f"the bucket of {protocol}://team-bucket/stores/cache does not exist (or these credentials cannot "
                "see it); create it first: distillcache never creates buckets"
            )
        assert fs.asked == ["team-bucket"]


def test_no_bucket_is_looked_for_on_other_filesystems():
    for url in ("hf://datasets/team/cache", "team-bucket/stores/cache", "memory://team-bucket/cache"):
        fs = RecordingFileSystem(False)
        StoreLocation(url, fs, "team-bucket/stores/cache").check_writable()
        assert fs.asked == []
