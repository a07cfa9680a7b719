"""`student-train compare` on a tiny store: every recipe trains and is evaluated, compare.json /
compare.md / grid.png are written, the cache's cost counts the teacher's passes, and a rerun reuses
the finished students and evals."""

import json

import numpy as np
import pytest
from PIL import Image

import student_train.compare.run as compare_run
from student_train.cli import main as student_train_main
from student_train.compare.run import CompareConfig, run
from tests.student_store_fixture import capture_tiny_teacher, one_torch_thread, write_train_and_unseen_stores  # noqa: F401

STEPS = 4  # the tiny teacher's step count
RECIPES = ("guidance", "reflow")  # guidance is also evaluated at S; reflow samples with its own scheduler


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """A training store with val rows and its unseen-prompt store (same teacher)."""
    root = tmp_path_factory.mktemp("compare")
    capture = capture_tiny_teacher(root, num_prompts=6, steps=STEPS, guidance=3.0)
    cache = write_train_and_unseen_stores(capture, root)
    return root, cache


@pytest.mark.slow  # trains and evaluates two students twice over: ~1 min on an idle machine
def test_compare_trains_evaluates_and_tabulates_every_recipe(stores, monkeypatch):
    root, cache = stores
    config = CompareConfig(
        cache=cache,
        out=str(root / "out"),
        recipes=RECIPES,
        train_steps=2,
        steps=(1, 2),
        grid_prompts=2,
        judge=False,
    )
    summary = run(config)

    saved = json.loads((root / "out" / "compare.json").read_text())
    assert [student["recipe"] for student in saved["students"]] == list(RECIPES)
    for student in saved["students"]:
        evaluated = {(record["set"], record["steps"]) for record in student["records"]}
        expected_steps = {1, 2, STEPS} if student["recipe"] == "guidance" else {1, 2}  # guidance also at S
        assert evaluated == {(name, k) for name in ("val", "unseen") for k in expected_steps}
        assert student["train_steps"] == 2 and student["train_seconds"] > 0
    cost = saved["cache_cost"]
    assert cost["teacher_passes"] == 4 * STEPS * 2  # rows x steps x the two CFG halves
    assert cost["seconds"] == pytest.approx(cost["teacher_passes"] * cost["seconds_per_pass"])
    assert saved["train_seconds_total"] == pytest.approx(sum(s["train_seconds"] for s in saved["students"]))
    assert saved["best"]["unseen"] == {}  # no judge here: no adherence to rank by

    table = (root / "out" / "compare.md").read_text()
    assert table.count("| teacher, CFG") == 2  # one table per eval set
    assert all(f"| {name}:" in table for name in RECIPES) and "teacher denoiser passes" in table
    assert " dB |" in table  # without the judge, the cells are PSNR to teacher@S

    grid = np.asarray(Image.open(root / "out" / "grid.png"))
    cell_height, cell_width = 16 * 2, 2 * 16 * 2  # 16 px images, 2 prompts per cell, enlarged 2x
    assert grid.shape[0] > (1 + len(RECIPES)) * cell_height and grid.shape[1] > 3 * cell_width

    def forbidden(*args, **kwargs):
        raise AssertionError("a finished student or eval was redone")

    monkeypatch.setattr("student_train.training.loop.train", forbidden)
    monkeypatch.setattr("student_train.eval.run.run", forbidden)
    again = run(config)
    assert [s["records"] for s in again["students"]] == [s["records"] for s in summary["students"]]
    assert compare_run.finished_run(root / "out" / "reflow", compare_run_config(cache, root)) is None


def compare_run_config(cache, root):
    """The reflow recipe with other settings: not the finished run."""
    from student_train.config import TrainConfig

    return TrainConfig(cache=cache, out=str(root / "out" / "reflow"), method="reflow", train_steps=3)


def test_bad_inputs_exit_2_and_write_nothing(stores, tmp_path, capsys):
    _, cache = stores
    out = tmp_path / "never"
    for args in (
        ["--recipes", "direct,nope"],
        ["--train-steps", "-1"],
        ["--steps", "0"],
        ["--grid-prompts", "0"],
    ):
        assert student_train_main(["compare", "--cache", cache, "--out", str(out), *args]) == 2, args
        assert "student-train: error:" in capsys.readouterr().err
        assert not out.exists()


def record(set_name, model, steps, adherence, fd, sampler="ddim"):
    return {
        "set": set_name,
        "model": model,
        "steps": steps,
        "sampler": sampler,
        "adherence": adherence,
        "fd": fd,
    }


def test_table_cells_and_the_best_recipe_per_step_count():
    from student_train.compare.report import best_per_steps, markdown_table

    results = [
        {
            "recipe": "a",
            "what": "A",
            "train_steps": 10,
            "train_seconds": 3.2,
            "records": [
                record("unseen", "student", 1, 90.0, 200.0),
                record("unseen", "student", 2, 99.0, 150.0),
            ],
        },
        {
            "recipe": "b",
            "what": "B",
            "train_steps": 20,
            "train_seconds": 7.9,
            "records": [
                record("unseen", "student", 1, 90.0, 180.0),
                record("unseen", "student", 50, 97.0, 160.0),
            ],
        },
    ]
    teacher = [
        record("unseen", "teacher", 1, 23.0, 600.0),
        record("unseen", "teacher", 50, 98.0, 190.0, "cache"),
    ]
    table = markdown_table(results, teacher, "unseen", (1, 2), 50).splitlines()
    assert table[0] == "| unseen | updates | train (s) | @1 | @2 | @50 |"
    assert table[2] == "| teacher, CFG (2 passes per step) | - | - | 23.0 / 600 |  | 98.0 / 190 |"
    assert table[3] == "| a: A | 10 | 3 | 90.0 / 200 | 99.0 / 150 |  |"
    assert table[4] == "| b: B | 20 | 8 | 90.0 / 180 |  | 97.0 / 160 |"
    assert best_per_steps(results, "unseen", (1, 2, 4, 50)) == {
        "1": "b",
        "2": "a",
        "50": "b",
    }  # tie: lower FD


def test_teacher_passes_count_rows_steps_and_cfg_halves():
    from student_train.compare.cost import teacher_passes

    class Reader:
        settings = {"num_inference_steps": 50, "cfg": True}
        fields = {"out_uncond": None}

        def __len__(self):
            return 2016

    assert teacher_passes(Reader()) == 2016 * 50 * 2
    Reader.settings = {"num_inference_steps": 50, "cfg": False}
    assert teacher_passes(Reader()) == 2016 * 50
