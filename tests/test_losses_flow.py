"""The losses and samplers on a flow-matching store (SD3 tiny pipeline, FlowMatchEulerDiscreteScheduler with
shift 3, captured by phase one): every value against an independent computation — the store's own
trajectory (diffusers' FlowMatchEulerDiscreteScheduler.step made it), Euler steps written by hand,
and diffusers' FlowMatchLCMScheduler.step."""

from functools import partial

import diffusers.schedulers.scheduling_flow_match_lcm as flow_match_lcm
import pytest
import torch
from diffusers import FlowMatchLCMScheduler

from shared.schedule import NoiseSchedule
from shared.store import StoreReader
from student_train.data.batches import TrainingData
from student_train.data.randomness import SampleRandom
from student_train.eval.teacher_baseline import (
    SPACINGS,
    read_conditioning,
    sample_with_cfg,
    samples_as_the_cache,
    teacher_scheduler,
)
from student_train.losses.distance import Distance
from student_train.losses.guided import guided_solver_step
from student_train.losses.lcm import LcmLoss
from student_train.losses.progressive import ProgressiveLoss
from student_train.sampling import cached_grid, sample, student_scheduler
from student_train.sampling.consistency import consistency_output
from student_train.students.denoiser import call_denoiser, load_denoiser, nest_conditioning
from tests.family_stores import family_capture
from tests.student_store_fixture import one_torch_thread  # noqa: F401 (autouse)

FIELDS = ("noise", "trajectory", "final_latents", "out_cond", "out_uncond")


@pytest.fixture(scope="module")
def flow():
    """(reader, settings, schedule, batch of every row) of the tiny SD3 store."""
    reader = StoreReader(family_capture("sd3").store)
    settings = reader.settings
    schedule = NoiseSchedule.from_scheduler_config(
        settings["scheduler"]["config"], settings["scheduler"]["class"]
    )
    data = TrainingData(reader, FIELDS, split="all", loader="memory")
    return reader, settings, schedule, data.batch(torch.arange(len(data)), "cpu")


def test_the_store_is_a_shifted_flow_store(flow):
    _, settings, schedule, _ = flow
    assert schedule.family == "flow" and schedule.end_timestep == 0.0
    assert (
        settings["prediction_type"] == "flow_prediction" and settings["scheduler"]["config"]["shift"] == 3.0
    )


def test_sampler_with_the_guided_teacher_reproduces_the_cached_output(flow):
    reader, settings, schedule, batch = flow
    transformer = load_denoiser(str(family_capture("sd3").teacher_dir), "transformer")
    rows = list(range(len(batch.sample_ids)))
    names = [n[len("uncond.") :] for n in reader.fields if n.startswith("uncond.")]
    uncond = nest_conditioning({name: reader.read(f"uncond.{name}", rows) for name in names})

    def guided(x_t, timesteps, cond, guidance_w=None):
        out_cond = call_denoiser(transformer, x_t, timesteps, cond)
        out_uncond = call_denoiser(transformer, x_t, timesteps, uncond)
        return out_uncond + settings["guidance_scale"] * (out_cond - out_uncond)

    with torch.no_grad():
        latents = sample(
            guided, schedule, batch.fields["noise"], batch.cond, settings["timesteps"], "flow_prediction"
        )
    torch.testing.assert_close(latents, batch.fields["final_latents"], rtol=1e-4, atol=1e-4)


def test_eval_teacher_at_s_is_the_cache_so_eval_reuses_it(flow):
    """eval's teacher@K sampler (FlowMatchEulerDiscreteScheduler of the store, either spacing) at K = S
    recomputes the cached final latents: eval takes the cache instead of sampling it again."""
    reader, settings, _, batch = flow
    transformer = load_denoiser(str(family_capture("sd3").teacher_dir), "transformer")
    rows = list(range(len(batch.sample_ids)))
    uncond = read_conditioning(reader, rows, "uncond")
    for spacing in SPACINGS:
        latents = sample_with_cfg(
            transformer,
            teacher_scheduler(settings, spacing),
            batch.fields["noise"],
            batch.cond,
            uncond,
            settings["guidance_scale"],
            settings["num_inference_steps"],
        )
        torch.testing.assert_close(latents, batch.fields["final_latents"], rtol=1e-4, atol=1e-4)
        assert samples_as_the_cache(settings, spacing)


def euler_step(x_t, t, s, velocity):
    """Rectified-flow Euler step from time t to s (timesteps = 1000 sigma): x_s = x_t + (sigma_s - sigma_t) v."""
    return x_t + (s - t) / 1000 * velocity


def test_lcm_solver_step_at_the_cached_guidance_lands_on_the_next_cached_point(flow):
    _, settings, schedule, batch = flow
    grid = torch.tensor(cached_grid(settings, schedule))
    trajectory, rows = batch.fields["trajectory"], torch.arange(len(batch.sample_ids))
    w = torch.full((len(rows),), settings["guidance_scale"] - 1.0)  # Imagen convention
    for n in range(settings["num_inference_steps"]):  # the last step lands at sigma = 0
        index = torch.full((len(rows),), n)
        x_s = guided_solver_step(
            schedule, "flow_prediction", trajectory[rows, index], grid[index], grid[index + 1],
            batch.fields["out_cond"][rows, index], batch.fields["out_uncond"][rows, index], w,
        )  # fmt: skip
        torch.testing.assert_close(x_s, trajectory[:, n + 1], rtol=1e-4, atol=1e-4)


def test_consistency_function_is_x0_and_the_identity_at_sigma_zero(flow):
    _, _, schedule, _ = flow
    x_t, velocity = torch.randn(4, 4, 8, 8), torch.randn(4, 4, 8, 8)
    t = torch.tensor([0.0, 1.0, 250.0, 1000.0])  # FlowMatchLCMScheduler: x0 = x - sigma v, no c_skip / c_out
    f = consistency_output(schedule, velocity, x_t, t, "flow_prediction")
    torch.testing.assert_close(f[0], x_t[0])  # the boundary condition
    torch.testing.assert_close(f[1:], x_t[1:] - (t[1:] / 1000).view(-1, 1, 1, 1) * velocity[1:])


class ZeroVelocity:
    """A student predicting velocity 0 everywhere: x0_hat = x_t, so f(x_t) = x_t."""

    w_conditioned = False

    def denoise(self, x_t, timesteps, cond, guidance_w=None):
        return torch.zeros_like(x_t)

    target_denoise = denoise


def test_lcm_loss_value_by_hand(flow):
    _, settings, schedule, batch = flow
    loss = LcmLoss(
        schedule, cached_grid(settings, schedule), "flow_prediction", Distance("l2"), w_min=2.0, w_max=2.0
    )
    got = loss(ZeroVelocity(), batch, SampleRandom(5, 0, batch.sample_ids), step=0)
    n = SampleRandom(5, 0, batch.sample_ids).randint(0, settings["num_inference_steps"])
    grid = settings["timesteps"] + [0.0]
    expected = []
    for b, i in enumerate(n.tolist()):
        x_t = batch.fields["trajectory"][b, i]
        cond, uncond = batch.fields["out_cond"][b, i], batch.fields["out_uncond"][b, i]
        x_s = euler_step(x_t, grid[i], grid[i + 1], cond + 2.0 * (cond - uncond))
        expected.append((x_t - x_s).square().mean())  # f_student(x_t) = x_t, f_target(x_s) = x_s
    torch.testing.assert_close(got, torch.stack(expected), rtol=1e-4, atol=1e-6)


def test_lcm_sampler_matches_flow_match_lcm_scheduler(flow, monkeypatch):
    """Two steps: f, re-noise to the next grid sigma with the same noise, f again."""
    _, settings, schedule, batch = flow
    model = load_denoiser(str(family_capture("sd3").teacher_dir), "transformer")
    timesteps = [settings["timesteps"][0], settings["timesteps"][3]]
    random_noise = SampleRandom(0, 0, batch.sample_ids).normal(tuple(batch.fields["noise"].shape[1:]))
    with torch.no_grad():
        ours = sample(
            partial(call_denoiser, model), schedule, batch.fields["noise"], batch.cond, timesteps,
            "flow_prediction", "lcm", SampleRandom(0, 0, batch.sample_ids),
        )  # fmt: skip
        scheduler = student_scheduler("lcm", settings["scheduler"], settings["num_inference_steps"])
        assert isinstance(scheduler, FlowMatchLCMScheduler)
        monkeypatch.setattr(flow_match_lcm, "randn_tensor", lambda shape, **kwargs: random_noise)
        scheduler.set_timesteps(sigmas=[t / 1000 for t in timesteps])
        latents = batch.fields["noise"]
        for t in scheduler.timesteps:
            output = call_denoiser(model, latents, t.expand(len(latents)), batch.cond)
            latents = scheduler.step(output, t, latents).prev_sample
    torch.testing.assert_close(ours, latents, rtol=1e-4, atol=1e-4)


def test_progressive_loss_is_zero_for_the_guided_teacher_and_weighted_by_flow_snr(flow):
    _, settings, schedule, batch = flow
    grid = cached_grid(settings, schedule)
    steps = settings["num_inference_steps"]
    loss = ProgressiveLoss(
        schedule, grid, "flow_prediction", Distance("l2"), num_student_steps=steps, total_train_steps=1
    )
    rows = torch.arange(len(batch.sample_ids))

    class GuidedTeacher:  # the cached guided velocity at the cached points
        def denoise(self, x_t, timesteps, cond, guidance_w=None):
            index = [settings["timesteps"].index(float(t)) for t in timesteps]
            cond_out, uncond_out = (
                batch.fields["out_cond"][rows, index],
                batch.fields["out_uncond"][rows, index],
            )
            return uncond_out + settings["guidance_scale"] * (cond_out - uncond_out)

    random = SampleRandom(1, 0, batch.sample_ids)
    assert loss(GuidedTeacher(), batch, random, step=0).max().item() < 1e-8

    got = loss(ZeroVelocity(), batch, SampleRandom(1, 0, batch.sample_ids), step=0)
    start = SampleRandom(1, 0, batch.sample_ids).randint(0, steps).tolist()
    expected = []
    for b, i in enumerate(start):
        sigma, sigma_next = grid[i] / 1000, grid[i + 1] / 1000
        z_t, z_next = batch.fields["trajectory"][b, i], batch.fields["trajectory"][b, i + 1]
        # the x0 whose Euler step from z_t lands on z_next: z = (1 - sigma) x + sigma eps, solved for x
        x = (z_next - sigma_next / sigma * z_t) / ((1 - sigma_next) - sigma_next / sigma * (1 - sigma))
        weight = max(((1 - sigma) / sigma) ** 2, 1.0)  # truncated SNR
        expected.append(weight * (z_t - x).square().mean())  # x0_hat of a zero velocity = z_t
    torch.testing.assert_close(got, torch.stack(expected), rtol=1e-4, atol=1e-6)
