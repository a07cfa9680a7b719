"""lcm loss: the solver step from cached outputs, the boundary conditions, and a hand-computed value."""

import pytest
import torch

from shared.schedule import NoiseSchedule
from student_train.data.points import noised_points, pick_steps, teacher_points
from student_train.data.randomness import SampleRandom
from student_train.losses.distance import Distance
from student_train.losses.guided import guided_solver_step
from student_train.losses.lcm import LcmLoss
from student_train.sampling import cached_grid
from student_train.sampling.consistency import boundary_scalings
from tests.student_store_fixture import (  # noqa: F401 (autouse)
    NOISED_POINTS,
    capture_batch,
    one_torch_thread,
    shared_capture,
)


def lcm_loss(capture, **kwargs) -> LcmLoss:
    settings = capture.settings
    schedule = NoiseSchedule.from_scheduler_config(
        settings["scheduler"]["config"], settings["scheduler"]["class"]
    )
    return LcmLoss(
        schedule, cached_grid(settings, schedule), settings["prediction_type"], Distance("l2"), **kwargs
    )


def test_solver_step_at_the_cached_guidance_lands_on_the_next_cached_point():
    capture = shared_capture()
    loss = lcm_loss(capture)
    trajectory = capture.arrays["trajectory"]  # (N, S + 1, C, H, W)
    w = torch.full((trajectory.shape[0],), capture.settings["guidance_scale"] - 1.0)  # Imagen convention
    for n in range(capture.settings["num_inference_steps"]):  # every step, the last one to the final alpha
        index = torch.full((trajectory.shape[0],), n)
        x_s = guided_solver_step(
            loss.schedule,
            "epsilon",
            pick_steps(trajectory, index),
            loss.grid[index],
            loss.grid[index + 1],
            pick_steps(capture.arrays["out_cond"], index),
            pick_steps(capture.arrays["out_uncond"], index),
            w,
        )
        torch.testing.assert_close(x_s, trajectory[:, n + 1], rtol=1e-4, atol=1e-4)


def test_boundary_scalings():
    c_skip, c_out = boundary_scalings(torch.tensor([0.0, -1.0, 1.0, 999.0]))
    assert c_skip[:2].tolist() == [1.0, 1.0] and c_out[:2].tolist() == [0.0, 0.0]  # f(x, 0) = x
    assert c_skip[2].item() == pytest.approx(0.25 / (100 + 0.25))
    assert c_out[2].item() == pytest.approx(10 / (100 + 0.25) ** 0.5)
    assert c_out[3].item() == pytest.approx(1.0, abs=1e-6)


class ZeroStudent:
    """A student whose denoiser predicts eps = 0 everywhere (so x0_hat = x_t / alpha_t)."""

    w_conditioned = False

    def denoise(self, x_t, timesteps, cond, guidance_w=None):
        return torch.zeros_like(x_t)

    target_denoise = denoise


def zero_student_loss(x_t, t, s, alpha_t, alpha_s, cond, uncond, w):
    """The l2 lcm loss of ZeroStudent at one point, by hand: guided eps, one DDIM step to s, the
    boundary scalings (sigma_data 0.5, timestep scaling 10) at t and s (s >= 0)."""
    eps = cond + w * (cond - uncond)
    x0 = (x_t - (1 - alpha_t**2) ** 0.5 * eps) / alpha_t
    x_s = alpha_s * x0 + (1 - alpha_s**2) ** 0.5 * eps
    c_skip_t, c_out_t = 0.25 / ((10 * t) ** 2 + 0.25), 10 * t / ((10 * t) ** 2 + 0.25) ** 0.5
    c_skip_s, c_out_s = 0.25 / ((10 * s) ** 2 + 0.25), 10 * s / ((10 * s) ** 2 + 0.25) ** 0.5
    online = c_skip_t * x_t + c_out_t * x_t / alpha_t  # x0_hat of eps = 0 is x_t / alpha_t
    target = c_skip_s * x_s + c_out_s * x_s / alpha_s
    return (online - target).square().mean()


def test_loss_value_by_hand():
    capture = shared_capture()
    loss = lcm_loss(capture, w_min=3.0, w_max=3.0)
    batch = capture_batch(capture, [0, 1])
    got = loss(ZeroStudent(), batch, SampleRandom(7, 0, batch.sample_ids), step=0)

    n = SampleRandom(7, 0, batch.sample_ids).randint(0, capture.settings["num_inference_steps"])
    alphas_cumprod = loss.schedule.alphas_cumprod
    expected = []
    for b in range(2):
        i = int(n[b])
        t, s = capture.settings["timesteps"][i], (capture.settings["timesteps"] + [-1])[i + 1]
        alpha_t = alphas_cumprod[t].sqrt().item()
        alpha_s = (alphas_cumprod[s] if s >= 0 else alphas_cumprod[0]).sqrt().item()
        x_t = capture.arrays["trajectory"][b, i]
        cond, uncond = capture.arrays["out_cond"][b, i], capture.arrays["out_uncond"][b, i]
        expected.append(zero_student_loss(x_t, t, max(s, 0), alpha_t, alpha_s, cond, uncond, w=3.0))
    torch.testing.assert_close(got, torch.stack(expected), rtol=1e-4, atol=1e-5)


def test_distances_by_hand():
    prediction, target = torch.tensor([[3.0, 4.0]]), torch.zeros(1, 2)
    assert Distance("l2")(prediction, target).item() == pytest.approx(12.5)
    huber = Distance("huber", huber_c=1.0)(prediction, target).item()
    assert huber == pytest.approx(((10**0.5 - 1) + (17**0.5 - 1)) / 2)


def test_noised_points_pick_the_drawn_point_of_each_sample():
    capture = shared_capture()
    batch = capture_batch(capture, [0, 1, 2])
    random = SampleRandom(3, 5, batch.sample_ids)
    points = noised_points(batch, random)
    m = SampleRandom(3, 5, batch.sample_ids).randint(0, NOISED_POINTS)  # the same draw, made here
    for b in range(3):
        i = int(m[b])
        assert torch.equal(points.x_t[b], capture.arrays["noised.x_t"][b, i])
        assert points.t[b] == capture.arrays["noised.timestep"][b, i]
        assert points.s[b] == capture.arrays["noised.next_timestep"][b, i]
        assert torch.equal(points.out_uncond[b], capture.arrays["noised.out_uncond"][b, i])


def test_mixed_points_take_a_noised_point_where_the_coin_says_so():
    capture = shared_capture()
    batch = capture_batch(capture)
    grid = torch.tensor(
        cached_grid(
            capture.settings, NoiseSchedule.from_scheduler_config(capture.settings["scheduler"]["config"])
        )
    )
    mixed = teacher_points("mix", batch, SampleRandom(1, 2, batch.sample_ids), grid)
    draws = SampleRandom(1, 2, batch.sample_ids)
    coin = draws.uniform(0.0, 1.0) < 0.5  # drawn first, then the trajectory step, then the noised point
    n, m = draws.randint(0, capture.settings["num_inference_steps"]), draws.randint(0, NOISED_POINTS)
    assert 0 < int(coin.sum()) < len(coin)  # both kinds in this batch
    for b in range(len(coin)):
        if coin[b]:
            expected_x, expected_t = (
                capture.arrays["noised.x_t"][b, m[b]],
                capture.arrays["noised.timestep"][b, m[b]],
            )
        else:
            expected_x, expected_t = capture.arrays["trajectory"][b, n[b]], grid[n[b]]
        assert torch.equal(mixed.x_t[b], expected_x) and mixed.t[b] == expected_t


def test_loss_value_by_hand_on_noised_points():
    capture = shared_capture()
    loss = lcm_loss(capture, w_min=2.0, w_max=2.0, points="noised")
    batch = capture_batch(capture, [0, 1])
    got = loss(ZeroStudent(), batch, SampleRandom(7, 0, batch.sample_ids), step=0)
    m = SampleRandom(7, 0, batch.sample_ids).randint(0, NOISED_POINTS)
    alphas_cumprod = loss.schedule.alphas_cumprod
    expected = []
    for b in range(2):
        i = int(m[b])
        t, s = int(capture.arrays["noised.timestep"][b, i]), int(capture.arrays["noised.next_timestep"][b, i])
        assert s == max(t - 100, 0)  # the solver grid of 10 steps over 1000: skip 100
        alpha_t, alpha_s = alphas_cumprod[t].sqrt().item(), alphas_cumprod[s].sqrt().item()
        x_t = capture.arrays["noised.x_t"][b, i]
        cond, uncond = capture.arrays["noised.out_cond"][b, i], capture.arrays["noised.out_uncond"][b, i]
        expected.append(zero_student_loss(x_t, t, s, alpha_t, alpha_s, cond, uncond, w=2.0))
    torch.testing.assert_close(got, torch.stack(expected), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "points, fields",
    [
        ("trajectory", {"trajectory", "out_cond", "out_uncond"}),
        (
            "noised",
            {"noised.x_t", "noised.timestep", "noised.next_timestep", "noised.out_cond", "noised.out_uncond"},
        ),
    ],
)
def test_lcm_reads_the_fields_of_its_points(points, fields):
    from student_train.config import TrainConfig
    from student_train.losses import get_method

    method = get_method("lcm")
    assert set(method.fields(TrainConfig(cache="c", out="o", points=points))) == fields
    assert set(method.fields(TrainConfig(cache="c", out="o", points="mix"))) >= fields


def test_lcm_samples_at_the_stock_lcm_scheduler_timesteps():
    from diffusers import LCMScheduler

    from student_train.sampling import student_timesteps

    settings = shared_capture().settings
    stock = LCMScheduler.from_config(settings["scheduler"]["config"], original_inference_steps=10)
    for k in (1, 2, 4):
        stock.set_timesteps(k)
        assert student_timesteps("lcm", k, settings) == [float(t) for t in stock.timesteps]
    assert student_timesteps("lcm", 4, settings) == [
        999.0,
        799.0,
        499.0,
        299.0,
    ]  # grid 999, 899, ..., 99; indices 0, 2, 5, 7
