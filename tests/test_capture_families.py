"""Capture on every family, through the store: the cached conditioning replayed into the denoiser gives
the cached outputs back (at every trajectory step and at every noised point), and stepping the
scheduler from the cached noise with the cached outputs gives the cached trajectory back (SD epsilon,
SD v_prediction, SDXL, SD3 flow matching)."""

import diffusers
import pytest
import torch

from shared.store import StoreReader
from student_train.students.denoiser import call_denoiser, load_denoiser, nest_conditioning
from teacher_cache.runner import run
from tests.capture_helpers import tiny_capture_config, write_prompts
from tests.tiny_models import save_tiny_pipeline, save_tiny_sd_pipeline, tiny_sd3_pipeline, tiny_sdxl_pipeline

STEPS = 4
GUIDANCE = 4.0
FAMILIES = {
    "sd_epsilon": lambda folder: save_tiny_sd_pipeline(folder, "epsilon"),
    "sd_v_prediction": lambda folder: save_tiny_sd_pipeline(folder, "v_prediction"),
    "sdxl": lambda folder: save_tiny_pipeline(tiny_sdxl_pipeline, folder),
    "sd3_flow": lambda folder: save_tiny_pipeline(tiny_sd3_pipeline, folder),
}
EXPECTED_CONDITIONING = {
    "sd_epsilon": ["encoder_hidden_states"],
    "sd_v_prediction": ["encoder_hidden_states"],
    "sdxl": ["encoder_hidden_states", "added_cond_kwargs.text_embeds", "added_cond_kwargs.time_ids"],
    "sd3_flow": ["encoder_hidden_states", "pooled_projections"],
}


def capture_family(tmp_path, family: str, **overrides) -> tuple[str, StoreReader]:
    teacher = FAMILIES[family](tmp_path / family)
    prompts = write_prompts(tmp_path, ["a red one on blue", "a blue two on red"])
    settings = dict(steps=STEPS, guidance=GUIDANCE) | overrides
    config = tiny_capture_config(tmp_path / "store", teacher, prompts, **settings)
    run(config)
    return str(teacher), StoreReader(config.out)


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_conditioning_replays_and_scheduler_retraces_trajectory(tmp_path, family):
    teacher, reader = capture_family(tmp_path, family)
    settings, rows = reader.settings, list(range(reader.manifest.num_rows))
    assert len(rows) == 2 and sorted(settings["conditioning"]) == sorted(EXPECTED_CONDITIONING[family])
    denoiser = load_denoiser(teacher, settings["denoiser"])  # as phase two loads it: the denoiser alone
    scheduler = getattr(diffusers, settings["scheduler"]["class"]).from_config(
        settings["scheduler"]["config"]
    )
    scheduler.set_timesteps(STEPS)
    torch.testing.assert_close(scheduler.timesteps.float(), torch.tensor(settings["timesteps"]))

    noise, trajectory = (
        reader.read("noise", rows),
        reader.read("trajectory", rows),
    )  # (2, C, H, W), (2, S+1, C, H, W)
    out_cond, out_uncond = reader.read("out_cond", rows), reader.read("out_uncond", rows)  # (2, S, C, H, W)
    assert trajectory.shape == (2, STEPS + 1, *settings["latent_shape"])
    torch.testing.assert_close(trajectory[:, 0], noise * settings["init_noise_sigma"])
    torch.testing.assert_close(reader.read("final_latents", rows), trajectory[:, -1])
    assert reader.read("preview", rows).shape == (2, 8, 8, 3)
    halves = {
        half: nest_conditioning(
            {name: reader.read(f"{half}.{name}", rows) for name in settings["conditioning"]}
        )
        for half in ("cond", "uncond")
    }
    scale_model_input = getattr(scheduler, "scale_model_input", lambda sample, t: sample)
    latents = trajectory[:, 0]
    for step, t in enumerate(scheduler.timesteps):
        model_input = scale_model_input(trajectory[:, step], t)
        timesteps = torch.full((2,), float(t))
        for half, expected in (("cond", out_cond), ("uncond", out_uncond)):
            replayed = call_denoiser(denoiser, model_input, timesteps, halves[half])
            torch.testing.assert_close(replayed, expected[:, step], rtol=1e-4, atol=1e-4)
        guided = out_uncond[:, step] + GUIDANCE * (out_cond[:, step] - out_uncond[:, step])
        latents = scheduler.step(guided, t, latents).prev_sample
        torch.testing.assert_close(latents, trajectory[:, step + 1], rtol=1e-4, atol=1e-4)
    # noised points (default fields): each stored x_t at its own timestep replays to the stored outputs
    noised_x_t, noised_t = reader.read("noised.x_t", rows), reader.read("noised.timestep", rows)
    for m in range(noised_x_t.shape[1]):
        for half in ("cond", "uncond"):
            replayed = call_denoiser(denoiser, noised_x_t[:, m], noised_t[:, m], halves[half])
            expected = reader.read(f"noised.out_{half}", rows)[:, m]
            torch.testing.assert_close(replayed, expected, rtol=1e-4, atol=1e-4)


def test_without_cfg_only_the_cond_half_is_stored(tmp_path):
    _, reader = capture_family(tmp_path, "sd_epsilon", guidance=1.0, fields=("noise", "out", "cond"))
    assert set(reader.fields) == {"noise", "out_cond", "cond.encoder_hidden_states"}
    assert reader.settings["cfg"] is False


def test_features_of_chosen_blocks_at_chosen_steps(tmp_path):
    _, reader = capture_family(
        tmp_path,
        "sd_epsilon",
        features=("down_blocks.*", "mid_block"),
        feature_steps=(0, 3),
        fields=("features",),
    )
    assert sorted(reader.fields) == ["features.down_blocks.0", "features.down_blocks.1", "features.mid_block"]
    assert reader.settings["feature_steps"] == [0, 3]
    mid = reader.read("features.mid_block", [0, 1])  # (2, F=2, 32, 4, 4), float16
    assert mid.shape == (2, 2, 32, 4, 4) and mid.dtype == torch.float16
    assert not torch.equal(mid[:, 0], mid[:, 1])  # two different steps
