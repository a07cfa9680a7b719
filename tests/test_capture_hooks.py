"""The capture hooks: features are the cond half's (an SD3 joint block's: its image stream), and a denoiser called twice in one step (Heun,
skip-layer guidance) is refused at the second call, as is a step that made no call."""

import pytest
import torch
from diffusers import HeunDiscreteScheduler, StableDiffusionPipeline

from shared.errors import DistillCacheError
from shared.store import StoreReader
from student_train.students.block_outputs import BlockOutputs
from student_train.students.denoiser import call_denoiser, load_denoiser, nest_conditioning
from teacher_cache.capture import CaptureHooks
from teacher_cache.runner import run
from tests.capture_helpers import tiny_capture_config, write_prompts
from tests.student_store_fixture import one_torch_thread  # noqa: F401 (autouse)
from tests.tiny_models import (
    LATENT_SHAPE,
    save_tiny_pipeline,
    save_tiny_sd_pipeline,
    tiny_sd3_pipeline,
    tiny_unet,
)


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


def test_sd3_joint_block_features_are_the_image_stream(tmp_path):
    """An SD3 JointTransformerBlock returns (encoder_hidden_states, hidden_states) (diffusers'
    models/attention.py; the last block: (None, hidden_states)): the store keeps the image stream,
    and phase two's block hooks (blockkd) read the same stream from a student."""
    teacher = save_tiny_pipeline(tiny_sd3_pipeline, tmp_path / "sd3")
    prompts = write_prompts(tmp_path, ["a red one on blue", "a blue two on red"])
    config = tiny_capture_config(
        tmp_path / "store", teacher, prompts, features=("transformer_blocks.*",), feature_steps=(1,)
    )
    run(config)
    reader = StoreReader(config.out)
    settings, rows = reader.settings, list(range(len(reader)))
    names = [f"transformer_blocks.{i}" for i in range(2)]
    assert sorted(settings["feature_modules"]) == names
    transformer = load_denoiser(str(teacher), settings["denoiser"])
    x_t = reader.read("trajectory", rows, steps=[1])[:, 0]  # the latents entering step 1
    t = torch.full((len(rows),), settings["timesteps"][1])
    cond = nest_conditioning({name: reader.read(f"cond.{name}", rows) for name in settings["conditioning"]})
    image_stream, text_stream = {}, {}

    def keep_streams(name):
        def hook(module, args, output):  # as SD3Transformer2DModel.forward unpacks a block's output
            text_stream[name], image_stream[name] = output

        return hook

    for name in names:
        transformer.get_submodule(name).register_forward_hook(keep_streams(name))
    # the image stream leaving the last block is what norm_out receives
    transformer.norm_out.register_forward_pre_hook(
        lambda m, args: image_stream.__setitem__("norm_out", args[0])
    )
    with torch.no_grad(), BlockOutputs(transformer, {name: name for name in names}) as student_outputs:
        call_denoiser(transformer, x_t, t, cond)
    assert text_stream[names[-1]] is None  # context_pre_only: the last block has no text stream
    torch.testing.assert_close(image_stream[names[-1]], image_stream["norm_out"])
    latent_tokens = settings["latent_shape"][1] * settings["latent_shape"][2]  # patch size 1
    for name in names:
        stored = reader.read(f"features.{name}", rows)[:, 0]  # (B, tokens, dim), float16
        assert stored.shape == (len(rows), latent_tokens, 16)
        torch.testing.assert_close(stored, image_stream[name].half(), rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(student_outputs[name], image_stream[name])
