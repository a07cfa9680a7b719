"""The direct loss against a value computed by hand: a student that predicts eps = 0 makes every DDIM
step scale x by alpha_s / alpha_t, so its K-step output is noise * alpha_end / alpha_first, and the
l2 loss must be the mean squared distance of that to the cached *final latents* (not to the noise)."""

import torch
from diffusers import DDIMScheduler

from shared.schedule import NoiseSchedule
from student_train.data.randomness import SampleRandom
from student_train.losses.direct import DirectLoss
from student_train.losses.distance import Distance
from tests.student_store_fixture import capture_batch, one_torch_thread, shared_capture  # noqa: F401 (autouse)


class ZeroEpsStudent:
    w_conditioned = False

    def denoise(self, x_t, timesteps, cond, guidance_w=None):
        return torch.zeros_like(x_t)


def test_direct_loss_is_the_distance_of_the_students_output_to_the_final_latents():
    capture = shared_capture()
    settings = capture.settings
    batch = capture_batch(capture)
    timesteps = [999.0, 499.0]
    loss = DirectLoss(
        NoiseSchedule.from_scheduler_config(settings["scheduler"]["config"], settings["scheduler"]["class"]),
        timesteps,
        "epsilon",
        Distance("l2"),
    )(ZeroEpsStudent(), batch, SampleRandom(0, 0, batch.sample_ids), step=0)

    # by hand, from diffusers' own alphas: x_end = noise * sqrt(final alpha_cumprod) / sqrt(alpha_cumprod[999])
    ddim = DDIMScheduler.from_config(settings["scheduler"]["config"])
    ratio = (ddim.final_alpha_cumprod / ddim.alphas_cumprod[999]).sqrt()
    student_output = batch.fields["noise"] * ratio
    expected = (student_output - batch.fields["final_latents"]).square().flatten(1).mean(1)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    wrong_target = (student_output - batch.fields["noise"]).square().flatten(1).mean(1)
    assert (expected - wrong_target).abs().min() > 1e-3  # the test can tell the two targets apart
