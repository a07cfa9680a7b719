"""What CaptureHooks records of one stock StableDiffusionPipeline call is what the pipeline computed:
the latents entering step 0 and after every step (the last: the pipeline's own output latents), the
timesteps its scheduler set, the denoiser's cond / uncond halves at every step (each DDIM step of the
trajectory is diffusers' step on uncond + g (cond - uncond)), the step-0 conditioning by half (the
prompt embeddings encode_prompt gives), and nothing outside start() ... finish() or after the block."""

from types import SimpleNamespace

import pytest
import torch
from diffusers import DDIMScheduler

from shared.errors import DistillCacheError
from teacher_cache.capture import CaptureHooks, check_first_order, flat_tensor_kwargs
from tests.student_store_fixture import one_torch_thread  # noqa: F401 (autouse)
from tests.tiny_models import LATENT_SHAPE, tiny_sd_pipeline

PROMPTS = ["a red one", "a blue two"]
STEPS = 3


@pytest.fixture(scope="module")
def pipe():
    return tiny_sd_pipeline()


def run_pipeline(pipe, hooks, guidance_scale, latents):
    return pipe(
        PROMPTS,
        num_inference_steps=STEPS,
        guidance_scale=guidance_scale,
        latents=latents.clone(),
        output_type="latent",
        callback_on_step_end=hooks.on_step_end,
    ).images


@pytest.mark.parametrize("guidance_scale", [2.5, 1.0])
def test_the_record_is_what_the_pipeline_computed(pipe, guidance_scale):
    cfg = guidance_scale > 1
    latents = torch.randn((len(PROMPTS), *LATENT_SHAPE), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), CaptureHooks(pipe.unet) as hooks:
        hooks.start(len(PROMPTS), cfg)
        final = run_pipeline(pipe, hooks, guidance_scale, latents)
        record = hooks.finish(latents)
        cond_embeds, uncond_embeds = pipe.encode_prompt(PROMPTS, "cpu", 1, True)
    assert record.timesteps == [float(t) for t in pipe.scheduler.timesteps] and len(record.timesteps) == STEPS
    assert record.trajectory.shape == (len(PROMPTS), STEPS + 1, *LATENT_SHAPE)
    assert torch.equal(record.trajectory[:, 0], latents) and torch.equal(record.trajectory[:, -1], final)
    torch.testing.assert_close(record.cond["encoder_hidden_states"], cond_embeds, rtol=0, atol=0)
    assert record.first_call["sample"].shape[0] == (2 if cfg else 1) * len(PROMPTS)
    assert record.first_call["timestep"] == pipe.scheduler.timesteps[0]
    if cfg:
        torch.testing.assert_close(record.uncond["encoder_hidden_states"], uncond_embeds, rtol=0, atol=0)
    else:
        assert record.out_uncond is None and record.uncond == {}
    with torch.no_grad():  # the step-0 outputs, by a direct call of each half
        t0 = pipe.scheduler.timesteps[0]
        direct_cond = pipe.unet(latents, t0, encoder_hidden_states=cond_embeds).sample
        torch.testing.assert_close(record.out_cond[:, 0], direct_cond, rtol=1e-5, atol=1e-5)
        if cfg:
            direct_uncond = pipe.unet(latents, t0, encoder_hidden_states=uncond_embeds).sample
            torch.testing.assert_close(record.out_uncond[:, 0], direct_uncond, rtol=1e-5, atol=1e-5)
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(STEPS)
    for step, t in enumerate(scheduler.timesteps):  # every cached step is diffusers' step on the outputs
        out = record.out_cond[:, step]
        if cfg:
            out = record.out_uncond[:, step] + guidance_scale * (out - record.out_uncond[:, step])
        x_next = scheduler.step(out, t, record.trajectory[:, step]).prev_sample
        torch.testing.assert_close(record.trajectory[:, step + 1], x_next, rtol=1e-5, atol=1e-5)


def test_first_call_only_stops_at_the_first_call_with_its_conditioning(pipe):
    latents = torch.randn((len(PROMPTS), *LATENT_SHAPE), generator=torch.Generator().manual_seed(1))
    calls = []
    handle = pipe.unet.register_forward_hook(lambda *_: calls.append(1))
    try:
        with torch.no_grad(), CaptureHooks(pipe.unet) as hooks:
            hooks.start(len(PROMPTS), True, first_call_only=True)
            record = hooks.run_to_first_call(lambda: run_pipeline(pipe, hooks, 2.0, latents), pipe.scheduler)
            cond_embeds, uncond_embeds = pipe.encode_prompt(PROMPTS, "cpu", 1, True)
    finally:
        handle.remove()
    assert calls == []  # stopped before the denoiser ran
    assert record.trajectory is None and record.out_cond is None and record.out_uncond is None
    assert record.timesteps == [float(t) for t in pipe.scheduler.timesteps]
    torch.testing.assert_close(record.cond["encoder_hidden_states"], cond_embeds, rtol=0, atol=0)
    torch.testing.assert_close(record.uncond["encoder_hidden_states"], uncond_embeds, rtol=0, atol=0)
    assert torch.equal(record.first_call["sample"], torch.cat([latents, latents]))


def test_nothing_is_recorded_outside_start_finish_nor_after_the_block(pipe):
    x = torch.randn((2, *LATENT_SHAPE))
    text = torch.randn((2, 5, 32))
    with torch.no_grad(), CaptureHooks(pipe.unet) as hooks:
        pipe.unet(x, 999, encoder_hidden_states=text)  # before start(): not recorded
        hooks.start(2, cfg=False)
        pipe.unet(x, 999, encoder_hidden_states=text)
        hooks.on_step_end(pipe, 0, 999, {"latents": x})
        record = hooks.finish(x)
        pipe.unet(x, 999, encoder_hidden_states=text)  # after finish(): not recorded either
    assert record.out_cond.shape == (2, 1, *LATENT_SHAPE) and record.timesteps == [999.0]
    with torch.no_grad():
        pipe.unet(x, 999, encoder_hidden_states=text)  # the hooks are gone: no error, no record
    assert len(hooks.outputs) == 1 and not pipe.unet._forward_hooks and not pipe.unet._forward_pre_hooks


def test_a_batch_of_another_size_and_feature_steps_beyond_the_run_are_refused(pipe):
    x = torch.randn((2, *LATENT_SHAPE))
    text = torch.randn((2, 5, 32))
    with torch.no_grad(), CaptureHooks(pipe.unet) as hooks:
        hooks.start(batch_size=2, cfg=True)  # expects 4 rows
        with pytest.raises(DistillCacheError, match="a batch of 2 for 2 prompts \\(with CFG\\); expected 4"):
            pipe.unet(x, 999, encoder_hidden_states=text)
        hooks.start(batch_size=1, cfg=False)  # expects 1 row
        with pytest.raises(
            DistillCacheError, match="a batch of 2 for 1 prompts \\(without CFG\\); expected 1"
        ):
            pipe.unet(x, 999, encoder_hidden_states=text)
    block = pipe.unet.get_submodule("mid_block")
    with torch.no_grad(), CaptureHooks(pipe.unet, {"mid_block": block}, feature_steps=(0, 1)) as hooks:
        hooks.start(batch_size=2, cfg=False)
        pipe.unet(x, 999, encoder_hidden_states=text)
        hooks.on_step_end(pipe, 0, 999, {"latents": x})
        with pytest.raises(DistillCacheError, match="features of mid_block were seen at 1 of the 2"):
            hooks.finish(x)
    with CaptureHooks(pipe.unet) as hooks:
        hooks.start(batch_size=2, cfg=False)
        with pytest.raises(DistillCacheError, match="^the pipeline ran no denoising step; check --steps$"):
            hooks.finish(x)
        hooks.start(batch_size=2, cfg=False, first_call_only=True)
        with pytest.raises(
            DistillCacheError, match="^the pipeline never called its denoiser; check --steps$"
        ):
            hooks.run_to_first_call(lambda: None, pipe.scheduler)


def test_nested_conditioning_is_flattened_with_dotted_names():
    time_ids, text_embeds, inner = torch.ones(2, 6), torch.zeros(2, 8), torch.full((2,), 3.0)
    flat = flat_tensor_kwargs(
        {
            "encoder_hidden_states": torch.ones(2, 5),
            "added_cond_kwargs": {
                "time_ids": time_ids,
                "text_embeds": text_embeds,
                "deeper": {"inner": inner},
            },
            "return_dict": False,
            "cross_attention_kwargs": None,
        }
    )
    assert list(flat) == [
        "encoder_hidden_states",
        "added_cond_kwargs.time_ids",
        "added_cond_kwargs.text_embeds",
        "added_cond_kwargs.deeper.inner",
    ]
    assert flat["added_cond_kwargs.time_ids"] is time_ids and flat["added_cond_kwargs.deeper.inner"] is inner


def test_a_second_call_names_the_denoiser_class_and_the_step(pipe):
    x, text = torch.randn((2, *LATENT_SHAPE)), torch.randn((2, 5, 32))
    with torch.no_grad(), CaptureHooks(pipe.unet) as hooks:
        hooks.start(batch_size=2, cfg=False)
        pipe.unet(x, 999, encoder_hidden_states=text)
        hooks.on_step_end(pipe, 0, 999, {"latents": x})
        pipe.unet(x, 981, encoder_hidden_states=text)
        with pytest.raises(
            DistillCacheError, match="^the pipeline called UNet2DConditionModel twice in step 1;"
        ):
            pipe.unet(x, 981, encoder_hidden_states=text)


class SharedInputsDenoiser(torch.nn.Module):
    """A denoiser taking, besides per-sample tensors, tensors shared by the batch (as Flux's img_ids)."""

    def forward(
        self, sample, timestep, encoder_hidden_states=None, img_ids=None, scale=None, added_cond_kwargs=None
    ):
        return sample * 2


def test_tensors_shared_by_the_batch_are_not_part_of_a_row():
    denoiser = SharedInputsDenoiser()
    x, context = torch.randn((4, 3)), torch.arange(8.0).reshape(4, 2)
    with CaptureHooks(denoiser) as hooks:
        hooks.start(batch_size=2, cfg=True)
        denoiser(
            x,
            torch.tensor(5.0),
            img_ids=torch.zeros(7, 3),  # before and after the per-sample tensors: every one is looked at
            scale=torch.tensor(0.5),
            encoder_hidden_states=context,
            added_cond_kwargs={"text_embeds": context + 1, "ids": torch.zeros(3)},
        )
    assert (
        list(hooks.cond) == list(hooks.uncond) == ["encoder_hidden_states", "added_cond_kwargs.text_embeds"]
    )
    assert torch.equal(hooks.cond["added_cond_kwargs.text_embeds"], context[2:] + 1)
    assert torch.equal(hooks.cond["encoder_hidden_states"], context[2:])  # [uncond; cond]
    assert torch.equal(hooks.uncond["encoder_hidden_states"], context[:2])
    assert torch.equal(hooks.outputs[0][0], 2 * x[2:]) and torch.equal(hooks.outputs[0][1], 2 * x[:2])


def test_a_scheduler_without_an_order_is_first_order_and_order_two_is_refused():
    check_first_order(SimpleNamespace())  # no `order` attribute: one call per step
    check_first_order(SimpleNamespace(order=1))
    with pytest.raises(DistillCacheError) as refused:
        check_first_order(SimpleNamespace(order=2))
    assert str(refused.value) == (  # the fix, in one line
        "the teacher's scheduler SimpleNamespace is of order 2 (several denoiser calls per step); capture "
        "needs a first-order one: save the pipeline with pipe.scheduler = "
        "DDIMScheduler.from_config(pipe.scheduler.config) (or Euler / FlowMatchEuler) and capture that"
    )
