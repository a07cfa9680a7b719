"""Shared pieces of the phase-one tests: a tiny saved teacher, a prompt file, small capture settings.

teacher = save_tiny_sd_pipeline(tmp_path / "sd")
config = tiny_capture_config(tmp_path / "store", teacher, write_prompts(tmp_path, ["a red one on blue"]))
rows = rows_by_sample_id(StoreReader(config.out), "trajectory")     # {sample_id: tensor}
"""

import os
import sys
from pathlib import Path

import torch

from shared.store import StoreReader
from teacher_cache.config import CaptureConfig

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# threads=1: two shared cores are fastest without torch's intra-op threads fighting other processes
SMALL_CAPTURE = dict(
    seeds_per_prompt=1, steps=3, guidance=4.0, batch_size=2, preview_size=8, threads=1, progress=False
)


def write_prompts(folder: Path, prompts: list[str], name: str = "prompts.txt") -> Path:
    path = Path(folder) / name
    path.write_text("".join(f"{prompt}\n" for prompt in prompts))
    return path


def tiny_capture_config(out: Path, teacher: Path, prompts: Path, **overrides) -> CaptureConfig:
    return CaptureConfig(
        out=str(out), teacher=str(teacher), prompts=str(prompts), **(SMALL_CAPTURE | overrides)
    )


def cli_args(config: CaptureConfig) -> list[str]:
    """The `teacher-cache run` arguments that give `config` (for the flags the small tests set)."""
    return [
        "run",
        *("--out", config.out, "--teacher", config.teacher, "--prompts", config.prompts),
        *("--seeds-per-prompt", str(config.seeds_per_prompt), "--steps", str(config.steps)),
        *("--guidance", str(config.guidance), "--batch-size", str(config.batch_size)),
        *("--preview-size", str(config.preview_size), "--threads", str(config.threads), "--no-progress"),
    ]


def rows_by_sample_id(reader: StoreReader, field: str) -> dict[str, torch.Tensor]:
    """{sample_id: that row's array} for every committed row."""
    ids = reader.manifest.column("sample_id").to_pylist()
    values = reader.read(field, list(range(len(ids))))
    return dict(zip(ids, values))


def subprocess_env() -> dict[str, str]:
    """Environment for child processes: the project importable, one thread each (2 shared cores)."""
    return os.environ | {
        "PYTHONPATH": str(PROJECT_ROOT),
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


PYTHON = sys.executable
