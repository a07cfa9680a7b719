"""lcm loss: the solver step from cached outputs, the boundary conditions, and a hand-computed value."""

import pytest
import torch

from shared.schedule import NoiseSchedule
from student_train.data.points import pick_steps
from student_train.data.randomness import SampleRandom
from student_train.losses.distance import Distance
from student_train.losses.guided import guided_solver_step
from student_train.losses.lcm import LcmLoss
from student_train.sampling import cached_grid
from student_train.sampling.consistency import boundary_scalings
from tests.student_store_fixture import capture_batch, one_torch_thread, shared_capture  # noqa: F401 (autouse)


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
        eps = cond + 3.0 * (cond - uncond)
        x0 = (x_t - (1 - alpha_t**2) ** 0.5 * eps) / alpha_t
        x_s = alpha_s * x0 + (1 - alpha_s**2) ** 0.5 * eps
        c_skip_t, c_out_t = 0.25 / ((10 * t) ** 2 + 0.25), 10 * t / ((10 * t) ** 2 + 0.25) ** 0.5
        s_pos = max(s, 0)
        c_skip_s, c_out_s = 0.25 / ((10 * s_pos) ** 2 + 0.25), 10 * s_pos / ((10 * s_pos) ** 2 + 0.25) ** 0.5
        online = c_skip_t * x_t + c_out_t * x_t / alpha_t
        target = c_skip_s * x_s + c_out_s * x_s / alpha_s
        expected.append((online - target).square().mean())
    torch.testing.assert_close(got, torch.stack(expected), rtol=1e-4, atol=1e-5)


def test_distances_by_hand():
    prediction, target = torch.tensor([[3.0, 4.0]]), torch.zeros(1, 2)
    assert Distance("l2")(prediction, target).item() == pytest.approx(12.5)
    huber = Distance("huber", huber_c=1.0)(prediction, target).item()
    assert huber == pytest.approx(((10**0.5 - 1) + (17**0.5 - 1)) / 2)
