"""The exported student folder loads into a stock StableDiffusionPipeline with its own scheduler,
samples, and gives exactly what student_train.sampling gives from the cached noise and conditioning."""

import json
import re

import pytest
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel

import student_train.training.loop as training_loop
from shared.schedule import NoiseSchedule
from student_train.config import TrainConfig
from student_train.data.randomness import SampleRandom
from student_train.export import load_exported_student
from student_train.sampling import load_student_scheduler, sample
from tests.student_store_fixture import (
    capture_batch,
    shared_capture,
    teacher_denoiser,  # noqa: F401 (autouse)
    tiny_train_config,
)  # noqa: F401 (autouse)


def train_tiny(store, out, **overrides):
    """Two updates at lr 1e-2 (enough to move every adapter), then the exported distill.json."""
    training_loop.train(tiny_train_config(store, out, train_steps=2, lr=1e-2, lora_alpha=8, **overrides))
    return json.loads((out / "distill.json").read_text())


def stock_pipeline(student_dir, distill) -> StableDiffusionPipeline:
    teacher_dir = shared_capture().teacher_dir
    if distill["student"] == "lora":
        pipe = StableDiffusionPipeline.from_pretrained(
            teacher_dir, scheduler=load_student_scheduler(student_dir)
        )
        pipe.load_lora_weights(student_dir)
    else:
        unet = UNet2DConditionModel.from_pretrained(student_dir, subfolder="unet")
        pipe = StableDiffusionPipeline.from_pretrained(
            teacher_dir, unet=unet, scheduler=load_student_scheduler(student_dir)
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def ours(student_dir, distill, num_steps: int, rows) -> torch.Tensor:
    capture = shared_capture()
    settings = capture.settings
    model, _ = load_exported_student(student_dir)
    batch = capture_batch(capture, rows)
    schedule = NoiseSchedule.from_scheduler_config(
        settings["scheduler"]["config"], settings["scheduler"]["class"]
    )
    sampling = distill["sampling"]
    guidance_w = None if sampling["guidance_w"] is None else torch.full((len(rows),), sampling["guidance_w"])

    def denoise(x_t, timesteps, cond, w=None):
        from student_train.students.denoiser import call_denoiser

        return call_denoiser(model, x_t, timesteps, cond, w)

    with torch.no_grad():
        return sample(
            denoise,
            schedule,
            batch.fields["noise"],
            batch.cond,
            sampling["timesteps"][str(num_steps)],
            sampling["prediction_type"],
            sampling["sampler"],
            SampleRandom(0, 0, batch.sample_ids),
            guidance_w,
        )


@pytest.mark.parametrize(
    "method, student, num_steps",
    [("lcm", "full", 1), ("lcm", "lora", 1), ("direct", "lora", 2), ("direct", "full", 2)],
)
def test_stock_pipeline_matches_our_sampler(store, tmp_path, method, student, num_steps):
    out = tmp_path / f"{method}_{student}"
    distill = train_tiny(store, out, method=method, student=student)
    pipe = stock_pipeline(out, distill)
    capture, rows = shared_capture(), [0, 1]
    latents = pipe(
        prompt_embeds=capture.arrays["cond.encoder_hidden_states"][rows],
        latents=capture.arrays["noise"][rows],
        num_inference_steps=num_steps,
        guidance_scale=distill["recommended"]["guidance_scale"],
        output_type="latent",
    ).images
    torch.testing.assert_close(latents, ours(out, distill, num_steps, rows), rtol=1e-4, atol=1e-4)


def test_progressive_student_samples_in_a_stock_pipeline_from_a_prompt(store, tmp_path):
    out = tmp_path / "progressive"
    distill = train_tiny(store, out, method="progressive", student="full")
    assert (out / "scheduler" / "scheduler_config.json").exists()
    pipe = stock_pipeline(out, distill)
    image = pipe(
        "a red seven on blue",
        timesteps=distill["recommended"]["timesteps"],
        guidance_scale=distill["recommended"]["guidance_scale"],
        output_type="np",
    ).images
    assert image.shape == (1, 16, 16, 3) and torch.isfinite(torch.as_tensor(image)).all()


def without_adapter_name(name: str) -> str:
    """x.lora_B.default_0.weight -> x.lora_B.weight (the saved key, without the "unet." prefix)."""
    return re.sub(r"\.default(_\d+)?\.", ".", name)


def test_lora_export_reloads_every_adapter_with_its_trained_values(store, tmp_path):
    from safetensors.torch import load_file

    from student_train.students import build_lora

    out = tmp_path / "lora"
    distill = train_tiny(store, out, method="lcm", student="lora")
    trained = build_lora(teacher_denoiser(), TrainConfig(store, str(out), lora_rank=4), False)
    adapted = {without_adapter_name(name) for name, _ in trained.model.named_parameters() if "lora_B" in name}
    saved = load_file(str(out / "pytorch_lora_weights.safetensors"))
    for model in (load_exported_student(out)[0], stock_pipeline(out, distill).unet):
        reloaded = {without_adapter_name(name): value for name, value in model.named_parameters()}
        assert {name for name in reloaded if "lora_B" in name} == adapted  # attention, ff and conv adapters
        for name in adapted:
            assert torch.equal(reloaded[name], saved["unet." + name]), name
    assert any(
        saved[k].abs().sum() > 0 for k in saved if "attn1.to_q.lora_B" in k
    )  # trained, not the zero init
