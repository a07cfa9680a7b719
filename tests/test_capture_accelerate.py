"""`accelerate launch --num_processes 2 -m teacher_cache run` on CPU (gloo): each rank takes its slice of
the job list and writes with its own writer; the store's rows equal those of a one-process run."""

import subprocess

import pytest
import torch

from shared.store import StoreReader
from teacher_cache.runner import run
from tests.capture_helpers import (
    PYTHON,
    cli_args,
    rows_by_sample_id,
    subprocess_env,
    tiny_capture_config,
    write_prompts,
)
from tests.tiny_models import save_tiny_sd_pipeline

# On a machine without GPUs, accelerate starts several CPU processes through torchrun with --multi_gpu.
LAUNCH = [
    PYTHON,
    "-m",
    "accelerate.commands.launch",
    "--multi_gpu",
    "--num_processes",
    "2",
    "--num_machines",
    "1",
]
LAUNCH += ["--mixed_precision", "no", "--dynamo_backend", "no"]


@pytest.mark.slow
def test_two_ranks_write_the_rows_of_one_process(tmp_path):
    teacher = save_tiny_sd_pipeline(tmp_path / "sd")
    prompts = write_prompts(tmp_path, [f"a red {index} on blue" for index in range(5)])
    single = tiny_capture_config(tmp_path / "single", teacher, prompts)
    run(single)
    launched = tiny_capture_config(tmp_path / "launched", teacher, prompts)
    result = subprocess.run(
        [*LAUNCH, "-m", "teacher_cache", *cli_args(launched)],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rank 0:" in result.stdout and "rank 1:" in result.stdout

    single_reader, launched_reader = StoreReader(single.out), StoreReader(launched.out)
    assert len(set(launched_reader.manifest.column("writer").to_pylist())) == 2  # one writer per rank
    for field in ("noise", "trajectory", "out_uncond", "cond.encoder_hidden_states"):
        expected, got = rows_by_sample_id(single_reader, field), rows_by_sample_id(launched_reader, field)
        assert got.keys() == expected.keys() and len(got) == 5
        for sample_id, value in expected.items():
            torch.testing.assert_close(got[sample_id], value, rtol=1e-5, atol=1e-5)
