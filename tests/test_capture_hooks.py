"""The capture hooks: features are the cond half's, and a denoiser called twice in one step (Heun,
skip-layer guidance) is refused at the second call, as is a step that made no call."""

import pytest
import torch
from diffusers import HeunDiscreteScheduler, StableDiffusionPipeline

from shared.errors import DistillCacheError
from shared.store import StoreReader
from student_train.students.denoiser import load_denoiser
from teacher_cache.capture import CaptureHooks
from teacher_cache.runner import run
from tests.capture_helpers import tiny_capture_config, write_prompts
from tests.student_store_fixture import one_torch_thread  # noqa: F401 (autouse)
from tests.tiny_models import LATENT_SHAPE, save_tiny_sd_pipeline, tiny_unet


def test_features_are_the_cond_halfs_block_outputs(tmp_path):
    teacher = save_tiny_sd_pipeline(tmp_path / "sd")
    prompts = write_prompts(tmp_path, ["a red one on blue", "a blue two on red"])
    config = tiny_capture_config(
        tmp_path / "store", teacher, prompts, features=("down_blocks.1", "mid_block"), feature_steps=(0,)
    )
    run(config)
    reader = StoreReader(config.out)
    rows = list(range(len(reader)))
    x_t = reader.read("trajectory", rows, steps=[0])[:, 0]  # the latents entering step 0
    t = torch.full((len(rows),), reader.settings["timesteps"][0])
    unet = load_denoiser(str(teacher))
    seen = {}
    for name in ("down_blocks.1", "mid_block"):
        module = unet.get_submodule(name)
        module.register_forward_hook(lambda m, a, out, name=name: seen.__setitem__(name, out))
    for half in ("cond", "uncond"):
        with torch.no_grad():
            unet(x_t, t, encoder_hidden_states=reader.read(f"{half}.encoder_hidden_states", rows))
        outputs = {
            name: (value[0] if isinstance(value, tuple) else value).half() for name, value in seen.items()
        }
        for name, output in outputs.items():
            stored = reader.read(f"features.{name}", rows)[:, 0]
            if half == "cond":
                torch.testing.assert_close(stored, output, rtol=1e-3, atol=1e-3)
            else:
                assert not torch.allclose(stored.float(), output.float(), atol=1e-3)


def test_a_second_denoiser_call_in_one_step_is_refused_at_once():
    unet = tiny_unet()
    x = torch.randn(2, *LATENT_SHAPE)
    text = torch.randn(2, 16, 32)
    with CaptureHooks(unet) as hooks, torch.no_grad():
        hooks.start(batch_size=1, cfg=True)
        unet(x, 999, encoder_hidden_states=text)
        with pytest.raises(DistillCacheError, match="twice in step 0"):
            unet(x, 999, encoder_hidden_states=text)


def test_a_step_without_a_denoiser_call_is_refused():
    with CaptureHooks(tiny_unet()) as hooks:
        hooks.start(batch_size=1, cfg=True)
        with pytest.raises(DistillCacheError, match="made 0 denoiser calls"):
            hooks.on_step_end(None, 0, 999, {"latents": torch.zeros(1, *LATENT_SHAPE)})


def test_a_second_order_scheduler_pipeline_is_refused_end_to_end(tmp_path, capsys):
    teacher = save_tiny_sd_pipeline(tmp_path / "sd")
    pipe = StableDiffusionPipeline.from_pretrained(teacher)
    pipe.scheduler = HeunDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.save_pretrained(tmp_path / "heun")
    config = tiny_capture_config(
        tmp_path / "store", tmp_path / "heun", write_prompts(tmp_path, ["a red one"])
    )
    with pytest.raises(DistillCacheError, match="HeunDiscreteScheduler is of order 2"):
        run(config)
    assert not (tmp_path / "store" / "manifest").exists()
