"""progressive loss: the Salimans & Ho x-target lands on the cached point; rounds over the grid."""

import torch

from shared.schedule import NoiseSchedule
from student_train.data.randomness import SampleRandom
from student_train.losses.distance import Distance
from student_train.losses.progressive import ProgressiveLoss, x_target
from student_train.sampling import cached_grid, progressive_jump, student_timesteps
from tests.student_store_fixture import capture_batch, one_torch_thread, shared_capture  # noqa: F401 (autouse)


def schedule_of(settings) -> NoiseSchedule:
    return NoiseSchedule.from_scheduler_config(
        settings["scheduler"]["config"], settings["scheduler"]["class"]
    )


def test_x_target_is_the_x0_whose_ddim_step_lands_on_the_cached_point():
    capture = shared_capture()
    schedule = schedule_of(capture.settings)
    grid = torch.tensor(cached_grid(capture.settings, schedule))
    trajectory = capture.arrays["trajectory"]
    for start, end in [(0, 4), (3, 7), (8, 10)]:
        t, t_next = grid[[start]].expand(trajectory.shape[0]), grid[[end]].expand(trajectory.shape[0])
        z_t, z_next = trajectory[:, start], trajectory[:, end]
        alpha_t, sigma_t = schedule.alpha_sigma(t)
        alpha_next, sigma_next = schedule.alpha_sigma(t_next)
        x = x_target(z_t, alpha_t, sigma_t, z_next, alpha_next, sigma_next)
        eps = (z_t - alpha_t.view(-1, 1, 1, 1) * x) / sigma_t.view(-1, 1, 1, 1)
        torch.testing.assert_close(schedule.ddim_step(x, eps, t_next), z_next, rtol=1e-4, atol=1e-4)


def test_one_grid_step_target_is_the_guided_teachers_x0():
    capture = shared_capture()
    schedule = schedule_of(capture.settings)
    n, guidance = 2, capture.settings["guidance_scale"]
    t = torch.full((6,), float(capture.settings["timesteps"][n]))
    t_next = torch.full((6,), float(capture.settings["timesteps"][n + 1]))
    z_t, z_next = capture.arrays["trajectory"][:, n], capture.arrays["trajectory"][:, n + 1]
    cond, uncond = capture.arrays["out_cond"][:, n], capture.arrays["out_uncond"][:, n]
    teacher_x0, _ = schedule.to_x0_eps(uncond + guidance * (cond - uncond), z_t, t, "epsilon")
    x = x_target(z_t, *schedule.alpha_sigma(t), z_next, *schedule.alpha_sigma(t_next))
    torch.testing.assert_close(x, teacher_x0, rtol=1e-3, atol=1e-3)


def test_rounds_halve_the_step_count_down_to_k():
    assert progressive_jump(50, 4) == 16 and progressive_jump(50, 1) == 64 and progressive_jump(50, 2) == 32
    settings = {"timesteps": list(range(981, 0, -20)), "scheduler": {"class": "DDIMScheduler", "config": {}}}
    assert student_timesteps("progressive", 4, settings) == [981.0, 661.0, 341.0, 21.0]
    loss = ProgressiveLoss(schedule_of(settings), [0.0] * 51, "epsilon", Distance(), 4, total_train_steps=400)
    assert loss.jumps == [2, 4, 8, 16]
    assert [loss.jump_at(step) for step in (0, 99, 100, 250, 399)] == [2, 2, 4, 8, 16]
    # a 5-step grid (6 points) to 2 steps: 5 -> 3 -> 2 student steps, by hand: jumps of 2, then 4
    five = ProgressiveLoss(schedule_of(settings), [0.0] * 6, "epsilon", Distance(), 2, total_train_steps=2)
    assert five.jumps == [2, 4]


def test_loss_is_weighted_and_zero_for_a_perfect_student():
    capture = shared_capture()
    schedule = schedule_of(capture.settings)
    grid = cached_grid(capture.settings, schedule)
    loss = ProgressiveLoss(
        schedule, grid, "epsilon", Distance("l2"), num_student_steps=10, total_train_steps=1
    )
    assert loss.jumps == [1]  # K = S: one grid step, the teacher itself

    class GuidedTeacher:  # predicts exactly the cached guided eps at the cached points
        def denoise(self, x_t, timesteps, cond, guidance_w=None):
            index = [capture.settings["timesteps"].index(int(t)) for t in timesteps]
            rows = torch.arange(x_t.shape[0])
            cond_out = capture.arrays["out_cond"][rows, index]
            uncond_out = capture.arrays["out_uncond"][rows, index]
            return uncond_out + capture.settings["guidance_scale"] * (cond_out - uncond_out)

    batch = capture_batch(capture)
    got = loss(GuidedTeacher(), batch, SampleRandom(0, 0, batch.sample_ids), step=0)
    assert got.shape == (6,) and got.max().item() < 1e-6

    class ZeroStudent:
        def denoise(self, x_t, timesteps, cond, guidance_w=None):
            return torch.zeros_like(x_t)

    got = loss(ZeroStudent(), batch, SampleRandom(0, 0, batch.sample_ids), step=0)
    start = SampleRandom(0, 0, batch.sample_ids).randint(0, 10)
    t = torch.tensor(grid)[start]
    snr = schedule.snr(t)
    alpha_t, sigma_t = schedule.alpha_sigma(t)
    z_t = batch.fields["trajectory"][torch.arange(6), start]
    z_next = batch.fields["trajectory"][torch.arange(6), start + 1]
    target = x_target(z_t, alpha_t, sigma_t, z_next, *schedule.alpha_sigma(torch.tensor(grid)[start + 1]))
    distance = (z_t / alpha_t.view(-1, 1, 1, 1) - target).square().flatten(1).mean(1)
    torch.testing.assert_close(got, snr.clamp(min=1) * distance, rtol=1e-4, atol=1e-5)

    v_loss = ProgressiveLoss(schedule, grid, "epsilon", Distance("l2"), 10, 1, weighting="snr_plus_one")
    got = v_loss(ZeroStudent(), batch, SampleRandom(0, 0, batch.sample_ids), step=0)  # the v-loss weighting
    torch.testing.assert_close(got, (snr + 1) * distance, rtol=1e-4, atol=1e-5)
