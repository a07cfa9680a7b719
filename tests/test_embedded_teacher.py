"""The embedded default teacher: tokenizer, training recipe, committed folder.

Run: pytest tests/test_embedded_teacher.py   (CPU, seconds; the recipe runs on a tiny architecture)
"""

import dataclasses

import pytest
import torch
from diffusers import StableDiffusionPipeline

from shared.digits import make_images
from teacher_cache.embedded import DEFAULT_TEACHER_DIR
from teacher_cache.embedded.architecture import TeacherArchitecture, build_vae
from teacher_cache.embedded.sd_recipe import SdRecipe, denoiser_loss
from teacher_cache.embedded.train_teacher import (
    TeacherSettings,
    images_to_tensor,
    run,
    tokenize,
    train_denoiser,
    train_vae,
    vae_loss,
)
from teacher_cache.embedded.word_tokenizer import GRAMMAR_WORDS, build_word_tokenizer

TINY = TeacherArchitecture(
    vae_channels=(8, 8, 8), vae_norm_groups=4, text_dim=16, text_layers=1, text_heads=2,
    unet_channels=(16, 32), unet_heads=2, unet_norm_groups=8,
)  # fmt: skip
TINY_SETTINGS = TeacherSettings(
    pool_size=64, vae_steps=2, vae_batch_size=8, denoiser_steps=2, denoiser_batch_size=8, warmup_steps=1,
    save_every=0, log_every=1, device="cpu", threads=1, architecture=TINY,
)  # fmt: skip


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on a shared CPU: one thread avoids OpenMP oversubscription (10x slower otherwise)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_word_tokenizer_gives_one_token_per_grammar_word(tmp_path):
    tokenizer = build_word_tokenizer(tmp_path)
    for word in GRAMMAR_WORDS:
        assert tokenizer.convert_ids_to_tokens(tokenizer(word, add_special_tokens=False).input_ids) == [
            word + "</w>"
        ]
    ids = tokenize(tokenizer, ["a red seven on blue", ""])
    assert ids.shape == (2, 8)
    assert ids[1].tolist() == [0] + [1] * 7  # the empty (unconditional) prompt: start, then end/padding


@pytest.mark.slow  # the recipes of `make teacher` only: kept out of make test's 3 minutes
def test_vae_recipe_lowers_its_loss():
    images = images_to_tensor(make_images(32, seed=0)[0])  # [32, 3, 32, 32]
    torch.manual_seed(0)
    vae = build_vae(TINY)
    settings = dataclasses.replace(
        TINY_SETTINGS, vae_steps=30, vae_batch_size=16, vae_lr=3e-3, warmup_steps=3
    )
    with torch.no_grad():
        before = vae_loss(vae.eval(), images, settings.vae_kl_weight).mean()
    train_vae(settings, vae, images)
    with torch.no_grad():
        after = vae_loss(vae, images, settings.vae_kl_weight).mean()
    assert after < 0.9 * before


@pytest.mark.slow  # the recipes of `make teacher` only: kept out of make test's 3 minutes
def test_denoiser_recipe_lowers_its_loss(tmp_path):
    tokenizer = build_word_tokenizer(tmp_path)
    _, prompts = make_images(16, seed=0)
    input_ids, empty_ids = tokenize(tokenizer, prompts), tokenize(tokenizer, [""])[0]
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(16, 4, 8, 8, generator=generator)
    noise = torch.randn(16, 4, 8, 8, generator=generator)
    timesteps = torch.linspace(50, 950, 16).long()
    torch.manual_seed(0)
    recipe = SdRecipe(TINY, vocab_size=len(tokenizer))

    def fixed_batch_loss():
        with torch.no_grad():
            return denoiser_loss(recipe.unet.eval(), recipe.text_encoder.eval(), recipe.scheduler, latents,
                                 input_ids, noise, timesteps).mean()  # fmt: skip

    before = fixed_batch_loss()
    settings = dataclasses.replace(
        TINY_SETTINGS, denoiser_steps=40, denoiser_batch_size=16, denoiser_lr=3e-3, warmup_steps=3
    )
    history = train_denoiser(settings, recipe, latents, torch.zeros_like(latents), input_ids, empty_ids)
    assert len(history) == 40
    assert fixed_batch_loss() < 0.8 * before


def test_make_teacher_writes_a_folder_stock_diffusers_loads(tmp_path):
    out = run(dataclasses.replace(TINY_SETTINGS, out=str(tmp_path / "teacher")))
    assert (out / "teacher_training.json").is_file()
    pipe = StableDiffusionPipeline.from_pretrained(out)
    assert (
        pipe.tokenizer("a red seven on blue").input_ids
        == build_word_tokenizer(tmp_path / "tok")("a red seven on blue").input_ids
    )
    pipe.set_progress_bar_config(disable=True)
    images = pipe(["a red seven on blue"], num_inference_steps=2, output_type="np").images
    assert images.shape == (1, 32, 32, 3)


@pytest.fixture(scope="module")
def committed_teacher():
    pipe = StableDiffusionPipeline.from_pretrained(DEFAULT_TEACHER_DIR)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_committed_teacher_is_small_safetensors_only():
    files = [p for p in DEFAULT_TEACHER_DIR.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 20 * 2**20
    weights = [p.name for p in files if p.suffix in (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl")]
    assert weights and all(name.endswith(".safetensors") for name in weights)


def test_committed_teacher_samples_the_right_shapes(committed_teacher):
    pipe = committed_teacher
    assert (
        pipe.unet.config.layers_per_block == 2
        and pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    )
    assert (
        pipe.scheduler.config.beta_schedule == "scaled_linear"
        and pipe.scheduler.config.prediction_type == "epsilon"
    )
    prompts = ["a red seven on blue", "a white zero on black"]
    generators = [torch.Generator().manual_seed(i) for i in range(2)]
    images = pipe(
        prompts, num_inference_steps=2, guidance_scale=3.0, generator=generators, output_type="np"
    ).images
    assert images.shape == (2, 32, 32, 3) and 0.0 <= images.min() and images.max() <= 1.0
    latents = pipe(prompts, num_inference_steps=2, output_type="latent").images
    assert latents.shape == (2, 4, 8, 8)
