"""Stores on S3 (moto's server, tests/s3_server.py): a round trip, and every way of not reaching a
bucket is one line and exit status 2 — a missing bucket (never created), missing credentials, an
unreachable endpoint.

    .venv/bin/python -m pytest tests/test_store_s3.py -q
"""

import pytest
import s3fs

from shared.store import StoreReader, verify_store
from teacher_cache.cli import main
from tests.s3_server import free_port  # the `s3` fixture comes from there too (conftest.py)
from tests.store_fixtures import assert_reads_back, write_samples

pytestmark = pytest.mark.slow  # every test here talks to moto's server


def one_line_error(capsys) -> str:
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("teacher-cache: error: "), error
    return error


def test_a_store_on_s3_round_trips_and_verifies(s3, capsys):
    url = s3.new_bucket() + "/store"
    write_samples(url, range(4), batch_size=2)
    assert_reads_back(StoreReader(url), range(4))
    assert verify_store(url) == []
    assert main(["info", url, "--json"]) == 0 and '"samples": 4' in capsys.readouterr().out


def test_writing_to_a_missing_bucket_creates_nothing(s3, capsys):
    url = "s3://no-such-bucket-here/store"
    assert main(["run", "--out", url, "--limit", "1"]) == 2  # refused before the teacher is loaded
    assert "does not exist" in one_line_error(capsys)
    assert not s3fs.S3FileSystem(skip_instance_cache=True).exists("no-such-bucket-here")


def test_missing_credentials_are_one_line(s3, monkeypatch, tmp_path, capsys):
    url = s3.new_bucket() + "/store"
    write_samples(url, range(2))
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    s3fs.S3FileSystem.clear_instance_cache()
    for command in ("info", "verify"):
        assert main([command, url]) == 2
        assert "credentials" in one_line_error(capsys)


def test_an_unreachable_endpoint_is_one_line(s3, monkeypatch, capsys):
    url = s3.new_bucket() + "/store"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    s3fs.S3FileSystem.clear_instance_cache()
    assert main(["info", url]) == 2
    assert "Could not connect to the endpoint" in one_line_error(capsys)
