"""Prompt files -> the deterministic list of capture jobs (prompt, negative prompt, seed, guidance).

    jobs = read_jobs("prompts.csv", seeds_per_prompt=4, guidance=5.0, negative_prompt="")

Accepted files: `.txt` (one prompt a line, blank lines skipped) or `.csv` / `.parquet` / `.jsonl`
with a `prompt` column and optional `negative_prompt`, `seed`, `guidance_scale` columns.
A row with its own `seed` gives exactly one job; a row without one gives `seeds_per_prompt` jobs
whose seeds are derived from (prompt, k) by a stable hash, so different prompts get different noise
and the job list does not depend on the file's row order, batch size or rank. Repeated jobs are
kept once (first occurrence). The same file and settings always give the same list.
"""

import csv
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from shared.errors import DistillCacheError

PROMPT_FILE_SUFFIXES = (".txt", ".csv", ".parquet", ".jsonl")
OPTIONAL_COLUMNS = ("negative_prompt", "seed", "guidance_scale")
MAX_SEED = 2**31 - 1


@dataclass(frozen=True)
class CaptureJob:
    """One sample to capture."""

    prompt: str
    negative_prompt: str
    seed: int
    guidance_scale: float
    image: str = ""  # --images folder: the file_name this row's clean latents come from (its source key)


def derived_seed(prompt: str, k: int) -> int:
    """The k-th seed of a prompt without its own seed: a stable 31-bit hash of (prompt, k)."""
    digest = hashlib.sha256(f"{prompt}\n{k}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & MAX_SEED


def read_prompt_rows(path: Path) -> list[dict]:
    """The rows of a prompt file as dicts with at least 'prompt'; raises DistillCacheError."""
    if not path.is_file():
        raise DistillCacheError(
            f"prompt file {path} does not exist; give --prompts a .txt/.csv/.parquet/.jsonl file"
        )
    suffix = path.suffix.lower()
    if suffix not in PROMPT_FILE_SUFFIXES:
        raise DistillCacheError(
            f"prompt file {path}: unknown type {suffix!r}; use one of {', '.join(PROMPT_FILE_SUFFIXES)}"
        )
    try:
        if suffix == ".txt":
            lines = path.read_text(encoding="utf-8").splitlines()
            return [{"prompt": line.strip()} for line in lines if line.strip()]
        if suffix == ".csv":
            with path.open(newline="", encoding="utf-8") as handle:
                reader = csv.DictReader(handle)
                rows, columns = list(reader), reader.fieldnames or []
        elif suffix == ".jsonl":
            lines = path.read_text(encoding="utf-8").splitlines()
            rows = [json.loads(line) for line in lines if line.strip()]
            columns = sorted({key for row in rows for key in row})
        else:
            table = pq.read_table(path)
            rows, columns = table.to_pylist(), table.column_names
    except (ValueError, OSError, UnicodeDecodeError, csv.Error) as error:
        raise DistillCacheError(f"prompt file {path} cannot be read: {error}") from None
    if rows and "prompt" not in columns:
        raise DistillCacheError(
            f"prompt file {path} has no 'prompt' column (columns: {', '.join(map(str, columns))}); "
            f"name the prompt column 'prompt'"
        )
    return rows


def _optional(row: dict, key: str):
    """The row's value for an optional column, or None when absent, empty or NaN."""
    value = row.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _row_jobs(row: dict, line: int, seeds_per_prompt: int, guidance: float, negative_prompt: str):
    prompt = row.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise DistillCacheError(
            f"prompt file row {line}: the prompt is empty; remove the row or write a prompt"
        )
    negative = _optional(row, "negative_prompt")
    try:
        scale = _optional(row, "guidance_scale")
        scale = float(guidance if scale is None else scale)
        seed = _optional(row, "seed")
        seeds = (
            [int(seed)] if seed is not None else [derived_seed(prompt, k) for k in range(seeds_per_prompt)]
        )
    except (TypeError, ValueError):
        raise DistillCacheError(
            f"prompt file row {line}: seed {row.get('seed')!r} / guidance_scale {row.get('guidance_scale')!r} "
            f"are not numbers"
        ) from None
    if not math.isfinite(scale):
        raise DistillCacheError(f"prompt file row {line}: guidance_scale {scale} is not a finite number")
    if any(not 0 <= s <= MAX_SEED for s in seeds):
        raise DistillCacheError(f"prompt file row {line}: seed {seeds[0]} is outside [0, {MAX_SEED}]")
    negative = str(negative) if negative is not None else negative_prompt
    return [CaptureJob(prompt, negative, s, scale) for s in seeds]


def read_jobs(
    path: str | Path, seeds_per_prompt: int, guidance: float, negative_prompt: str
) -> list[CaptureJob]:
    """The deterministic job list of a prompt file; raises DistillCacheError on bad input."""
    path = Path(path)
    rows = read_prompt_rows(path)
    jobs: dict[CaptureJob, None] = {}
    for line, row in enumerate(rows, start=1):
        for job in _row_jobs(row, line, seeds_per_prompt, guidance, negative_prompt):
            jobs.setdefault(job, None)
    if not jobs:
        raise DistillCacheError(f"prompt file {path} holds no prompts; write one prompt a line")
    uses_cfg = {job.guidance_scale > 1.0 for job in jobs}
    if len(uses_cfg) > 1:
        raise DistillCacheError(
            f"prompt file {path} mixes guidance_scale <= 1 (no CFG) and > 1 rows; a store is either CFG "
            f"(cond and uncond halves) or not: split the file"
        )
    return list(jobs)
