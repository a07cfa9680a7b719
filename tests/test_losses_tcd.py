"""tcd loss: at gamma = 1 (s' = 0, TCDScheduler's consistency-model end) it is lcm's loss without the
boundary scalings; at any gamma its value matches a hand computation of TCD's trajectory map."""

import torch

from shared.schedule import NoiseSchedule
from student_train.data.randomness import SampleRandom
from student_train.losses.distance import Distance
from student_train.losses.lcm import LcmLoss
from student_train.losses.tcd import TcdLoss
from student_train.sampling import cached_grid
from tests.student_store_fixture import capture_batch, one_torch_thread, shared_capture  # noqa: F401 (autouse)


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


def test_loss_value_by_hand():
    capture = shared_capture()
    settings = capture.settings
    schedule = NoiseSchedule.from_scheduler_config(settings["scheduler"]["config"])
    loss = TcdLoss(schedule, cached_grid(settings, schedule), "epsilon", Distance("l2"), 2.0, 2.0)
    batch = capture_batch(capture, [0, 1, 2])
    got = loss(LinearStudent(), batch, SampleRandom(11, 4, batch.sample_ids), step=0)

    draws = SampleRandom(11, 4, batch.sample_ids)  # n, w, gamma: the loss's draws, in its order
    n, _, gamma = draws.randint(0, settings["num_inference_steps"]), draws.uniform(2, 2), draws.uniform(0, 1)
    alphas_cumprod = schedule.alphas_cumprod.float()

    def alpha_bar(t: int) -> float:
        return float(alphas_cumprod[t]) if t >= 0 else float(alphas_cumprod[0])  # SD: no set_alpha_to_one

    def trajectory_map(x, t: int, s_prime: int):  # TCD: DDIM from t to s' with the model's x0, eps
        eps = 0.3 * x + 0.001 * t
        x0 = (x - (1 - alpha_bar(t)) ** 0.5 * eps) / alpha_bar(t) ** 0.5
        return alpha_bar(s_prime) ** 0.5 * x0 + (1 - alpha_bar(s_prime)) ** 0.5 * eps

    expected = []
    for b in range(3):
        i = int(n[b])
        t, s = settings["timesteps"][i], (settings["timesteps"] + [-1])[i + 1]
        s_prime = min(int((1 - float(gamma[b])) * s // 1), s)
        x_t = capture.arrays["trajectory"][b, i]
        cond, uncond = capture.arrays["out_cond"][b, i], capture.arrays["out_uncond"][b, i]
        guided = cond + 2.0 * (cond - uncond)
        x0 = (x_t - (1 - alpha_bar(t)) ** 0.5 * guided) / alpha_bar(t) ** 0.5
        x_s = alpha_bar(s) ** 0.5 * x0 + (1 - alpha_bar(s)) ** 0.5 * guided  # the teacher's solver step
        online, target = trajectory_map(x_t, t, s_prime), trajectory_map(x_s, s, s_prime)
        expected.append((online - target).square().mean())
    torch.testing.assert_close(got, torch.stack(expected), rtol=1e-4, atol=1e-6)
