"""tcd loss: at gamma = 1 (s' = 0, TCDScheduler's consistency-model end) it is lcm's loss without the
boundary scalings; at any gamma its value matches a hand computation of TCD's trajectory map, on the
cached trajectory points and on the noised points (`--points`, the default for tcd as for lcm)."""

import pytest
import torch

from shared.schedule import NoiseSchedule
from student_train.data.randomness import SampleRandom
from student_train.losses.distance import Distance
from student_train.losses.lcm import LcmLoss
from student_train.losses.tcd import TcdLoss
from student_train.sampling import cached_grid
from tests.student_store_fixture import (  # noqa: F401 (autouse)
    NOISED_POINTS,
    capture_batch,
    one_torch_thread,
    shared_capture,
    tiny_train_config,
)


class LinearStudent:
    """eps = 0.3 x_t + 0.001 t: a student whose output depends on both its inputs (no w input)."""

    w_conditioned = False

    def denoise(self, x_t, timesteps, cond, guidance_w=None):
        return 0.3 * x_t + 0.001 * timesteps.view(-1, 1, 1, 1)

    target_denoise = denoise


def test_gamma_one_is_lcm_without_boundary_scalings():
    capture = shared_capture()
    settings = capture.settings
    # alphas_cumprod[0] = 1 (beta_start = 0), so the map to s' = 0 is the x0 estimate itself
    config = {**settings["scheduler"]["config"], "beta_start": 0.0}
    schedule = NoiseSchedule.from_scheduler_config(config)
    assert schedule.alphas_cumprod[0].item() == 1.0
    grid = cached_grid(settings, schedule)
    tcd = TcdLoss(schedule, grid, "epsilon", Distance("l2"), 1.0, 3.0, gamma_range=(1.0, 1.0))
    lcm = LcmLoss(schedule, grid, "epsilon", Distance("l2"), 1.0, 3.0, timestep_scaling=1e9)  # c_skip = 0
    batch = capture_batch(capture)
    for seed in range(3):  # every start point, the last one (s = the end) included
        random = (SampleRandom(seed, 0, batch.sample_ids) for _ in range(2))
        got, expected = (
            tcd(LinearStudent(), batch, next(random), 0),
            lcm(LinearStudent(), batch, next(random), 0),
        )
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
        assert got.sum() > 0.1  # not trivially equal (at t = 1 both are ~0: sigma_1 is ~0 here)


def alpha_bar_of(schedule):
    """alpha_bar(t), with alphas_cumprod[0] below t = 0 (SD: no set_alpha_to_one)."""
    alphas_cumprod = schedule.alphas_cumprod.float()
    return lambda t: float(alphas_cumprod[max(t, 0)])


def point_by_hand(capture, points: str, b: int, index: int):
    """(x_t, t, s, out_cond, out_uncond) of row b's trajectory step / noised point `index`, read from the
    capture's arrays (not through data/points.py)."""
    arrays, timesteps = capture.arrays, capture.settings["timesteps"]
    if points == "trajectory":
        t, s = timesteps[index], (timesteps + [-1])[index + 1]
        x_t, outputs = arrays["trajectory"][b, index], ("out_cond", "out_uncond")
    else:
        t, s = int(arrays["noised.timestep"][b, index]), int(arrays["noised.next_timestep"][b, index])
        x_t, outputs = arrays["noised.x_t"][b, index], ("noised.out_cond", "noised.out_uncond")
    return x_t, t, s, *(arrays[name][b, index] for name in outputs)


@pytest.mark.parametrize("points", ["trajectory", "noised"])
def test_loss_value_by_hand(points):
    capture = shared_capture()
    settings = capture.settings
    schedule = NoiseSchedule.from_scheduler_config(settings["scheduler"]["config"])
    grid = cached_grid(settings, schedule)
    loss = TcdLoss(schedule, grid, "epsilon", Distance("l2"), 2.0, 2.0, points=points)
    batch = capture_batch(capture, [0, 1, 2])
    got = loss(LinearStudent(), batch, SampleRandom(11, 4, batch.sample_ids), step=0)

    draws = SampleRandom(11, 4, batch.sample_ids)  # the point, w, gamma: the loss's draws, in its order
    count = settings["num_inference_steps"] if points == "trajectory" else NOISED_POINTS
    index, _, gamma = draws.randint(0, count), draws.uniform(2, 2), draws.uniform(0, 1)
    alpha_bar = alpha_bar_of(schedule)

    def trajectory_map(x, t: int, s_prime: int):  # TCD: DDIM from t to s' with the model's x0, eps
        eps = 0.3 * x + 0.001 * t
        x0 = (x - (1 - alpha_bar(t)) ** 0.5 * eps) / alpha_bar(t) ** 0.5
        return alpha_bar(s_prime) ** 0.5 * x0 + (1 - alpha_bar(s_prime)) ** 0.5 * eps

    expected = []
    for b in range(3):
        x_t, t, s, cond, uncond = point_by_hand(capture, points, b, int(index[b]))
        s_prime = min(int((1 - float(gamma[b])) * s // 1), s)
        guided = cond + 2.0 * (cond - uncond)
        x0 = (x_t - (1 - alpha_bar(t)) ** 0.5 * guided) / alpha_bar(t) ** 0.5
        x_s = alpha_bar(s) ** 0.5 * x0 + (1 - alpha_bar(s)) ** 0.5 * guided  # the teacher's solver step
        target = x_s if s_prime == s else trajectory_map(x_s, s, s_prime)  # F(x, s -> s) = x
        expected.append((trajectory_map(x_t, t, s_prime) - target).square().mean())
    torch.testing.assert_close(got, torch.stack(expected), rtol=1e-4, atol=1e-6)


def test_gamma_one_on_noised_points_is_the_x0_consistency_loss_by_hand():
    """At gamma = 1 on a schedule with alphas_cumprod[0] = 1, tcd's loss on noised points is lcm's
    without boundary scalings: d(x0_student(x_t, t), x0_student(x_s, s)), x_s the guided DDIM step
    from the cached noised point's two outputs."""
    capture = shared_capture()
    settings = capture.settings
    schedule = NoiseSchedule.from_scheduler_config({**settings["scheduler"]["config"], "beta_start": 0.0})
    loss = TcdLoss(
        schedule,
        cached_grid(settings, schedule),
        "epsilon",
        Distance("l2"),
        3.0,
        3.0,
        (1.0, 1.0),
        points="noised",
    )
    batch = capture_batch(capture)
    got = loss(LinearStudent(), batch, SampleRandom(5, 1, batch.sample_ids), step=0)

    m = SampleRandom(5, 1, batch.sample_ids).randint(0, NOISED_POINTS)
    alpha_bar = alpha_bar_of(schedule)

    def x0_of(x, t: int, eps):
        return (x - (1 - alpha_bar(t)) ** 0.5 * eps) / alpha_bar(t) ** 0.5

    expected, starts = [], set()
    for b in range(len(batch.sample_ids)):
        x_t, t, s, cond, uncond = point_by_hand(capture, "noised", b, int(m[b]))
        starts.add(s)
        guided = cond + 3.0 * (cond - uncond)
        x_s = alpha_bar(s) ** 0.5 * x0_of(x_t, t, guided) + (1 - alpha_bar(s)) ** 0.5 * guided
        online = x0_of(x_t, t, 0.3 * x_t + 0.001 * t)
        target = x0_of(x_s, s, 0.3 * x_s + 0.001 * s)
        expected.append((online - target).square().mean())
    assert len(starts) > 1  # points at several times in this batch
    torch.testing.assert_close(got, torch.stack(expected), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "method, flag, kind",
    [("tcd", None, "noised"), ("lcm", None, "noised"), ("guidance", None, "trajectory")]
    + [(method, "trajectory", "trajectory") for method in ("tcd", "guidance")]
    + [("guidance", "noised", "noised")],
)
def test_the_methods_read_their_points(method, flag, kind, tmp_path):
    """--points (lcm's data path) chooses tcd's and guidance's points too; without it lcm and tcd read
    the noised group and guidance the trajectories."""
    from student_train.data.points import NOISED_FIELDS, TRAJECTORY_FIELDS
    from student_train.losses import get_method

    capture = shared_capture()
    config = tiny_train_config("c", tmp_path, method=method, points=flag, w_min=2.0, w_max=2.0)
    schedule = NoiseSchedule.from_scheduler_config(capture.settings["scheduler"]["config"])
    expected = NOISED_FIELDS if kind == "noised" else TRAJECTORY_FIELDS
    assert set(get_method(method).fields(config)) == set(expected)
    assert get_method(method).build(config, capture.settings, schedule).points == kind
