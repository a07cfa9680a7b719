"""`student-train eval` end to end on a tiny teacher: val split + unseen store, metrics.json, grid.png.

The teacher here samples with DDIM at S = 4 steps and guidance 1, so the teacher baseline at K = S
with the teacher's own timestep spacing reproduces the cache (and eval reuses the cache instead), and a student that is an untrained copy of the teacher sampling the cached
grid (progressive at K = S) is a perfect pair: PSNR is infinite up to float noise.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from PIL import Image

from shared.store import StoreReader
from student_train.cli import main as student_train_main
from student_train.config import TrainConfig
from student_train.eval import generation
from student_train.eval.run import EvalConfig, run
from student_train.eval.teacher_baseline import (
    read_conditioning,
    sample_with_cfg,
    samples_as_the_cache,
    teacher_scheduler,
)
from student_train.export import export_student
from student_train.students import build_student
from student_train.students.denoiser import load_denoiser
from tests.student_store_fixture import (
    TeacherCapture,
    capture_tiny_teacher,
    write_capture_store,
    write_train_and_unseen_stores,
)

ROW_KEYS = ("sample_id", "prompt", "negative_prompt", "seed", "guidance_scale", "num_inference_steps")

STEPS = 4


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """A training store with val rows, its unseen-prompt store (same teacher) and a teacher-copy student."""
    root = tmp_path_factory.mktemp("eval")
    capture = capture_tiny_teacher(root, num_prompts=6, steps=STEPS, guidance=1.0)
    cache = write_train_and_unseen_stores(capture, root)

    reader = StoreReader(cache)
    config = TrainConfig(
        cache=cache, out=str(root / "student"), method="progressive", num_student_steps=STEPS
    )
    student = build_student("full", load_denoiser(str(capture.teacher_dir)), config)
    export_student(student, config, reader, root / "student", {"train_steps": 0})
    return root, cache, reader


def test_eval_writes_metrics_and_grid_and_a_teacher_copy_is_a_perfect_pair(stores):
    root, cache, reader = stores
    assert len(reader.indices("val")) > 0, "the fixture needs val rows"
    metrics = run(
        EvalConfig(
            cache=cache,
            student=str(root / "student"),
            out=str(root / "out"),
            steps=(1, STEPS),
            teacher_spacing="trailing",  # teacher@S is sampled: trailing DDIM is not the cache's sampler
        )
    )

    saved = json.loads((root / "out" / "metrics.json").read_text())
    assert saved["records"] == json.loads(json.dumps(metrics["records"]))
    assert [s["name"] for s in saved["sets"]] == ["val", "unseen"]
    assert saved["sets"][1]["rows"] == 2
    by_column = {(r["set"], r["column"]): r for r in metrics["records"]}
    for set_name in ("val", "unseen"):
        teacher_k, student_k = (
            by_column[(set_name, f"teacher@{STEPS}")],
            by_column[(set_name, f"student@{STEPS}")],
        )
        assert teacher_k["latent_mse"] > 1e-6  # trailing DDIM at S: not the cache's leading timesteps
        assert student_k["latent_mse"] < 1e-10 and student_k["psnr_db"] > 60  # a perfect pair
        # a CFG teacher calls the denoiser twice per step; the progressive student ("ddim") once
        assert (teacher_k["evaluations"], student_k["evaluations"]) == (2 * STEPS, STEPS)
        one_step = by_column[(set_name, "student@1")]
        assert one_step["latent_mse"] > 1e-4 and one_step["psnr_db"] < student_k["psnr_db"]
        assert {
            "psnr_db",
            "pixel_mse",
            "latent_mse",
            "samples",
            "model",
            "steps",
            "sampler",
        } <= one_step.keys()
    assert {t["set"] for t in metrics["targets"]} == {"val", "unseen"}

    grid = np.asarray(Image.open(root / "out" / "grid.png"))
    assert (
        grid.shape[1] > 5 * 16 * 4
    )  # teacher@S | teacher@1 | student@1 | teacher@4 | student@4, 4x enlarged


def test_teacher_at_s_is_the_reference_when_its_sampler_made_the_cache(stores, monkeypatch):
    """At --teacher-spacing store, teacher@S is the teacher's own DDIM at its own timesteps: what made
    the cache (checked here directly), so eval reuses the cached reference and samples the teacher only
    at the other K; at trailing spacing teacher@S is another sampler, and sampled."""
    root, cache, reader = stores
    rows = reader.indices("val")
    teacher = load_denoiser(reader.teacher["source"])
    inputs = [read_conditioning(reader, rows, half) for half in ("cond", "uncond")]
    guidance = torch.tensor([float(reader.manifest.column("guidance_scale")[r].as_py()) for r in rows])
    final = reader.read("final_latents", rows)
    for spacing, reproduces in (("store", True), ("trailing", False)):
        scheduler = teacher_scheduler(reader.settings, spacing)
        latents = sample_with_cfg(teacher, scheduler, reader.read("noise", rows), *inputs, guidance, STEPS)
        assert torch.allclose(latents, final, atol=1e-5) == reproduces, spacing
        assert samples_as_the_cache(reader.settings, spacing) == reproduces, spacing

    sampled_steps = []  # K of every teacher sampling call (the progressive student samples without CFG)

    def counting(*args, **kwargs):
        sampled_steps.append(args[-1])
        return sample_with_cfg(*args, **kwargs)  # the original, imported above

    monkeypatch.setattr(generation, "sample_with_cfg", counting)
    metrics = run(
        EvalConfig(cache=cache, student=str(root / "student"), out=str(root / "reuse"), steps=(1, STEPS),
                   teacher_spacing="store", grid_prompts=0, timing_calls=0, judge=False)
    )  # fmt: skip
    assert sorted(sampled_steps) == [1, 1]  # one batch per set, at K = 1 only (trailing: see the first test)
    columns = {(r["set"], r["column"]) for r in metrics["records"]}
    for set_name in ("val", "unseen"):
        assert (set_name, f"teacher@{STEPS} cache") in columns
        assert (set_name, f"teacher@{STEPS}") not in columns


@pytest.mark.slow  # whole eval runs, twice each
def test_teacher_steps_skip_the_teacher_columns_left_out_and_nothing_else(stores):
    """--teacher-steps 1 with --steps 1,4: teacher@4 is not sampled; every other column is the same
    as with teacher@4 (the student samples from the same cached noise either way)."""
    root, cache, _ = stores
    common = dict(
        cache=cache, student=str(root / "student"), steps=(1, STEPS), grid_prompts=0, timing_calls=0
    )
    every = run(EvalConfig(out=str(root / "every"), **common))
    some = run(EvalConfig(out=str(root / "some"), teacher_steps=(1,), **common))
    columns = {(r["set"], r["column"]): r for r in every["records"]}
    kept = {(r["set"], r["column"]): r for r in some["records"]}
    assert set(columns) - set(kept) == {("val", f"teacher@{STEPS}"), ("unseen", f"teacher@{STEPS}")}
    for key, record in kept.items():
        assert record.keys() == columns[key].keys(), key
        for name, value in record.items():
            assert value == (
                pytest.approx(columns[key][name], rel=1e-6)
                if isinstance(value, float)
                else columns[key][name]
            )
    assert any("latent_mse" in record for record in kept.values())
    assert some["targets"] == []  # the 4-step targets compare with teacher@4, which was not sampled


def test_bad_inputs_exit_2_and_write_nothing(stores, tmp_path, capsys):
    root, cache, _ = stores
    out = tmp_path / "never"
    cases = [
        ["--cache", str(tmp_path / "missing"), "--student", str(root / "student")],
        ["--cache", cache, "--student", str(tmp_path)],  # no distill.json
        ["--cache", cache, "--student", str(root / "student"), "--steps", "0,2"],
        ["--cache", cache, "--student", str(root / "student"), "--teacher-spacing", "leading-ish"],
        ["--cache", cache, "--student", str(root / "student"), "--steps", "1,2", "--teacher-steps", "4"],
        ["--cache", cache, "--student", str(root / "student"), "--unseen-cache", str(tmp_path / "nope")],
    ]
    for args in cases:
        assert student_train_main(["eval", *args, "--out", str(out)]) == 2, args
        assert "student-train: error:" in capsys.readouterr().err
        assert not out.exists()


def test_a_noised_points_store_is_evaluated_on_its_unseen_store_alone(stores, capsys):
    """A training store without noise / final_latents (`--fields noised,cond`) has no val set to
    sample from: eval says so and scores the unseen-prompt store."""
    root, cache, reader = stores
    rows = list(range(reader.manifest.num_rows))
    kept = [name for name in reader.fields if name.startswith(("noised.", "cond.", "uncond."))]
    noised_only = TeacherCapture(
        teacher_dir=Path(reader.teacher["source"]),
        rows=[{k: row[k] for k in ROW_KEYS} for row in reader.manifest.to_pylist()],
        arrays={name: reader.read(name, rows) for name in kept},
        settings=reader.settings,
        fingerprint=reader.fingerprint,
        teacher=reader.teacher,
    )
    noised_cache = write_capture_store(noised_only, root / "noised")
    metrics = run(
        EvalConfig(
            cache=noised_cache,
            student=str(root / "student"),
            out=str(root / "noised_out"),
            unseen_cache=str(root / "cache_unseen"),
            steps=(1,),
            judge=False,
        )
    )
    assert [s["name"] for s in metrics["sets"]] == ["unseen"]
    assert "holds no noise, final_latents: val split skipped" in capsys.readouterr().out


@pytest.mark.slow  # whole eval runs, twice each
def test_a_pruned_blockkd_student_is_sampled_as_the_teacher_and_its_cost_reported(stores):
    """A blockkd student samples as the stock pipeline runs its folder: the teacher's own scheduler at
    its own spacing, with CFG. An untrained teacher copy is then teacher@K exactly at
    --teacher-spacing store, and its column is the same at the other spacing (which sets teacher@K
    alone). A pruned one reports its parameters, 2K evaluations per image and their cost."""
    root, cache, reader = stores
    teacher = load_denoiser(str(root / "teacher"))
    teacher_parameters = sum(p.numel() for p in teacher.parameters())
    for kind in ("full", "pruned"):
        config = TrainConfig(cache=cache, out=str(root / kind), method="blockkd", student=kind, prune="small")
        student = build_student(kind, load_denoiser(str(root / "teacher")), config)
        export_student(student, config, reader, root / kind, {"train_steps": 0})
    copies = {
        spacing: run(
            EvalConfig(
                cache=cache,
                student=str(root / "full"),
                out=str(root / f"copy_{spacing}"),
                steps=(2,),
                timing_calls=0,
                teacher_spacing=spacing,
            )
        )
        for spacing in ("store", "trailing")
    }
    at_store, at_trailing = (
        {(r["set"], r["column"]): r for r in copies[s]["records"]} for s in ("store", "trailing")
    )
    for set_name in ("val", "unseen"):
        student, teacher = at_store[(set_name, "student@2")], at_store[(set_name, "teacher@2")]
        assert student["sampler"] == "cfg" and student["psnr_db"] == teacher["psnr_db"]
        assert at_trailing[(set_name, "student@2")]["psnr_db"] == student["psnr_db"]
        assert at_trailing[(set_name, "teacher@2")]["psnr_db"] != teacher["psnr_db"]
    denoiser = copies["store"]["denoiser"]
    assert denoiser["parameter_ratio"] == 1.0 and "time_ratio" not in denoiser

    pruned = run(
        EvalConfig(cache=cache, student=str(root / "pruned"), out=str(root / "pruned_eval"), steps=(1,))
    )
    student_parameters = sum(
        p.numel()
        for p in UNet2DConditionModel.from_pretrained(root / "pruned", subfolder="unet").parameters()
    )
    cost = pruned["denoiser"]
    assert (
        cost["teacher"]["parameters"] == teacher_parameters
        and cost["student"]["parameters"] == student_parameters
    )
    assert (
        cost["parameter_ratio"] == pytest.approx(student_parameters / teacher_parameters)
        and cost["parameter_ratio"] < 1
    )
    assert cost["time_ratio"] > 0 and cost["timing"]["calls"] == 20
    by_column = {(r["set"], r["column"]): r for r in pruned["records"]}
    reference, student_1 = by_column[("val", f"teacher@{STEPS}")], by_column[("val", "student@1")]
    assert (reference["evaluations"], student_1["evaluations"]) == (2 * STEPS, 2)  # CFG: two calls per step
    assert student_1["cost_ratio"] == pytest.approx(2 * student_parameters / (2 * STEPS * teacher_parameters))
    assert student_1["time_ratio"] == cost["time_ratio"] and reference["time_ratio"] == 1.0


def test_time_per_call_alternates_and_takes_medians(monkeypatch):
    import student_train.eval.cost as cost

    clock, order = [0.0], []

    def run_for(name, seconds):
        def call():
            order.append(name)
            clock[0] += seconds.pop(0) if isinstance(seconds, list) else seconds

        return call

    monkeypatch.setattr(cost.time, "perf_counter", lambda: clock[0])
    student_times = [9.0, 9.0, 3.0, 100.0, 3.0, 3.0, 3.0]  # 2 warm-up calls, then 5 timed: median 3
    medians = cost.seconds_per_call(
        {"teacher": run_for("teacher", 2.0), "student": run_for("student", student_times)}, 5
    )
    assert medians == {"teacher": 2.0, "student": 3.0}
    assert order[4:] == [
        "teacher",
        "student",
        "student",
        "teacher",
        "teacher",
        "student",
        "student",
        "teacher",
        "teacher",
        "student",
    ]
