"""Stores on S3 end to end, through moto's server (tests/s3_server.py): capture, info, verify with a
flipped byte, training with both loaders (and the local read-through cache), eval and sample; two
writer processes at once; SIGKILL then resume; and a read-only consumer whose credentials cannot
write, which still trains and evaluates.

    .venv/bin/python -m pytest tests/test_s3_end_to_end.py -q -m slow    # all of them (make test-slow, CI)

All are marked slow (tens of seconds each: every request costs moto's server CPU); `make test` keeps
the fast S3 cases of tests/test_store_s3.py, test_store_compaction.py, test_store_copy.py and
test_store_read_cache.py, and the disk versions of the process tests (tests/test_store_processes.py).
"""

import json
import os
import signal
from contextlib import contextmanager

import boto3
import numpy as np
import pytest
import requests
import s3fs
import torch
from safetensors.torch import load_file

from shared.errors import DistillCacheError
from shared.store import StoreReader, verify_store
from student_train.cli import main as student_main
from teacher_cache.cli import main as teacher_main
from tests.capture_helpers import cli_args, tiny_capture_config, write_prompts
from tests.small_store import FIELDS, assert_small_reads_back, small_arrays, small_row, small_writer
from tests.student_store_fixture import one_torch_thread, shared_capture, write_capture_store  # noqa: F401
from tests.test_store_processes import finish, start_writer
from tests.tiny_models import save_tiny_sd_pipeline

TRAIN = ["--method", "direct", "--train-steps", "2", "--batch-size", "2", "--num-student-steps", "1"]
TRAIN += ["--split", "all", "--lr", "1e-3"]
EVAL = ["--steps", "1", "--limit", "2", "--no-judge", "--grid-prompts", "1"]
READ_ONLY_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:ListBucket", "s3:GetBucketLocation"],
            "Resource": "*",
        }
    ],
}


def flip_a_byte(url: str, field: str) -> None:
    """Flip one byte in the middle of the first shard of `field` on S3 (download, flip, upload)."""
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    shard = next(path for path in sorted(fs.find(url.removeprefix("s3://"))) if f"/{field}/c/" in path)
    data = bytearray(fs.cat_file(shard))
    data[len(data) // 2] ^= 0x20
    fs.pipe_file(shard, bytes(data))


def train_streamed(url: str, out, cache_dir) -> int:
    """student-train run with the stream loader and a local read-through cache of the remote store."""
    return student_main(
        ["run", "--cache", url, "--out", str(out), "--loader", "stream"]
        + ["--cache-dir", str(cache_dir), *TRAIN]
    )


def student_weights(folder) -> dict:
    return load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))


@pytest.mark.slow
def test_capture_info_verify_train_eval_and_sample_on_s3(s3, tmp_path, capsys):
    url = s3.new_bucket() + "/cache"
    teacher = save_tiny_sd_pipeline(tmp_path / "sd")
    prompts = write_prompts(tmp_path, [f"a red {name} on blue" for name in ("one", "two", "three", "four")])
    config = tiny_capture_config(url, teacher, prompts, seeds_per_prompt=2, val_fraction=0.4)
    assert teacher_main([*cli_args(config), "--val-fraction", "0.4"]) == 0
    capsys.readouterr()
    assert teacher_main(["info", url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["samples"] == 8
    reader = StoreReader(url)
    assert len(reader) == 8 and len(reader.indices("val")) > 0
    assert verify_store(url) == []

    memory, stream = tmp_path / "memory", tmp_path / "stream"
    assert student_main(["run", "--cache", url, "--out", str(memory), "--loader", "memory", *TRAIN]) == 0
    assert train_streamed(url, stream, tmp_path / "local") == 0
    weights = student_weights(memory), student_weights(stream)
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])  # the same batches
    assert (
        student_main(
            ["eval", "--cache", url, "--student", str(memory), "--out", str(tmp_path / "eval"), *EVAL]
        )
        == 0
    )
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["records"]
    image = tmp_path / "seven.png"
    assert (
        student_main(
            [
                "sample",
                "--student",
                str(memory),
                "--prompt",
                "a red one on blue",
                "--steps",
                "1",
                "--out",
                str(image),
            ]
        )
        == 0
    )
    assert image.stat().st_size > 0

    flip_a_byte(url, "final_latents")
    capsys.readouterr()
    assert teacher_main(["verify", url]) == 1
    damaged = [line for line in capsys.readouterr().out.splitlines() if "\tfield final_latents\t" in line]
    assert damaged and all("checksum mismatch" in line or "cannot be decoded" in line for line in damaged)


@pytest.mark.slow  # ~30 s on the loaded 2-core machine (moto's server costs CPU per request)
def test_two_writer_processes_on_one_s3_store_write_every_row_once(s3):
    url = s3.new_bucket() + "/store"
    writers = [
        start_writer(url, 0, 10, "--batch-size", "3", "--small"),
        start_writer(url, 10, 20, "--batch-size", "4", "--small"),
    ]
    for process in writers:
        finish(process)
    reader = StoreReader(url)
    assert len(reader.writers) == 2 and reader.duplicates.num_rows == 0
    assert_small_reads_back(reader, range(20))
    assert verify_store(url) == []


@pytest.mark.slow  # ~30 s on the loaded 2-core machine (moto's server costs CPU per request)
def test_a_writer_killed_mid_batch_on_s3_resumes_and_commits_every_row_once(s3):
    url = s3.new_bucket() + "/store"
    victim = start_writer(url, 0, 12, "--batch-size", "4", "--hang-at-commit", "2", "--small")
    try:
        for line in victim.stdout:
            if line.strip() == "ARRAYS_WRITTEN":  # second batch: arrays uploaded, manifest not yet
                break
        assert victim.poll() is None, victim.stderr.read()
        os.kill(victim.pid, signal.SIGKILL)
    finally:
        victim.wait(timeout=60)
    assert len(StoreReader(url)) == 4  # the first batch only
    finish(start_writer(url, 0, 12, "--batch-size", "4", "--small"))
    reader = StoreReader(url)
    assert reader.duplicates.num_rows == 0
    assert_small_reads_back(reader, range(12))
    assert verify_store(url) == []


@contextmanager
def credentials_enforced(endpoint: str):
    """moto checks every request's signature and IAM policy inside the block (off again after it)."""
    requests.post(f"{endpoint}/moto-api/reset-auth", data=b"0", timeout=10).raise_for_status()
    try:
        yield
    finally:
        requests.post(f"{endpoint}/moto-api/reset-auth", data=b"inf", timeout=10).raise_for_status()


def read_only_user(endpoint: str) -> dict:
    """An IAM user allowed to list and get objects only: its access key, as environment variables."""
    iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1")
    iam.create_user(UserName="reader")
    iam.put_user_policy(
        UserName="reader", PolicyName="read-only", PolicyDocument=json.dumps(READ_ONLY_POLICY)
    )
    key = iam.create_access_key(UserName="reader")["AccessKey"]
    return {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}


@pytest.mark.slow  # ~30 s on the loaded 2-core machine (moto's server costs CPU per request)
def test_a_read_only_consumer_trains_and_evaluates_but_cannot_write(s3, tmp_path, monkeypatch, capsys):
    url = s3.new_bucket() + "/cache"
    capture = shared_capture()
    write_capture_store(capture, url)
    write_capture_store(capture, url + "_unseen")  # eval's unseen-prompt store, found beside the cache
    user = read_only_user(s3.endpoint)
    with credentials_enforced(s3.endpoint):
        for name, value in user.items():
            monkeypatch.setenv(name, value)
        s3fs.S3FileSystem.clear_instance_cache()
        out = tmp_path / "student"
        assert train_streamed(url, out, tmp_path / "local") == 0
        assert (
            student_main(
                ["eval", "--cache", url, "--student", str(out), "--out", str(tmp_path / "eval"), *EVAL]
            )
            == 0
        )
        sets = json.loads((tmp_path / "eval" / "metrics.json").read_text())["sets"]
        assert [entry["name"] for entry in sets] == ["unseen"]
        with pytest.raises(DistillCacheError, match="AccessDenied|Access Denied|not authorized"):
            small_writer(url.rsplit("/", 1)[0] + "/mine").commit(*small_batch())
        assert teacher_main(["compact", url + "_unseen"]) == 0  # one file: nothing to write
        capsys.readouterr()


def small_batch() -> tuple[list[dict], dict]:
    return [small_row(0)], {name: np.stack([small_arrays(0)[name]]) for name in FIELDS}
