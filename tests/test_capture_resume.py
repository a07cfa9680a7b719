"""Resume: the same command, killed with SIGKILL mid-run and run again, commits every job exactly once."""

import signal
import subprocess
import time

import pytest

from shared.store import StoreReader, verify_store
from tests.capture_helpers import PYTHON, cli_args, subprocess_env, tiny_capture_config, write_prompts
from tests.tiny_models import save_tiny_sd_pipeline

JOBS = 24


@pytest.mark.slow
def test_sigkill_then_rerun_commits_every_row_once(tmp_path):
    teacher = save_tiny_sd_pipeline(tmp_path / "sd")
    prompts = write_prompts(tmp_path, [f"a red {index} on blue" for index in range(JOBS)])
    config = tiny_capture_config(tmp_path / "store", teacher, prompts, steps=8, batch_size=1)
    command = [PYTHON, "-m", "teacher_cache", *cli_args(config)]
    manifest = tmp_path / "store" / "manifest"

    first = subprocess.Popen(command, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not (manifest.is_dir() and any(manifest.glob("*.parquet"))) and first.poll() is None:
        assert time.monotonic() < deadline, "the first run committed nothing in 120 s"
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert first.returncode == -signal.SIGKILL, "the first run finished before it could be killed"
    committed_before = StoreReader(config.out).manifest.num_rows
    assert 0 < committed_before < JOBS

    second = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert f"{committed_before} already in the store" in second.stdout

    ids = StoreReader(config.out).manifest.column("sample_id").to_pylist()
    assert len(ids) == len(set(ids)) == JOBS
    assert verify_store(config.out) == []
