"""Zarr stores confined to the store folder (shared/store/confined.py): every way Zarr reaches a key
(get, partial get, exists, set, delete, the sync calls) refuses a key that is not a plain relative path,
and on a disk one that passes through a symlink, before any byte behind it is touched.

    .venv/bin/python -m pytest tests/test_store_confined_keys.py -q
"""

import asyncio
import os

import pytest
from zarr.core.buffer import default_buffer_prototype

from shared.errors import DistillCacheError
from shared.store.confined import ConfinedFsspecStore, ConfinedLocalStore, check_key, check_no_link
from tests.far_memory import new_far_url

PROTOTYPE = default_buffer_prototype()
BAD_KEYS = ["../secret", "a/../../secret", "/etc/passwd", "a//b", "a\\b", "./a", "a/.", "", "a/"]


def buffer(data: bytes):
    return PROTOTYPE.buffer.from_bytes(data)


@pytest.mark.parametrize("key", BAD_KEYS)
def test_a_key_that_is_not_a_plain_relative_path_is_refused_naming_it(key):
    with pytest.raises(DistillCacheError) as error:
        check_key(key, "s3://b/store")
    assert str(error.value) == (
        f"store s3://b/store: the path {key!r} is not a plain path inside the store; the store is damaged or hostile"
    )


@pytest.mark.parametrize("key", ["zarr.json", "groups/w/f/c/0/0", "a.b/..c/d.."])
def test_plain_keys_pass_unchanged(key):
    assert check_key(key, "store") == key


def test_a_link_anywhere_on_the_way_is_refused(tmp_path):
    root = tmp_path / "store"
    (root / "groups" / "w").mkdir(parents=True)
    (root / "groups" / "w" / "file").write_bytes(b"x")
    (tmp_path / "outside").mkdir()
    (root / "groups" / "linked").symlink_to(tmp_path / "outside")
    (root / "groups" / "w" / "link").symlink_to(root / "groups" / "w" / "file")  # inside, still refused
    check_no_link(str(root), "groups/w/file", "store")
    check_no_link(str(root), "groups/w/not-yet-there", "store")  # a file to be written
    for relative, leads_to in (
        ("groups/linked/x", tmp_path / "outside" / "x"),
        ("groups/w/link", root / "groups" / "w" / "file"),
    ):
        with pytest.raises(DistillCacheError) as error:
            check_no_link(str(root), relative, "store")
        assert str(error.value) == (
            f"store store: {relative!r} is a symbolic link or lies in a linked folder (it leads to {leads_to}); "
            "a store must hold its own files: copy the data in instead of linking it"
        )


@pytest.fixture(params=["local", "remote"])
def store(request, tmp_path):
    if request.param == "local":
        (tmp_path / "outside").write_bytes(b"secret")
        return ConfinedLocalStore(tmp_path / "store", read_only=False)
    return ConfinedFsspecStore.from_url(new_far_url(), read_only=False)


def test_every_access_by_key_is_checked(store):
    asyncio.run(store.set("a/b", buffer(b"data")))
    assert asyncio.run(store.get("a/b", PROTOTYPE)).to_bytes() == b"data"
    assert asyncio.run(store.exists("a/b"))
    assert [
        value.to_bytes() for value in asyncio.run(store.get_partial_values(PROTOTYPE, [("a/b", None)]))
    ] == [b"data"]
    for bad in ("../outside", "a/../../outside"):
        for call in (
            store.get(bad, PROTOTYPE),
            store.exists(bad),
            store.delete(bad),
            store.set(bad, buffer(b"overwritten")),
            store.get_partial_values(PROTOTYPE, [("a/b", None), (bad, None)]),
        ):
            with pytest.raises(DistillCacheError, match="not a plain path"):
                asyncio.run(call)
    asyncio.run(store.delete("a/b"))
    assert not asyncio.run(store.exists("a/b"))


def test_the_local_stores_sync_calls_and_links_are_checked(tmp_path):
    (tmp_path / "outside").write_bytes(b"secret")
    store = ConfinedLocalStore(tmp_path / "store", read_only=False)
    store.set_sync("zarr.json", buffer(b"{}"))
    assert store.get_sync("zarr.json", prototype=PROTOTYPE).to_bytes() == b"{}"
    os.symlink(tmp_path / "outside", tmp_path / "store" / "link")
    for call in (
        lambda: store.get_sync("link", prototype=PROTOTYPE),
        lambda: store.get_sync("../outside", prototype=PROTOTYPE),
        lambda: store.set_sync("link", buffer(b"overwritten")),
        lambda: asyncio.run(store.get("link", PROTOTYPE)),
        lambda: asyncio.run(store.set("link", buffer(b"overwritten"))),
        lambda: asyncio.run(store.exists("link")),
        lambda: asyncio.run(store.delete("link")),
    ):
        with pytest.raises(DistillCacheError):
            call()
    assert (tmp_path / "outside").read_bytes() == b"secret"


def test_a_store_whose_root_is_reached_through_a_link_reads_its_own_files(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "zarr.json").write_bytes(b"{}")
    (tmp_path / "alias").symlink_to(tmp_path / "real")  # the root itself may be a link: only keys are checked
    store = ConfinedLocalStore(tmp_path / "alias", read_only=True)
    assert asyncio.run(store.get("zarr.json", PROTOTYPE)).to_bytes() == b"{}"


def test_a_file_is_checked_at_every_read_and_its_folders_once(tmp_path, monkeypatch):
    root = tmp_path / "store"
    (root / "groups" / "w").mkdir(parents=True)
    for name in ("a", "b", "target"):
        (root / "groups" / "w" / name).write_bytes(name.encode())
    store = ConfinedLocalStore(root, read_only=True)
    resolved = []
    realpath = os.path.realpath
    monkeypatch.setattr(os.path, "realpath", lambda path: resolved.append(path) or realpath(path))
    for key in ("groups/w/a", "groups/w/b", "groups/w/a"):
        assert asyncio.run(store.get(key, PROTOTYPE)).to_bytes() == key[-1].encode()
    assert resolved == [str(root / "groups" / "w" / "a")]  # the folder chain once, for the first file
    (root / "groups" / "w" / "b").unlink()
    (root / "groups" / "w" / "b").symlink_to(root / "groups" / "w" / "target")  # a link where a file was
    with pytest.raises(DistillCacheError, match="'groups/w/b' is a symbolic link"):
        asyncio.run(store.get("groups/w/b", PROTOTYPE))


def test_a_linked_folder_beside_a_checked_one_is_refused_naming_the_store(tmp_path):
    """Folders are checked once each, by their whole path: groups/w1 being checked says nothing of
    groups/w2 (a link), nor of groups/w3, which did not exist when a key in it was first asked for."""
    root = tmp_path / "store"
    (root / "groups" / "w1").mkdir(parents=True)
    (root / "groups" / "w1" / "a").write_bytes(b"a")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "a").write_bytes(b"secret")
    (root / "groups" / "w2").symlink_to(tmp_path / "outside")
    (root / "groups" / "w 4").symlink_to(tmp_path / "outside")  # a name with a space is split at "/" only
    store = ConfinedLocalStore(root, read_only=True)
    assert asyncio.run(store.get("groups/w1/a", PROTOTYPE)).to_bytes() == b"a"
    assert not asyncio.run(store.exists("groups/w3/a"))  # its folder is not there yet
    (root / "groups" / "w3").symlink_to(tmp_path / "outside")
    for writer in ("w2", "w3", "w 4"):
        with pytest.raises(DistillCacheError) as error:
            asyncio.run(store.get(f"groups/{writer}/a", PROTOTYPE))
        assert str(error.value) == (
            f"store {root}: 'groups/{writer}/a' is a symbolic link or lies in a linked folder (it leads to "
            f"{tmp_path / 'outside' / 'a'}); a store must hold its own files: copy the data in instead of linking it"
        )


@pytest.mark.parametrize("kind", ["local", "remote"])
def test_a_bad_key_names_the_store_it_was_asked_of(tmp_path, kind):
    if kind == "local":
        store, where = ConfinedLocalStore(tmp_path / "store"), str(tmp_path / "store")
    else:
        store = ConfinedFsspecStore.from_url(new_far_url(), read_only=False)
        where = store.path
    with pytest.raises(DistillCacheError) as error:
        asyncio.run(store.get("../x", PROTOTYPE))
    assert str(error.value) == (
        f"store {where}: the path '../x' is not a plain path inside the store; the store is damaged or hostile"
    )


def test_the_local_store_is_writable_by_default_keeps_set_if_not_exists_and_reads_byte_ranges(tmp_path):
    """As zarr's LocalStore: writable unless read_only, set_if_not_exists never overwrites, and
    get_sync honours a byte range."""
    from zarr.abc.store import RangeByteRequest

    store = ConfinedLocalStore(tmp_path / "store")
    store.set_sync("groups/x", buffer(b"first"))
    asyncio.run(store.set_if_not_exists("groups/x", buffer(b"second")))
    assert store.get_sync("groups/x", prototype=PROTOTYPE).to_bytes() == b"first"
    part = store.get_sync("groups/x", prototype=PROTOTYPE, byte_range=RangeByteRequest(1, 3))
    assert part.to_bytes() == b"ir"


def test_the_object_store_refuses_a_byte_range_write_as_zarrs_does():
    store = ConfinedFsspecStore.from_url(new_far_url(), read_only=False)
    with pytest.raises(NotImplementedError):  # never the whole value written in place of a part
        asyncio.run(store.set("groups/x", buffer(b"part"), (0, 4)))
    assert not asyncio.run(store.exists("groups/x"))
