"""`--resume` and the settings left to the method (--loss, --points, --w-min / --w-max): a checkpoint
recorded with the concrete default ("huber", "noised") or with null (student-train before
losses/defaults.py) resumes whether the flag is omitted or given as that default; a setting that really
differs is refused in one line, exit 2, naming it."""

import json

import pytest

from shared.errors import DistillCacheError
from student_train.cli import main
from student_train.training.checkpoints import resume_point
from tests.student_store_fixture import one_torch_thread, tiny_train_config  # noqa: F401 (autouse)

# The methods' documented defaults (docs/methods.md), written out by hand.
LCM_DEFAULTS = dict(points="noised", loss="huber", w_min=5.0, w_max=15.0)
GUIDANCE_DEFAULTS = dict(points="trajectory", loss="huber", w_min=0.0, w_max=4.0)
LEFT_OPEN = dict(points=None, loss=None, w_min=None, w_max=None)


def checkpoint_of(out, **settings):
    """What an earlier student-train left in OUT after one update of a run with these settings: its
    train_config.json and a checkpoint whose run.json holds that config's digest."""
    config = tiny_train_config("cache", out, **settings)
    folder = out / "checkpoints" / "step_0000001"
    folder.mkdir(parents=True)
    (out / "train_config.json").write_text(json.dumps(config.to_json()))
    record = {"run_digest": config.run_digest(), "step": 1, "global_batch": 3, "batch_size": 3}
    (folder / "run.json").write_text(json.dumps(record | {"grad_accum": 1, "num_processes": 1}))
    return folder


@pytest.mark.parametrize(
    "recorded, given",
    [
        ({**LEFT_OPEN, "method": "lcm", "points": "noised", "loss": "huber"}, {**LEFT_OPEN, "method": "lcm"}),
        ({**LEFT_OPEN, "method": "lcm"}, {**LCM_DEFAULTS, "method": "lcm"}),
        ({**LCM_DEFAULTS, "method": "tcd"}, {**LEFT_OPEN, "method": "tcd"}),
        ({**LEFT_OPEN, "method": "guidance", "loss": "huber"}, {**GUIDANCE_DEFAULTS, "method": "guidance"}),
        ({**LEFT_OPEN, "method": "guidance"}, {**LEFT_OPEN, "method": "guidance", "w_max": 4.0}),
        ({**LEFT_OPEN, "method": "blockkd", "loss": "l2"}, {**LEFT_OPEN, "method": "blockkd"}),
        # the noised-points round recorded --points noised --w-min 5 --w-max 15 for every method
        ({**LCM_DEFAULTS, "method": "direct"}, {**LEFT_OPEN, "method": "direct"}),
        ({**LCM_DEFAULTS, "method": "progressive"}, {**LEFT_OPEN, "method": "progressive", "loss": "huber"}),
        ({**LCM_DEFAULTS, "method": "blockkd", "loss": "l2"}, {**LEFT_OPEN, "method": "blockkd"}),
    ],
)
def test_a_default_spelled_either_way_resumes(tmp_path, recorded, given):
    folder = checkpoint_of(tmp_path, **recorded)
    assert resume_point(tiny_train_config("cache", tmp_path, resume=True, **given), tmp_path) == folder


@pytest.mark.parametrize(
    "recorded, given, named",
    [
        ({**LEFT_OPEN, "method": "lcm", "loss": "huber"}, {**LEFT_OPEN, "method": "lcm", "loss": "l2"}, "--loss huber there, l2 here"),
        ({**LEFT_OPEN, "method": "lcm"}, {**LEFT_OPEN, "method": "lcm", "points": "trajectory"}, "--points noised there, trajectory here"),
        ({**LEFT_OPEN, "method": "guidance"}, {**LCM_DEFAULTS, "method": "guidance"}, "--points trajectory there, noised here"),
        ({**LEFT_OPEN, "method": "blockkd"}, {**LEFT_OPEN, "method": "blockkd", "loss": "huber"}, "--loss l2 there, huber here"),
        ({**LEFT_OPEN, "method": "direct", "points": "trajectory"}, {**LEFT_OPEN, "method": "direct"}, "--points trajectory there, None here"),
        ({**LCM_DEFAULTS, "method": "direct", "w_max": 6.0}, {**LEFT_OPEN, "method": "direct"}, "--w-max 6.0 there, None here"),
    ],
)  # fmt: skip
def test_another_setting_is_refused_and_named(tmp_path, recorded, given, named):
    checkpoint_of(tmp_path, **recorded)
    with pytest.raises(DistillCacheError, match="is a checkpoint of another run") as refused:
        resume_point(tiny_train_config("cache", tmp_path, resume=True, **given), tmp_path)
    assert named in str(refused.value) and "\n" not in str(refused.value)


def test_the_run_records_the_concrete_defaults_and_resumes_either_way(store, tmp_path, capsys):
    out = tmp_path / "lcm"
    common = ["run", "--cache", store, "--out", str(out), "--method", "lcm", "--student", "lora"]
    common += ["--lora-rank", "2", "--train-steps", "1", "--batch-size", "2", "--num-student-steps", "1"]
    assert main(common) == 0
    recorded = json.loads((out / "train_config.json").read_text())
    assert {name: recorded[name] for name in LCM_DEFAULTS} == LCM_DEFAULTS
    distill = json.loads((out / "distill.json").read_text())
    assert {name: distill["settings"][name] for name in LCM_DEFAULTS} == LCM_DEFAULTS

    explicit = ["--points", "noised", "--loss", "huber", "--w-min", "5", "--w-max", "15", "--resume"]
    assert main([*common, *explicit]) == 0
    assert json.loads((out / "distill.json").read_text())["train"]["resumed_from_step"] == 1

    capsys.readouterr()
    assert main([*common, "--loss", "l2", "--resume"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "is a checkpoint of another run (--loss huber there, l2 here)" in error[0]
