"""The teacher-at-K-steps baseline is diffusers' own CFG sampling, without the text encoder."""

import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler, PNDMScheduler

from student_train.eval.teacher_baseline import sample_with_cfg, samples_as_the_cache, teacher_scheduler
from student_train.losses.guided import guided_output
from student_train.students.denoiser import concat_halves
from tests.tiny_models import LATENT_SHAPE, tiny_ddim_scheduler, tiny_sd_pipeline


def test_matches_stable_diffusion_pipeline_from_the_same_noise_and_embeddings():
    pipe = tiny_sd_pipeline()
    prompts = ["a red seven on blue", "a cyan two on black"]
    cond, uncond = pipe.encode_prompt(prompts, "cpu", 1, True, negative_prompt=None)  # [2, 16, 32] each
    noise = torch.randn(2, *LATENT_SHAPE, generator=torch.Generator().manual_seed(0))
    expected = pipe(
        prompt_embeds=cond,
        negative_prompt_embeds=uncond,
        latents=noise.clone(),
        num_inference_steps=3,
        guidance_scale=4.0,
        output_type="latent",
    ).images

    scheduler = teacher_scheduler({"scheduler": {"config": dict(pipe.scheduler.config)}})
    got = sample_with_cfg(
        pipe.unet,
        scheduler,
        noise,
        {"encoder_hidden_states": cond},
        {"encoder_hidden_states": uncond},
        torch.tensor([4.0, 4.0]),
        num_steps=3,
    )
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, noise, atol=1e-2)


def test_per_row_guidance_and_nested_halves():
    out_uncond, out_cond = torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2)
    guided = guided_output(out_uncond, out_cond, torch.tensor([1.0, 7.5]))
    assert guided[0].eq(1.0).all() and guided[1].eq(7.5).all()
    joined = concat_halves(
        {"a": torch.zeros(1), "b": {"c": torch.zeros(1)}}, {"a": torch.ones(1), "b": {"c": torch.ones(1)}}
    )
    assert joined["a"].tolist() == [0.0, 1.0] and joined["b"]["c"].tolist() == [0.0, 1.0]


def test_trailing_spacing_starts_every_step_count_from_pure_noise():
    settings = {
        "scheduler": {"config": dict(tiny_ddim_scheduler().config)}
    }  # SD's "leading" + steps_offset 1
    for steps, first in [(1, 999), (4, 999)]:
        trailing = teacher_scheduler(settings, "trailing")
        trailing.set_timesteps(steps)
        assert int(trailing.timesteps[0]) == first and len(trailing.timesteps) == steps
    own = teacher_scheduler(settings, "store")
    own.set_timesteps(1)
    assert own.timesteps.tolist() == [1]  # what "leading" gives at K = 1: the strawman trailing avoids


def test_teacher_at_s_is_the_cache_only_for_the_caches_own_scheduler_and_timesteps():
    def store_settings(scheduler, steps: int, class_name: str | None = None) -> dict:
        scheduler.set_timesteps(steps)
        return {
            "scheduler": {"class": class_name or type(scheduler).__name__, "config": dict(scheduler.config)},
            "num_inference_steps": steps,
            "timesteps": [float(t) for t in scheduler.timesteps],
        }

    leading = store_settings(tiny_ddim_scheduler(), 50)  # SD's "leading": 981, 961, ..., 1
    assert samples_as_the_cache(leading, "store") and not samples_as_the_cache(leading, "trailing")
    trailing = store_settings(
        DDIMScheduler.from_config(tiny_ddim_scheduler().config, timestep_spacing="trailing"), 50
    )
    assert samples_as_the_cache(trailing, "trailing")  # trailing DDIM at S = a trailing teacher's cache
    pndm = store_settings(PNDMScheduler.from_config(tiny_ddim_scheduler().config), 50)
    assert not samples_as_the_cache(pndm, "store")  # eval's DDIM is not the PNDM that made the cache
    flow = store_settings(FlowMatchEulerDiscreteScheduler(shift=3.0), 28)
    assert samples_as_the_cache(flow, "store") and samples_as_the_cache(flow, "trailing")
    assert not samples_as_the_cache({**flow, "timesteps": flow["timesteps"][:-1] + [1.0]}, "store")
