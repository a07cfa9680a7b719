"""reflow loss: the target is the pair's difference (noise - teacher output) at points on the
pair's straight line, at the times of each t-schedule."""

import pytest
import torch

from shared.schedule import NoiseSchedule
from student_train.data.randomness import SampleRandom
from student_train.losses import get_method
from student_train.losses.distance import Distance
from student_train.losses.reflow import ReflowLoss
from tests.student_store_fixture import (  # noqa: F401 (autouse)
    capture_batch,
    one_torch_thread,
    shared_capture,
    tiny_train_config,
)


class RecordingStudent:
    """Returns `answer(x_t, t)` and keeps what it was called with."""

    w_conditioned = False

    def __init__(self, answer):
        self.answer, self.calls = answer, []

    def denoise(self, x_t, timesteps, cond, guidance_w=None):
        self.calls.append((x_t, timesteps))
        return self.answer(x_t, timesteps)


def test_target_is_the_pairs_difference_on_the_straight_line():
    capture = shared_capture()
    batch = capture_batch(capture, [0, 1, 2, 3])
    noise, final = capture.arrays["noise"][:4], capture.arrays["final_latents"][:4]
    loss = ReflowLoss(NoiseSchedule("flow", 1000), Distance("l2"))
    oracle = RecordingStudent(lambda x_t, t: noise - final)
    assert loss(oracle, batch, SampleRandom(0, 0, batch.sample_ids), 0).abs().max() == 0

    zero = RecordingStudent(lambda x_t, t: torch.zeros_like(x_t))
    got = loss(zero, batch, SampleRandom(0, 0, batch.sample_ids), 0)
    torch.testing.assert_close(got, (noise - final).square().flatten(1).mean(1))
    x_t, s = zero.calls[0][0], zero.calls[0][1] / 1000
    assert ((s >= 1e-3) & (s <= 1)).all() and len(set(s.tolist())) == 4  # uniform, one time per sample
    on_the_line = (1 - s).view(-1, 1, 1, 1) * final + s.view(-1, 1, 1, 1) * noise
    torch.testing.assert_close(x_t, on_the_line)


@pytest.mark.parametrize(
    "t_schedule, steps, times",
    [
        ("t0", 2, {999.0}),  # the exported flow sampler's first point: sigma = 1 - 1/T
        ("steps", 2, {999.0, 499.5}),  # its 2 points: sigma_k = (1 - 1/T)(K - k) / K
        ("steps", 4, {999.0, 749.25, 499.5, 249.75}),
    ],
)
def test_t_schedules_are_the_exported_samplers_points(t_schedule, steps, times):
    settings = shared_capture().settings
    schedule = NoiseSchedule.from_scheduler_config(settings["scheduler"]["config"])  # a DDPM teacher
    config = tiny_train_config(
        "c", "o", method="reflow", reflow_t_schedule=t_schedule, num_student_steps=steps
    )
    loss = get_method("reflow").build(config, settings, schedule)
    assert loss.schedule.family == "flow"  # the student is a flow model whatever the teacher's family
    batch = capture_batch(shared_capture())
    student = RecordingStudent(lambda x_t, t: torch.zeros_like(x_t))
    for seed in range(8):
        loss(student, batch, SampleRandom(seed, 0, batch.sample_ids), 0)
    drawn = {round(float(t), 3) for _, timesteps in student.calls for t in timesteps}
    assert drawn == times
