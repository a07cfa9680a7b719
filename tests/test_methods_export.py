"""guidance, tcd and reflow students load into a stock StableDiffusionPipeline with their own scheduler
and sample as their method says, checked against hand-written samplers; eval's sampler gives the
same latents as the stock pipeline.

- guidance: one UNet pass per step (no CFG doubling), the w-embedding of guidance_scale - 1;
- tcd: TCDScheduler's strategic stochastic sampling with eta = gamma, per-sample noise;
- reflow: Euler on the straight line through the flow DPM-Solver, on a DDPM teacher's pipeline.
"""

import json

import pytest
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel

import student_train.training.loop as training_loop
from shared.errors import DistillCacheError
from shared.schedule import NoiseSchedule
from student_train.data.randomness import SampleRandom
from student_train.eval.generation import student_latents
from student_train.eval.models import Models
from student_train.export import load_exported_student
from student_train.sampling import load_student_scheduler
from tests.student_store_fixture import (  # noqa: F401 (autouse)
    capture_batch,
    one_torch_thread,
    shared_capture,
    tiny_train_config,
)

ROWS = [0, 1]


def train_tiny(store, out, **overrides) -> dict:
    """Two updates at lr 1e-2 (enough to move every weight), then the exported distill.json."""
    training_loop.train(tiny_train_config(store, out, train_steps=2, lr=1e-2, lora_alpha=8, **overrides))
    return json.loads((out / "distill.json").read_text())


@pytest.fixture(scope="module")
def students(store, tmp_path_factory):
    """Each exported student, trained once for the module: name -> (folder, distill.json)."""
    root = tmp_path_factory.mktemp("students")
    runs = {
        "guidance": dict(method="guidance", student="full"),
        "tcd_lora": dict(method="tcd", student="lora", tcd_gamma=0.4),
        "tcd_full": dict(method="tcd", student="full", tcd_gamma=0.4),
        "reflow": dict(method="reflow", student="full"),
    }
    return {name: (root / name, train_tiny(store, root / name, **flags)) for name, flags in runs.items()}


def stock_pipeline(student_dir, distill) -> StableDiffusionPipeline:
    teacher_dir = shared_capture().teacher_dir
    scheduler = load_student_scheduler(student_dir)
    if distill["student"] == "lora":
        pipe = StableDiffusionPipeline.from_pretrained(teacher_dir, scheduler=scheduler)
        pipe.load_lora_weights(student_dir)
    else:
        unet = UNet2DConditionModel.from_pretrained(student_dir, subfolder="unet")
        pipe = StableDiffusionPipeline.from_pretrained(teacher_dir, unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def stock_latents(pipe, distill, num_steps, **kwargs) -> torch.Tensor:
    capture = shared_capture()
    return pipe(
        prompt_embeds=capture.arrays["cond.encoder_hidden_states"][ROWS],
        latents=capture.arrays["noise"][ROWS],
        num_inference_steps=num_steps,
        timesteps=distill["sampling"]["timesteps"][str(num_steps)],
        guidance_scale=distill["recommended"]["guidance_scale"],
        output_type="latent",
        **kwargs,
    ).images


def eval_latents(student_dir, distill, num_steps) -> torch.Tensor:
    """What `student-train eval` samples for these rows (student_latents, the sampler of distill.json)."""
    capture = shared_capture()
    batch = capture_batch(capture, ROWS)
    model, _ = load_exported_student(student_dir)
    models = Models(None, None, model, load_student_scheduler(student_dir), distill, None)
    with torch.no_grad():
        return student_latents(
            models, capture.settings, batch.fields["noise"], batch.cond, batch.sample_ids, num_steps
        )


def test_guidance_student_runs_one_pass_per_step_in_the_stock_pipeline(students):
    out, distill = students["guidance"]
    steps = distill["recommended"]["num_inference_steps"]
    assert steps == shared_capture().settings["num_inference_steps"]  # the teacher's step count
    assert distill["recommended"]["guidance_scale"] > 1  # CFG would double the batch without the embedding
    pipe = stock_pipeline(out, distill)
    calls = []
    pipe.unet.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append((args, kwargs)), with_kwargs=True
    )
    latents = stock_latents(pipe, distill, steps)
    assert len(calls) == steps  # one pass per step ...
    assert all(args[0].shape[0] == len(ROWS) for args, _ in calls)  # ... over the batch, not [uncond; cond]
    w = distill["recommended"]["guidance_scale"] - 1
    expected_cond = pipe.get_guidance_scale_embedding(torch.full((len(ROWS),), w), embedding_dim=256)
    torch.testing.assert_close(calls[0][1]["timestep_cond"], expected_cond)
    torch.testing.assert_close(eval_latents(out, distill, steps), latents, rtol=1e-4, atol=1e-4)


def tcd_by_hand(unet, schedule, noise, cond, timesteps, gamma, generators) -> torch.Tensor:
    """TCD's strategic stochastic sampling (Zheng et al. 2024, Alg. 4), written out: from t, the
    student's x0 / eps mapped to s = floor((1 - gamma) t_next), then noised forward to t_next."""
    alphas_cumprod = schedule.alphas_cumprod.float()
    x = noise
    for index, t in enumerate(timesteps):
        t_next = timesteps[index + 1] if index + 1 < len(timesteps) else 0
        s = int((1 - gamma) * t_next)
        eps = unet(x, t, encoder_hidden_states=cond).sample
        x0 = (x - (1 - alphas_cumprod[t]).sqrt() * eps) / alphas_cumprod[t].sqrt()
        x_s = alphas_cumprod[s].sqrt() * x0 + (1 - alphas_cumprod[s]).sqrt() * eps
        if index + 1 == len(timesteps):
            return x_s
        z = torch.stack([torch.randn(x.shape[1:], generator=g) for g in generators])
        ratio = alphas_cumprod[t_next] / alphas_cumprod[s]
        x = ratio.sqrt() * x_s + (1 - ratio).sqrt() * z


@pytest.mark.parametrize("student, num_steps", [("lora", 1), ("lora", 2), ("full", 2)])
def test_tcd_student_samples_with_stock_tcd_scheduler(students, student, num_steps):
    out, distill = students[f"tcd_{student}"]
    assert (
        distill["recommended"]["eta"] == 0.4
        and json.loads((out / "scheduler" / "scheduler_config.json").read_text())["_class_name"]
        == "TCDScheduler"
    )
    pipe = stock_pipeline(out, distill)
    ids = capture_batch(shared_capture(), ROWS).sample_ids
    latents = stock_latents(
        pipe, distill, num_steps, eta=0.4, generator=SampleRandom(0, num_steps, ids).generators
    )
    capture = shared_capture()
    settings = capture.settings
    schedule = NoiseSchedule.from_scheduler_config(settings["scheduler"]["config"])
    if student == "full":  # w-conditioned: the hand loop cannot feed the embedding; eval's loop is checked
        expected = eval_latents(out, distill, num_steps)
    else:
        with torch.no_grad():
            expected = tcd_by_hand(
                pipe.unet,
                schedule,
                capture.arrays["noise"][ROWS],
                capture.arrays["cond.encoder_hidden_states"][ROWS],
                distill["sampling"]["timesteps"][str(num_steps)],
                0.4,
                SampleRandom(0, num_steps, ids).generators,
            )
        torch.testing.assert_close(eval_latents(out, distill, num_steps), latents, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(latents, expected, rtol=1e-4, atol=1e-4)


def test_eval_eta_samples_a_tcd_student_at_another_gamma(students):
    """`student-train eval --eta 0.9` samples the tcd student as the stock pipeline does with eta=0.9
    (not at the exported 0.4); a student whose sampler takes no eta refuses the flag."""
    from student_train.eval.run import with_eta

    out, distill = students["tcd_lora"]
    ids = capture_batch(shared_capture(), ROWS).sample_ids
    stock = {
        eta: stock_latents(
            stock_pipeline(out, distill), distill, 2, eta=eta, generator=SampleRandom(0, 2, ids).generators
        )
        for eta in (0.4, 0.9)
    }
    got = eval_latents(out, with_eta(distill, 0.9, str(out)), 2)
    torch.testing.assert_close(got, stock[0.9], rtol=1e-4, atol=1e-4)
    assert (stock[0.9] - stock[0.4]).abs().max() > 1e-3  # the two gammas sample differently
    assert distill["recommended"]["eta"] == 0.4  # the folder's own distill.json is left as it was
    with pytest.raises(DistillCacheError, match="--eta is TCD's gamma"):
        with_eta(students["guidance"][1], 0.9, "guidance")


@pytest.mark.parametrize("num_steps", [1, 2])
def test_reflow_student_is_euler_on_the_line_in_the_teachers_stock_pipeline(students, num_steps):
    out, distill = students["reflow"]
    assert distill["sampling"]["prediction_type"] == "flow_prediction"
    assert distill["sampling"]["timesteps"][str(num_steps)] is None  # the flow scheduler's own
    pipe = stock_pipeline(out, distill)
    latents = stock_latents(pipe, distill, num_steps)

    capture = shared_capture()
    sigmas = [(1 - 1 / 1000) * (num_steps - k) / num_steps for k in range(num_steps)] + [0.0]
    x = capture.arrays["noise"][ROWS]  # s = 1 - 1/T: the pipeline starts from the pure noise
    with torch.no_grad():
        for sigma, sigma_next in zip(sigmas, sigmas[1:]):
            timestep = int(sigma * 1000)  # the scheduler passes the integer part to the UNet
            velocity = pipe.unet(
                x, timestep, encoder_hidden_states=capture.arrays["cond.encoder_hidden_states"][ROWS]
            ).sample
            x = x + (sigma_next - sigma) * velocity  # Euler on x_s = (1 - s) x0 + s noise
    torch.testing.assert_close(latents, x, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(eval_latents(out, distill, num_steps), latents, rtol=1e-4, atol=1e-4)
    image = pipe(
        "a red seven on blue", num_inference_steps=num_steps, guidance_scale=1.0, output_type="np"
    ).images
    assert image.shape == (1, 16, 16, 3) and torch.isfinite(torch.as_tensor(image)).all()
