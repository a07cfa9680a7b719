"""Prompt files -> the deterministic job list (teacher_cache/prompts.py), and the bundled lists."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shared.errors import DistillCacheError
from teacher_cache.prompts import CaptureJob, derived_seed, read_jobs


def jobs_of(path, seeds_per_prompt=2, guidance=5.0, negative_prompt=""):
    return read_jobs(
        path, seeds_per_prompt=seeds_per_prompt, guidance=guidance, negative_prompt=negative_prompt
    )


def test_txt_gives_seeds_per_prompt_jobs_with_distinct_stable_seeds(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("a red one on blue\n\n  a blue two on red  \n")
    jobs = jobs_of(path, seeds_per_prompt=3)
    assert [job.prompt for job in jobs] == ["a red one on blue"] * 3 + ["a blue two on red"] * 3
    assert len({job.seed for job in jobs}) == 6  # different prompts get different noise
    assert jobs == jobs_of(path, seeds_per_prompt=3)  # deterministic
    assert jobs[0].seed == derived_seed("a red one on blue", 0)
    assert all(job.guidance_scale == 5.0 and job.negative_prompt == "" for job in jobs)


def test_seeds_do_not_depend_on_row_order(tmp_path):
    forward, backward = tmp_path / "f.txt", tmp_path / "b.txt"
    forward.write_text("one\ntwo\n")
    backward.write_text("two\none\n")
    assert set(jobs_of(forward)) == set(jobs_of(backward))


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_table_files_with_optional_columns(tmp_path, suffix):
    rows = [
        {"prompt": "a red one on blue", "negative_prompt": "blurry", "seed": 7, "guidance_scale": 3.0},
        {"prompt": "a blue two on red", "negative_prompt": None, "seed": None, "guidance_scale": None},
    ]
    path = tmp_path / f"p{suffix}"
    if suffix == ".csv":
        lines = [
            "prompt,negative_prompt,seed,guidance_scale",
            "a red one on blue,blurry,7,3.0",
            "a blue two on red,,,",
        ]
        path.write_text("\n".join(lines) + "\n")
    elif suffix == ".jsonl":
        path.write_text(
            "".join(json.dumps({k: v for k, v in row.items() if v is not None}) + "\n" for row in rows)
        )
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    jobs = jobs_of(path, seeds_per_prompt=2, guidance=5.0, negative_prompt="ugly")
    assert jobs[0] == CaptureJob("a red one on blue", "blurry", 7, 3.0)  # own seed: exactly one job
    assert [(job.prompt, job.negative_prompt, job.guidance_scale) for job in jobs[1:]] == [
        ("a blue two on red", "ugly", 5.0)
    ] * 2


def test_repeated_jobs_are_kept_once(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("prompt,seed\nx,1\nx,1\ny,1\n")
    assert [(job.prompt, job.seed) for job in jobs_of(path)] == [("x", 1), ("y", 1)]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.txt", None, "does not exist"),
        ("empty.txt", "\n\n", "holds no prompts"),
        ("p.csv", "text,seed\nx,1\n", "no 'prompt' column"),
        ("p.yaml", "x\n", "unknown type"),
        ("p.csv", "prompt,seed\nx,abc\n", "not numbers"),
        ("p.csv", "prompt,guidance_scale\nx,1.0\ny,5.0\n", "mixes guidance_scale"),
    ],
)
def test_bad_prompt_files_raise_one_clear_error(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(DistillCacheError, match=message):
        jobs_of(path)


def test_bundled_prompt_files_match_the_digit_grammar():
    from teacher_cache.bundled_prompts import bundled_prompt_texts

    for path, text in bundled_prompt_texts().items():
        assert path.read_text(encoding="utf-8") == text, (
            f"{path} is stale: python -m teacher_cache.bundled_prompts"
        )
