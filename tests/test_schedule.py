"""shared.schedule against diffusers' own schedulers: the same step on the same inputs."""

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    LCMScheduler,
)

from shared.schedule import NoiseSchedule, solver_grid
from tests.student_store_fixture import one_torch_thread  # noqa: F401 (autouse)
from tests.tiny_models import tiny_ddim_scheduler


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("set_alpha_to_one", [False, True])
def test_ddim_step_matches_diffusers(prediction_type, set_alpha_to_one):
    scheduler = DDIMScheduler.from_config(
        tiny_ddim_scheduler(prediction_type).config, set_alpha_to_one=set_alpha_to_one
    )
    scheduler.set_timesteps(10)
    schedule = NoiseSchedule.from_scheduler_config(dict(scheduler.config), "DDIMScheduler")
    generator = torch.Generator().manual_seed(0)
    for index, t in enumerate(scheduler.timesteps):  # includes the last step, to the final alpha
        x_t = torch.randn(2, 4, 8, 8, generator=generator)
        model_output = torch.randn(2, 4, 8, 8, generator=generator)
        expected = scheduler.step(model_output, t, x_t).prev_sample
        t_next = scheduler.timesteps[index + 1] if index + 1 < len(scheduler.timesteps) else -1
        timesteps = torch.full((2,), float(t))
        x0, eps = schedule.to_x0_eps(model_output, x_t, timesteps, prediction_type)
        ours = schedule.ddim_step(x0, eps, torch.full((2,), float(t_next)))
        torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)


def test_x0_eps_reconstruct_x_t_and_end_timestep():
    schedule = NoiseSchedule.from_scheduler_config(dict(tiny_ddim_scheduler().config), "DDIMScheduler")
    x0, eps = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    t = torch.tensor([1.0, 500.0, 999.0])
    x_t = schedule.ddim_step(x0, eps, t)
    alpha, sigma = schedule.alpha_sigma(t)
    v = alpha.view(3, 1, 1, 1) * eps - sigma.view(3, 1, 1, 1) * x0
    for prediction_type, output in [("epsilon", eps), ("v_prediction", v), ("sample", x0)]:
        got_x0, got_eps = schedule.to_x0_eps(output, x_t, t, prediction_type)
        torch.testing.assert_close(got_x0, x0, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(got_eps, eps, rtol=1e-4, atol=1e-4)
    final_alpha, _ = schedule.alpha_sigma(torch.tensor([schedule.end_timestep]))
    assert final_alpha.item() == pytest.approx(schedule.alphas_cumprod[0].sqrt().item())


def test_flow_step_matches_flow_match_euler():
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(6)
    schedule = NoiseSchedule.from_scheduler_config(dict(scheduler.config), "FlowMatchEulerDiscreteScheduler")
    generator = torch.Generator().manual_seed(1)
    timesteps = list(scheduler.timesteps) + [schedule.end_timestep]
    for t, t_next in zip(timesteps[:-1], timesteps[1:]):
        x_t = torch.randn(1, 4, 4, 4, generator=generator)
        velocity = torch.randn(1, 4, 4, 4, generator=generator)
        expected = scheduler.step(velocity, t, x_t).prev_sample
        x0, eps = schedule.to_x0_eps(velocity, x_t, torch.tensor([float(t)]), "flow_prediction")
        ours = schedule.ddim_step(x0, eps, torch.tensor([float(t_next)]))
        torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)


def test_the_family_and_length_come_from_any_scheduler_config():
    """A 500-step DDPM schedule clamps at its own last timestep; a DPM-Solver with flow sigmas and a
    FlowMatch scheduler are flow schedules whose sigma is t / num_train_timesteps."""
    ddim = DDIMScheduler(num_train_timesteps=500, beta_schedule="scaled_linear")
    ddpm = NoiseSchedule.from_scheduler_config(dict(ddim.config), "DDIMScheduler")
    alpha, sigma = ddpm.alpha_sigma(torch.tensor([499.0, 900.0]))
    expected = ddim.alphas_cumprod[499].sqrt().item()
    assert ddpm.family == "ddpm" and alpha.tolist() == pytest.approx([expected, expected], rel=1e-6)

    flow_sigmas = DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction")
    flow = NoiseSchedule.from_scheduler_config(dict(flow_sigmas.config), "DPMSolverMultistepScheduler")
    assert flow.family == "flow"
    assert [v.item() for v in flow.alpha_sigma(torch.tensor(250.0))] == pytest.approx([0.75, 0.25])

    short_flow = FlowMatchEulerDiscreteScheduler(num_train_timesteps=500)
    flow = NoiseSchedule.from_scheduler_config(dict(short_flow.config), "FlowMatchEulerDiscreteScheduler")
    assert [v.item() for v in flow.alpha_sigma(torch.tensor(250.0))] == pytest.approx([0.5, 0.5])


def test_an_unknown_prediction_type_is_named():
    schedule = NoiseSchedule.from_scheduler_config(dict(tiny_ddim_scheduler().config))
    x = torch.zeros(1, 4, 2, 2)
    with pytest.raises(ValueError, match="'v_pred'; valid: epsilon, v_prediction"):
        schedule.to_x0_eps(x, x, torch.tensor([10.0]), "v_pred")


def test_alpha_at_the_grid_ends():
    """t = 0 is the first trained timestep (alphas_cumprod[0]); t < 0 the final alpha after it."""
    ddim = DDIMScheduler.from_config(tiny_ddim_scheduler().config, set_alpha_to_one=True)  # final alpha 1
    schedule = NoiseSchedule.from_scheduler_config(dict(ddim.config))
    alpha, _ = schedule.alpha_sigma(torch.tensor([0.0, -1.0, 1.0]))
    expected = [ddim.alphas_cumprod[0].sqrt().item(), ddim.final_alpha_cumprod.sqrt().item()]
    assert alpha[:2].tolist() == pytest.approx(expected, rel=1e-6)
    assert alpha[2].item() == pytest.approx(ddim.alphas_cumprod[1].sqrt().item(), rel=1e-6)


@pytest.mark.parametrize("num_steps", [50, 4, 3])
def test_solver_grid_is_the_grid_lcm_scheduler_samples_on(num_steps):
    timesteps, ends = solver_grid(1000, num_steps)
    lcm = LCMScheduler(original_inference_steps=num_steps)
    lcm.set_timesteps(num_steps)
    assert sorted(timesteps) == sorted(int(t) for t in lcm.timesteps)
    skip = 1000 // num_steps
    assert (
        ends == [max(t - skip, 0) for t in timesteps]
        and ends[0] == 0
        and timesteps[-1] == num_steps * skip - 1
    )


def test_a_config_without_num_train_timesteps_is_diffusers_default_1000():
    schedule = NoiseSchedule.from_scheduler_config({"beta_schedule": "scaled_linear"})
    last = DDIMScheduler(beta_schedule="scaled_linear").alphas_cumprod[999].sqrt().item()
    assert schedule.num_train_timesteps == 1000
    assert schedule.alpha_sigma(torch.tensor([5000.0]))[0].item() == pytest.approx(last, rel=1e-6)
