"""The embedded flow teacher (`make teacher FAMILY=sd3`): its recipe against the stock
StableDiffusion3Pipeline, a tiny end-to-end run (whose teacher_training.json holds no path of this
machine), and the committed folder.

Run: pytest tests/test_flow_teacher.py   (CPU, seconds; the recipe runs on a tiny architecture)
"""

import copy
import dataclasses
import json
import os

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline
from diffusers.models.attention_processor import JointAttnProcessor2_0
from safetensors.torch import load_file

from shared.digits import make_images
from shared.padding_attention import SD3_PADDING_TOKENS
from shared.teacher import REPO_ROOT, portable_path
from teacher_cache.embedded import DEFAULT_TEACHER_DIR, FLOW_TEACHER_DIR
from teacher_cache.embedded.architecture import FlowTeacherArchitecture, TeacherArchitecture, build_vae
from teacher_cache.embedded.flow_recipe import FlowRecipe
from teacher_cache.embedded.train_teacher import (
    PATH_SETTINGS,
    run,
    teacher_settings,
    tokenize,
)
from teacher_cache.embedded.word_tokenizer import build_word_tokenizer
from tests.student_store_fixture import one_torch_thread  # noqa: F401 (autouse)

# shift 3 (SD3's, not the committed teacher's 1.0) so that the tests see the timestep shift at work
TINY_FLOW = FlowTeacherArchitecture(
    text_dim=16, text_layers=2, text_heads=2, layers=2, heads=2, head_dim=8, shift=3.0
)
PROMPTS = ["a red seven on blue", "", "a white zero on black"]


@pytest.fixture(scope="module")
def recipe_and_pipe(tmp_path_factory):
    """A tiny flow recipe (random weights) and the stock pipeline made of its very modules."""
    tokenizer = build_word_tokenizer(tmp_path_factory.mktemp("tokenizer"))
    torch.manual_seed(0)
    recipe = FlowRecipe(TINY_FLOW, vocab_size=len(tokenizer))
    vae = build_vae(TeacherArchitecture(vae_channels=(8, 8, 8), vae_norm_groups=4))
    vae.register_to_config(shift_factor=0.1, scaling_factor=0.5)
    pipe = recipe.pipeline(vae, tokenizer)
    pipe.set_progress_bar_config(disable=True)
    return recipe, pipe, tokenize(tokenizer, PROMPTS)


def stock_embeds(pipe, prompts):
    """What StableDiffusion3Pipeline.encode_prompt gives without T5: (B, 8 + 256, 32), (B, 32)."""
    with torch.no_grad():
        embeds, _, pooled, _ = pipe.encode_prompt(
            prompts, None, None, device="cpu", do_classifier_free_guidance=False
        )
    return embeds, pooled


def test_prompt_encoding_is_the_pipelines_with_the_padding_folded(recipe_and_pipe):
    recipe, pipe, input_ids = recipe_and_pipe
    embeds, pooled = stock_embeds(pipe, PROMPTS)
    assert embeds.shape == (3, 8 + SD3_PADDING_TOKENS, 2 * TINY_FLOW.text_dim)
    with torch.no_grad():
        ours, ours_pooled = recipe.encode(input_ids)
    assert ours.shape == (3, 8 + 1, 2 * TINY_FLOW.text_dim)
    torch.testing.assert_close(ours[:, :8], embeds[:, :8])
    assert not ours[:, 8:].any() and not embeds[:, 8:].any()  # the padding: zeros, 1 token for 256
    torch.testing.assert_close(ours_pooled, pooled)


def test_training_loss_is_flow_matching_through_the_stock_transformer(recipe_and_pipe):
    """The recipe's loss (1 padding token counted 256 times) against a hand computation with the
    stock attention on the pipeline's own 256 zero tokens, diffusers' shift, x_t = (1-s) x0 + s eps."""
    recipe, pipe, input_ids = recipe_and_pipe
    latents = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = recipe.loss(latents, input_ids, torch.Generator().manual_seed(2))

    generator = torch.Generator().manual_seed(2)  # the recipe's draws: the noise, then u
    noise = torch.randn(latents.shape, generator=generator)
    u = torch.sigmoid(torch.randn(3, generator=generator))
    shifted = FlowMatchEulerDiscreteScheduler(shift=TINY_FLOW.shift)
    shifted.set_timesteps(sigmas=u.tolist())  # diffusers applies its shift to custom sigmas
    sigma = shifted.sigmas[:-1]
    x_t = (1 - sigma).view(-1, 1, 1, 1) * latents + sigma.view(-1, 1, 1, 1) * noise
    stock = copy.deepcopy(recipe.transformer)
    stock.set_attn_processor(JointAttnProcessor2_0())
    embeds, pooled = stock_embeds(pipe, PROMPTS)
    with torch.no_grad():
        velocity = stock(
            x_t, encoder_hidden_states=embeds, pooled_projections=pooled, timestep=shifted.timesteps
        ).sample
    expected = (velocity - (noise - latents)).square().flatten(1).mean(1)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_make_teacher_sd3_writes_a_folder_the_stock_pipeline_loads(tmp_path):
    settings = teacher_settings(
        "sd3", out=str(tmp_path / "flow"), pool_size=64, denoiser_steps=3, denoiser_batch_size=8,
        warmup_steps=1, save_every=0, log_every=1, device="cpu", architecture=TINY_FLOW,
        vae_source=str(DEFAULT_TEACHER_DIR),  # an absolute path, as a user may give it
    )  # fmt: skip
    out = run(settings)
    record = json.loads((out / "teacher_training.json").read_text())
    assert len(record["denoiser_loss_history"]) == 3 and record["settings"]["family"] == "sd3"
    # no path of this machine in the record: the embedded VAE by its logical name, the out folder by its name
    assert (
        record["settings"]["vae_source"] == "embedded:default_teacher" and record["settings"]["out"] == "flow"
    )
    assert not [value for value in json_strings(record) if os.path.isabs(value) or str(tmp_path) in value]
    assert (
        json.loads((out / "vae" / "config.json").read_text())["_name_or_path"] == "embedded:default_teacher"
    )
    pipe = StableDiffusion3Pipeline.from_pretrained(out, text_encoder_3=None, tokenizer_3=None)
    assert pipe.scheduler.config.shift == TINY_FLOW.shift
    # the default teacher's VAE, reused: same weights, latents normalised to mean 0, std 1 (SD3's convention)
    default_vae = load_file(str(DEFAULT_TEACHER_DIR / "vae" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(default_vae[k], v) for k, v in pipe.vae.state_dict().items())
    images = (
        torch.as_tensor(make_images(64, seed=0, split="train")[0]).permute(0, 3, 1, 2).float() / 127.5 - 1
    )
    with torch.no_grad():
        latents = pipe.vae.encode(images).latent_dist.mean
    normalised = (latents - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor
    assert abs(normalised.mean().item()) < 0.1 and 0.8 < normalised.std().item() < 1.2
    pipe.set_progress_bar_config(disable=True)
    image = pipe(["a red seven on blue"], num_inference_steps=2, guidance_scale=3.0, output_type="np").images
    assert image.shape == (1, 32, 32, 3)


def json_strings(value) -> list[str]:
    """Every string in a JSON value, keys included."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [*value] + [s for v in value.values() for s in json_strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in json_strings(v)]
    return []


def test_path_settings_are_recorded_without_this_machines_paths(tmp_path):
    assert portable_path("") == ""
    assert portable_path(str(FLOW_TEACHER_DIR)) == "embedded:flow_teacher"
    assert portable_path("embedded:default_teacher") == "embedded:default_teacher"
    assert portable_path(str(REPO_ROOT / "tests")) == "tests"  # a folder in the repository: relative to it
    assert portable_path(str(tmp_path)) == tmp_path.name  # elsewhere: its name only
    assert portable_path("org/some-vae") == "org/some-vae"  # a Hub id
    assert portable_path("/no/such/folder") == "folder"


@pytest.mark.parametrize("teacher", [DEFAULT_TEACHER_DIR, FLOW_TEACHER_DIR])
def test_committed_teachers_record_no_absolute_path(teacher):
    records = [
        json.loads((teacher / name).read_text()) for name in ("teacher_training.json", "teacher_eval.json")
    ]
    assert not [value for record in records for value in json_strings(record) if os.path.isabs(value)]
    record = records[0]
    settings = record["settings"]
    assert all(settings[name] == portable_path(settings[name]) for name in PATH_SETTINGS if name in settings)
    configs = [json.loads(path.read_text()) for path in teacher.glob("*/config.json")]
    assert configs and not [c["_name_or_path"] for c in configs if os.path.isabs(c.get("_name_or_path", ""))]


def test_family_defaults_and_flags():
    from teacher_cache.embedded.train_teacher import parse_settings

    settings = parse_settings(["--family", "sd3", "--denoiser-steps", "7"])
    assert settings.family == "sd3" and settings.denoiser_steps == 7
    assert settings.vae_source == "embedded:default_teacher" and isinstance(
        settings.architecture, FlowTeacherArchitecture
    )
    assert (
        dataclasses.replace(parse_settings([]), out="").family == "sd" and parse_settings([]).vae_source == ""
    )


def test_committed_flow_teacher_is_small_and_loads_in_the_stock_pipeline():
    files = [p for p in FLOW_TEACHER_DIR.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 20 * 2**20
    weights = [p.name for p in files if p.suffix in (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl")]
    assert weights and all(name.endswith(".safetensors") for name in weights)
    pipe = StableDiffusion3Pipeline.from_pretrained(FLOW_TEACHER_DIR, text_encoder_3=None, tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    trained_shift = json.loads((FLOW_TEACHER_DIR / "teacher_training.json").read_text())["settings"][
        "architecture"
    ]["shift"]
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler)
    assert pipe.scheduler.config.shift == trained_shift  # sampled with the shift it was trained with
    recommended = json.loads((FLOW_TEACHER_DIR / "teacher_eval.json").read_text())[
        "recommended_guidance_scale"
    ]
    latents = pipe(
        ["a red seven on blue"], num_inference_steps=2, guidance_scale=recommended, output_type="latent"
    ).images
    assert latents.shape == (1, 4, 8, 8)
