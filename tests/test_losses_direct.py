"""direct loss and the shared sampler: parity with the teacher's own loop, gradients through K steps."""

import torch

from shared.schedule import NoiseSchedule
from student_train.data.randomness import SampleRandom
from student_train.losses.direct import DirectLoss
from student_train.losses.distance import Distance
from student_train.sampling import sample, student_timesteps
from student_train.students import Student
from student_train.students.denoiser import call_denoiser, load_denoiser
from tests.student_store_fixture import capture_batch, one_torch_thread, shared_capture  # noqa: F401 (autouse)


def schedule_of(settings) -> NoiseSchedule:
    return NoiseSchedule.from_scheduler_config(
        settings["scheduler"]["config"], settings["scheduler"]["class"]
    )


def test_sampler_with_the_guided_teacher_reproduces_the_cached_final_latents():
    capture = shared_capture()
    unet = load_denoiser(str(capture.teacher_dir))
    batch = capture_batch(capture)
    uncond = {"encoder_hidden_states": capture.arrays["uncond.encoder_hidden_states"]}
    guidance = capture.settings["guidance_scale"]

    def guided_teacher(x_t, timesteps, cond, guidance_w=None):
        out_cond, out_uncond = (
            call_denoiser(unet, x_t, timesteps, cond),
            call_denoiser(unet, x_t, timesteps, uncond),
        )
        return out_uncond + guidance * (out_cond - out_uncond)

    with torch.no_grad():
        latents = sample(
            guided_teacher,
            schedule_of(capture.settings),
            batch.fields["noise"],
            batch.cond,
            [float(t) for t in capture.settings["timesteps"]],
            "epsilon",
        )
    torch.testing.assert_close(latents, batch.fields["final_latents"], rtol=1e-3, atol=1e-3)


def test_direct_timesteps_are_trailing_ddim():
    assert student_timesteps("direct", 4, shared_capture().settings) == [999.0, 749.0, 499.0, 249.0]


def test_gradients_flow_through_every_step_and_checkpointing_changes_nothing():
    capture = shared_capture()
    settings = capture.settings
    batch = capture_batch(capture, [0, 1, 2])
    timesteps = student_timesteps("direct", 3, settings)
    results = []
    for checkpoint_steps in (False, True):
        model = load_denoiser(str(capture.teacher_dir)).requires_grad_(True)
        student = Student("full", model, None, 0.95)
        loss_fn = DirectLoss(schedule_of(settings), timesteps, "epsilon", Distance("l2"), checkpoint_steps)
        loss = loss_fn(student, batch, SampleRandom(0, 0, batch.sample_ids), step=0)
        loss.mean().backward()
        grad = model.conv_in.weight.grad.clone()  # the first layer: reached from every step
        results.append((loss.detach(), grad))
    assert results[0][0].shape == (3,) and (results[0][0] > 0).all()
    assert results[0][1].abs().sum() > 0
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-4, atol=1e-6)
