"""eval's targets: met exactly when the value reaches the threshold, on both sides of it."""

import pytest

from student_train.eval.report import check_targets


def records(student_psnr, teacher4_psnr, student_adherence, teacher50_adherence):
    def record(model, steps, sampler, **values):
        return {"set": "val", "model": model, "steps": steps, "sampler": sampler, **values}

    return [
        record("teacher", 50, "cache", adherence=teacher50_adherence),
        record("teacher", 4, "ddim", psnr_db=teacher4_psnr, adherence=90.0),
        record("student", 4, "ddim", psnr_db=student_psnr, adherence=student_adherence),
    ]


@pytest.mark.parametrize(
    "student_psnr, student_adherence, met",
    [
        (23.0, 97.0, (True, True)),
        (22.9, 96.9, (False, False)),
        (30.0, 50.0, (True, False)),
        (10.0, 100.0, (False, True)),
    ],
)
def test_targets_are_met_exactly_when_reached(student_psnr, student_adherence, met):
    # thresholds: PSNR >= teacher@4 20.0 + 3 dB = 23.0; adherence >= teacher@50 100.0 - 3 = 97.0
    targets = check_targets(records(student_psnr, 20.0, student_adherence, 100.0), "val", full_steps=50)
    assert [target["threshold"] for target in targets] == [23.0, 97.0]
    assert tuple(target["met"] for target in targets) == met
