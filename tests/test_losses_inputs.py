"""Every loss feeds the student the row's own conditioning and, for a w-conditioned student, the w
it guides its target with: a student that records its calls sees `batch.cond` itself on every call
(online and target) and the w of the range, or no w when it has no w input. (Mutation testing found
lcm, guidance and reflow still passing their value tests with the conditioning or w dropped.)"""

import pytest
import torch

from shared.schedule import NoiseSchedule
from student_train.data.randomness import SampleRandom
from student_train.losses import get_method
from tests.student_store_fixture import (  # noqa: F401 (autouse)
    capture_batch,
    one_torch_thread,
    shared_capture,
    tiny_train_config,
)


class RecordingStudent:
    """eps = 0 everywhere; keeps (cond, guidance_w) of every call."""

    def __init__(self, w_conditioned: bool):
        self.w_conditioned, self.calls = w_conditioned, []

    def denoise(self, x_t, timesteps, cond, guidance_w=None):
        self.calls.append((cond, guidance_w))
        return torch.zeros_like(x_t)

    target_denoise = denoise


@pytest.mark.parametrize(
    "method, w_conditioned",
    [("direct", False), ("progressive", False), ("reflow", False)]
    + [(name, w) for name in ("lcm", "tcd", "guidance") for w in (False, True)],
)
def test_the_student_sees_the_rows_conditioning_and_its_w(method, w_conditioned, tmp_path):
    capture = shared_capture()
    config = tiny_train_config("unused", tmp_path, method=method, points="trajectory", w_min=3.0, w_max=3.0)
    schedule = NoiseSchedule.from_scheduler_config(capture.settings["scheduler"]["config"])
    loss = get_method(method).build(config, capture.settings, schedule)
    batch = capture_batch(capture, [0, 1, 2])
    student = RecordingStudent(w_conditioned)
    loss(student, batch, SampleRandom(0, 0, batch.sample_ids), 0)

    assert student.calls, "the loss never called the student"
    for cond, guidance_w in student.calls:
        assert cond is batch.cond
        if w_conditioned:
            assert guidance_w is not None and torch.equal(guidance_w, torch.full((3,), 3.0))
        else:
            assert guidance_w is None


def test_distances_are_per_sample_by_hand():
    """(B,) per-sample means; huber = sqrt(d^2 + c^2) - c with the LCM scripts' default c = 0.001."""
    from student_train.losses.distance import Distance

    prediction, target = torch.tensor([[3.0, 4.0], [0.0, 1.0]]), torch.zeros(2, 2)
    assert Distance("l2")(prediction, target).tolist() == pytest.approx([12.5, 0.5])
    huber = Distance("huber", huber_c=0.5)(prediction, target).tolist()
    by_hand = [((9.25**0.5 - 0.5) + (16.25**0.5 - 0.5)) / 2, ((0.25**0.5 - 0.5) + (1.25**0.5 - 0.5)) / 2]
    assert huber == pytest.approx(by_hand)
    assert Distance("huber").huber_c == 0.001
