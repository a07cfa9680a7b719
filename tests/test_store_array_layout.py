"""The Zarr description a writer gives each field, read from its zarr.json and checked against the
documented defaults and layout rules (docs/contracts.md, shared/store/arrays.py), computed here by hand:
Blosc zstd level 3 with byte shuffle then a CRC-32C; a shard of the first commit's rows; a sample of
64 KiB or more its own chunk, split along its first axis above 4 MiB; smaller ones packed ~256 KiB.

    .venv/bin/python -m pytest tests/test_store_array_layout.py -q
"""

import json

import pytest

from shared.errors import DistillCacheError
from shared.store import FieldSpec
from shared.store.arrays import Compression, chunk_layout
from tests.small_store import FIELDS, write_small


def inner_codecs(store, writer: str, field: str) -> tuple[dict, list[dict]]:
    metadata = json.loads((store / "groups" / writer / field / "zarr.json").read_text())
    (sharding,) = metadata["codecs"]
    assert sharding["name"] == "sharding_indexed"
    return metadata, sharding["configuration"]["codecs"]


def test_a_writer_compresses_with_blosc_zstd_level_3_and_byte_shuffle_by_default(tmp_path):
    store = tmp_path / "store"
    write_small(store, range(3), batch_size=3, writer_id="w")
    for field, itemsize in (("latents", 2), ("label", 4)):
        metadata, codecs = inner_codecs(store, "w", field)
        assert [codec["name"] for codec in codecs] == ["bytes", "blosc", "crc32c"]
        blosc = codecs[1]["configuration"]
        assert (blosc["cname"], blosc["clevel"], blosc["shuffle"], blosc["typesize"]) == (
            "zstd",
            3,
            "shuffle",
            itemsize,
        )
        assert metadata["chunk_grid"]["configuration"]["chunk_shape"] == [3, *FIELDS[field].shape]  # shard
        assert metadata["attributes"] == {"dtype": FIELDS[field].dtype}


def test_lz4_level_5_and_no_compression_are_described_as_asked(tmp_path):
    write_small(tmp_path / "lz4", range(2), writer_id="w", compressor="lz4", clevel=5)
    blosc = inner_codecs(tmp_path / "lz4", "w", "latents")[1][1]["configuration"]
    assert (blosc["cname"], blosc["clevel"]) == ("lz4", 5)
    write_small(tmp_path / "none", range(2), writer_id="w", compressor="none")
    assert [codec["name"] for codec in inner_codecs(tmp_path / "none", "w", "latents")[1]] == [
        "bytes",
        "crc32c",
    ]


@pytest.mark.parametrize("name, level", [("gzip", 3), ("zstd", 10), ("zstd", -1), ("zstd", 2.0)])
def test_unknown_compressors_and_levels_are_refused(name, level):
    with pytest.raises(DistillCacheError):
        Compression(name, level)


@pytest.mark.parametrize(
    "spec, shard_rows, chunks, shards",
    [
        # 64 KiB exactly (float32 4x64x64): its own chunk, whole
        (FieldSpec("float32", (4, 64, 64)), 8, (1, 4, 64, 64), (8, 4, 64, 64)),
        # just under 64 KiB: packed, 256 KiB // 65,532 B = 4 rows, the largest divisor of 6 at most 4 is 3
        (FieldSpec("uint8", (65532,)), 6, (3, 65532), (6, 65532)),
        # 96 B rows: up to 2,730 per chunk, so the whole shard of 5 rows is one chunk
        (FieldSpec("float16", (3, 4, 4)), 5, (5, 3, 4, 4), (5, 3, 4, 4)),
        # a scalar per row (4 B): the shard is one chunk
        (FieldSpec("int32", ()), 7, (7,), (7,)),
        # 4 MiB exactly: not split
        (FieldSpec("float16", (16, 128, 1024)), 2, (1, 16, 128, 1024), (2, 16, 128, 1024)),
        # 51 steps of 4x64x64 float32 (64 KiB each, 3.2 MiB): not split
        (FieldSpec("float32", (51, 4, 64, 64)), 4, (1, 51, 4, 64, 64), (4, 51, 4, 64, 64)),
        # 51 steps of 4x128x128 float32 (256 KiB each, 12.75 MiB): 16 steps a chunk, 64 steps a shard
        (FieldSpec("float32", (51, 4, 128, 128)), 3, (1, 16, 4, 128, 128), (3, 64, 4, 128, 128)),
        # 5 steps of 1 MiB + 4 B: 3 steps a chunk (3 MiB + 12 B <= 4 MiB), shard of 6 steps
        (FieldSpec("uint8", (5, 1024 * 1024 + 4)), 2, (1, 3, 1024 * 1024 + 4), (2, 6, 1024 * 1024 + 4)),
    ],
)
def test_chunk_layout_follows_the_documented_rules(spec, shard_rows, chunks, shards):
    assert chunk_layout(spec, shard_rows) == (chunks, shards)
