"""`teacher-cache info` and `teacher-cache verify` on small stores, through the real command line.

.venv/bin/python -m pytest tests/test_store_cli.py -q
"""

import json
import shutil

import pytest

from shared.errors import DistillCacheError
from shared.store import StoreReader
from teacher_cache.cli import main
from tests.store_fixtures import FIELDS, FINGERPRINT, SETTINGS, TEACHER, write_samples


def test_info_json_describes_the_store(tmp_path, capsys):
    write_samples(tmp_path / "store", range(12), batch_size=4)
    assert main(["info", str(tmp_path / "store"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["format_version"] == 2
    assert summary["samples"] == 12 and sum(summary["splits"].values()) == 12
    assert summary["fields"]["trajectory"] == {
        "dtype": "float16",
        "shape": [6, 4, 8, 8],
        "bytes_per_sample": 3072,
    }
    assert set(summary["fields"]) == set(FIELDS)
    assert summary["fingerprint"] == FINGERPRINT and summary["teacher"] == TEACHER
    assert summary["settings"] == SETTINGS
    on_disk = sum(path.stat().st_size for path in (tmp_path / "store").rglob("*") if path.is_file())
    assert summary["bytes"] == on_disk


def test_info_text_names_samples_fields_and_teacher(tmp_path, capsys):
    write_samples(tmp_path / "store", range(3))
    assert main(["info", str(tmp_path / "store")]) == 0
    text = capsys.readouterr().out
    assert "samples    3 (" in text
    assert "cond.encoder_hidden_states" in text and "bfloat16" in text and "(7, 32)" in text
    assert "TinyPipeline" in text


def test_verify_exits_0_on_a_clean_store_and_1_naming_a_damaged_row(tmp_path, capsys):
    write_samples(tmp_path / "store", range(4), batch_size=1)
    assert main(["verify", str(tmp_path / "store")]) == 0
    assert "ok: 4 rows" in capsys.readouterr().out

    shard = next((tmp_path / "store" / "groups").glob("*/preview/c/2/0/0/0"))
    data = bytearray(shard.read_bytes())
    data[30] ^= 0x01
    shard.write_bytes(bytes(data))
    assert main(["verify", str(tmp_path / "store")]) == 1
    captured = capsys.readouterr()
    assert "1 of 4 rows are damaged" in captured.err
    assert len(captured.out.splitlines()) == 1 and "row 2" in captured.out and "field preview" in captured.out


def test_not_a_store_is_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for command in ("info", "verify"):
        assert main([command, str(tmp_path / "empty")]) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and error.startswith("teacher-cache: error:") and "store.json" in error


def test_info_on_a_store_with_no_rows_yet(tmp_path, capsys):
    from shared.store import StoreWriter

    writer = StoreWriter(
        tmp_path / "store", fingerprint=FINGERPRINT, teacher=TEACHER, settings=SETTINGS, fields=FIELDS
    )
    writer._ensure_store_json()  # what a first commit killed before its manifest leaves behind
    assert main(["info", str(tmp_path / "store"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["samples"] == 0
    assert main(["verify", str(tmp_path / "store")]) == 0


def test_a_store_whose_manifest_folder_is_gone_is_an_error_not_an_empty_store(tmp_path, capsys):
    write_samples(tmp_path / "store", range(3))
    shutil.rmtree(tmp_path / "store" / "manifest")
    for command in ("info", "verify"):
        assert main([command, str(tmp_path / "store")]) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and "manifest/ is missing" in error


def test_a_store_with_manifests_named_the_older_way_says_so_in_one_line(tmp_path, capsys):
    """An older development version named commit files <writer>-<row>.parquet and wrote no
    manifest/.present (e.g. w32467-a757019401-000000000000.parquet): say that, not 'manifest/ is missing'."""
    write_samples(tmp_path / "store", range(6), batch_size=2)
    manifest = tmp_path / "store" / "manifest"
    for path in manifest.glob("*.parquet"):
        path.rename(path.with_name(path.name.rsplit("-", 1)[0] + ".parquet"))  # drop the -<crc32c>
    for marker in (True, False):
        if not marker:
            (manifest / ".present").unlink()
        for command in ("info", "verify"):
            assert main([command, str(tmp_path / "store")]) == 2
            error = capsys.readouterr().err
            assert error.count("\n") == 1 and "manifest/ holds 3 files not named" in error
            assert "older distillcache development version" in error and "missing" not in error
    with pytest.raises(DistillCacheError, match="holds 3 files not named"):
        StoreReader(tmp_path / "store")


def test_info_and_verify_report_rows_committed_twice(tmp_path, capsys):
    from shared.store import StoreWriter
    from tests.store_fixtures import batch_for

    write_samples(tmp_path / "store", range(4))
    racer = StoreWriter(
        tmp_path / "store", fingerprint=FINGERPRINT, teacher=TEACHER, settings=SETTINGS, fields=FIELDS
    )
    racer.commit(*batch_for([0, 1]))  # as a writer that had not seen the first commit yet
    assert main(["info", str(tmp_path / "store"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    row_bytes = 6 * 4 * 8 * 8 * 2 + 5 * 4 * 8 * 8 * 4 + 7 * 32 * 2 + 16 * 16 * 3 + 6 * 4 + 8  # by hand
    assert summary["samples"] == 4 and summary["duplicates"] == {"rows": 2, "bytes": 2 * row_bytes}
    assert main(["verify", str(tmp_path / "store")]) == 0
    assert "2 rows of samples committed twice are skipped" in capsys.readouterr().out
