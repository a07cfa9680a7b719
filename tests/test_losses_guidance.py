"""guidance loss (Meng et al. stage 1): zero for a student that returns the guided teacher, a
hand-computed value otherwise, and a LoRA student (no w input) must learn one w."""

import pytest
import torch

from shared.errors import DistillCacheError
from shared.schedule import NoiseSchedule
from student_train.data.points import pick_steps
from student_train.data.randomness import SampleRandom
from student_train.losses import get_method
from student_train.losses.distance import Distance
from student_train.losses.guidance import GuidanceLoss
from student_train.sampling import cached_grid
from tests.student_store_fixture import (  # noqa: F401 (autouse)
    capture_batch,
    one_torch_thread,
    shared_capture,
    tiny_train_config,
)


def guidance_loss(capture, prediction_type="epsilon", **kwargs) -> GuidanceLoss:
    settings = capture.settings
    schedule = NoiseSchedule.from_scheduler_config(
        settings["scheduler"]["config"], settings["scheduler"]["class"]
    )
    return GuidanceLoss(schedule, cached_grid(settings, schedule), prediction_type, Distance("l2"), **kwargs)


class GuidedTeacher:
    """Returns the teacher's two cached passes guided with the w it is given: (1 + w) c - w u."""

    w_conditioned = True

    def __init__(self, capture, rows, w_offset=0.0):
        self.timesteps = capture.settings["timesteps"]
        self.cond, self.uncond = capture.arrays["out_cond"][rows], capture.arrays["out_uncond"][rows]
        self.w_offset = w_offset

    def denoise(self, x_t, timesteps, cond, guidance_w=None):
        n = torch.tensor([self.timesteps.index(int(t)) for t in timesteps])
        c, u = pick_steps(self.cond, n), pick_steps(self.uncond, n)
        w = (guidance_w + self.w_offset).view(-1, 1, 1, 1)
        return (1 + w) * c - w * u


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_loss_is_zero_for_the_guided_teacher_and_positive_for_another_w(prediction_type):
    capture = shared_capture()
    loss = guidance_loss(capture, prediction_type, w_min=0.0, w_max=4.0)
    rows = [0, 1, 2, 3]
    batch = capture_batch(capture, rows)
    exact = loss(GuidedTeacher(capture, rows), batch, SampleRandom(3, 0, batch.sample_ids), step=0)
    assert exact.shape == (4,) and exact.abs().max().item() < 1e-10
    off = loss(GuidedTeacher(capture, rows, 0.5), batch, SampleRandom(3, 0, batch.sample_ids), step=0)
    assert (off > 1e-6).all()


class ZeroStudent:
    w_conditioned = True

    def denoise(self, x_t, timesteps, cond, guidance_w=None):
        return torch.zeros_like(x_t)


def test_loss_value_by_hand():
    capture = shared_capture()
    loss = guidance_loss(capture, w_min=1.0, w_max=3.0)
    batch = capture_batch(capture, [0, 1])
    got = loss(ZeroStudent(), batch, SampleRandom(5, 2, batch.sample_ids), step=0)

    draws = SampleRandom(5, 2, batch.sample_ids)  # the same per-sample draws, in the loss's order
    n = draws.randint(0, capture.settings["num_inference_steps"])
    w = draws.uniform(1.0, 3.0)
    expected = []
    for b in range(2):
        cond, uncond = capture.arrays["out_cond"][b, int(n[b])], capture.arrays["out_uncond"][b, int(n[b])]
        target = (1 + w[b]) * cond - w[b] * uncond  # Meng et al.: (1 + w) eps_c - w eps_u
        expected.append(target.square().mean())  # the student's eps is 0
    torch.testing.assert_close(got, torch.stack(expected), rtol=1e-5, atol=1e-7)


def test_a_lora_student_needs_one_w():
    settings = shared_capture().settings
    schedule = NoiseSchedule.from_scheduler_config(settings["scheduler"]["config"])
    method = get_method("guidance")
    with pytest.raises(DistillCacheError, match="--w-min = --w-max"):
        method.build(tiny_train_config("c", "o", method="guidance", student="lora"), settings, schedule)
    config = tiny_train_config("c", "o", method="guidance", student="full", w_min=None, w_max=None)
    built = method.build(config, settings, schedule)
    assert (built.w_min, built.w_max) == (0.0, 4.0)  # Meng et al.'s range when no flag is given
