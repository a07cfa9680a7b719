"""Train an embedded teacher from scratch and save it as a diffusers folder (= `make teacher [FAMILY=sd3]`).

    python -m teacher_cache.embedded.train_teacher [--family sd|sd3] [--out DIR] [--denoiser-steps N] ...

One recipe, seeded, for both teachers, on the coloured digits of `shared.digits` (every prompt
combination) with the word-level tokenizer:
  1. the VAE: AutoencoderKL on RGB 32x32 images in [-1, 1] -> latents [4, 8, 8]; MSE + a small KL
     term (family sd), or the VAE of `--vae-source` reused (family sd3: the default teacher's, so both
     teachers share one latent space). Then Stable Diffusion's latent normalisation: `scaling_factor`
     = 1 / std of the latents, and for sd3 also `shift_factor` = their mean, as SD3's VAE.
  2. the denoiser and its text encoder(s), trained jointly (family recipes: sd_recipe.py for the
     UNet + CLIP on eps-prediction with Min-SNR-5 weights; flow_recipe.py for the SD3 transformer +
     two CLIPs on rectified flow), 10 % of prompts dropped to "" so classifier-free guidance works,
     AdamW with warmup + cosine, EMA weights saved.
The result is a `StableDiffusionPipeline` (sd) or a `StableDiffusion3Pipeline` without T5 (sd3)
written with `save_pretrained`, plus `teacher_training.json` holding these settings, the loss curves
and the wall and CPU time. Its path settings (`out`, `vae_source`) are recorded the same on every
machine, never as absolute paths (`portable_path`).
"""

import argparse
import dataclasses
import json
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL
from diffusers.training_utils import EMAModel
from transformers import CLIPTokenizer

from shared.digits import make_images
from shared.teacher import EMBEDDED_PREFIX, portable_path, resolve_teacher_source
from teacher_cache.embedded import DEFAULT_TEACHER_DIR, FLOW_TEACHER_DIR
from teacher_cache.embedded.architecture import FlowTeacherArchitecture, TeacherArchitecture, build_vae
from teacher_cache.embedded.flow_recipe import FlowRecipe
from teacher_cache.embedded.sd_recipe import SdRecipe
from teacher_cache.embedded.word_tokenizer import build_word_tokenizer

PATH_SETTINGS = ("out", "vae_source")  # recorded with portable_path


@dataclass(frozen=True)
class TeacherSettings:
    family: str = (
        "sd"  # sd: StableDiffusionPipeline (default_teacher); sd3: StableDiffusion3Pipeline (flow_teacher)
    )
    out: str = ""  # "": the family's folder in teacher_cache/embedded/
    seed: int = 0
    pool_size: int = 24000  # training images, drawn once from shared.digits (split "train")
    vae_source: str = (
        ""  # "": train a VAE (stage 1); else a teacher (embedded:<name>, folder) whose vae/ is reused
    )
    vae_steps: int = 600
    vae_batch_size: int = 64
    vae_lr: float = 2e-3
    vae_kl_weight: float = 1e-4  # on the per-sample KL sum, against the per-sample squared-error sum
    denoiser_steps: int = 3000
    denoiser_batch_size: int = 256
    denoiser_lr: float = 1e-3
    warmup_steps: int = 100
    prompt_dropout: float = 0.1
    ema_power: float = 0.75  # EMAModel warmup: decay = 1 - (1 + step) ** -power, at most 0.999
    save_every: int = 500  # write the pipeline (EMA weights) every N denoiser steps, 0 = only at the end
    log_every: int = 50
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    threads: int = 1  # on a shared CPU, 2 OpenMP threads ran 5-10x slower than 1 (oversubscription)
    architecture: TeacherArchitecture | FlowTeacherArchitecture = field(default_factory=TeacherArchitecture)


@dataclass(frozen=True)
class Family:
    """What differs between the two embedded teachers."""

    folder: Path  # where `make teacher FAMILY=...` writes it
    recipe: Callable  # (architecture, vocab_size) -> SdRecipe | FlowRecipe
    centre_latents: bool  # the VAE's shift_factor = the latents' mean (SD3) or absent (SD)
    defaults: dict  # TeacherSettings fields that differ from the sd defaults


FAMILIES = {
    "sd": Family(DEFAULT_TEACHER_DIR, SdRecipe, False, {}),
    "sd3": Family(
        FLOW_TEACHER_DIR,
        FlowRecipe,
        True,
        {
            "vae_source": EMBEDDED_PREFIX + DEFAULT_TEACHER_DIR.name,
            "denoiser_steps": 6400,
            "denoiser_batch_size": 128,
            "save_every": 1000,
            "threads": 2,  # 2 threads: 1.27x the samples/s of 1 on an otherwise idle 2-core machine
            "denoiser_lr": 1e-3,
            "architecture": FlowTeacherArchitecture(),
        },
    ),
}


def teacher_settings(family: str = "sd", **overrides) -> TeacherSettings:
    """The settings of `family` with its defaults, then `overrides`."""
    if family not in FAMILIES:
        raise SystemExit(f"unknown --family {family!r}; valid: {', '.join(FAMILIES)}")
    return dataclasses.replace(TeacherSettings(family=family, **FAMILIES[family].defaults), **overrides)


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float [N, 3, H, W] in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def cosine_with_warmup(step: int, total: int, warmup: int) -> float:
    """Learning-rate multiplier: linear warmup, then cosine decay to 0."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def vae_loss(vae: AutoencoderKL, images: torch.Tensor, kl_weight: float) -> torch.Tensor:
    """Per-sample squared reconstruction error + kl_weight * KL; images [B, 3, H, W] in [-1, 1] -> [B]."""
    posterior = vae.encode(images).latent_dist
    reconstruction = vae.decode(posterior.sample()).sample  # [B, 3, H, W]
    return (reconstruction - images).pow(2).flatten(1).sum(1) + kl_weight * posterior.kl()


def train_vae(settings: TeacherSettings, vae: AutoencoderKL, images: torch.Tensor) -> list[float]:
    """Stage 1: train `vae` in place on images [N, 3, 32, 32] in [-1, 1]; returns the logged losses."""
    vae.to(settings.device).train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=settings.vae_lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: cosine_with_warmup(s, settings.vae_steps, settings.warmup_steps)
    )
    generator = torch.Generator().manual_seed(settings.seed + 1)
    started, running, history = time.time(), [], []
    for step in range(settings.vae_steps):
        batch = images[torch.randint(len(images), (settings.vae_batch_size,), generator=generator)]
        loss = vae_loss(vae, batch.to(settings.device), settings.vae_kl_weight).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        running.append(loss.item())
        if (step + 1) % settings.log_every == 0 or step + 1 == settings.vae_steps:
            history.append(float(np.mean(running)))
            per_pixel = history[-1] / images[0].numel()
            print(
                f"vae  step {step + 1:5d}  mse/pixel {per_pixel:.5f}  {time.time() - started:6.0f}s",
                flush=True,
            )
            running = []
    vae.eval()
    return history


@torch.no_grad()
def encode_pool(
    vae: AutoencoderKL, images: torch.Tensor, batch_size: int = 512
) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every image: two float tensors [N, 4, 8, 8] (unscaled)."""
    means, stds = [], []
    for start in range(0, len(images), batch_size):
        posterior = vae.encode(images[start : start + batch_size].to(vae.device)).latent_dist
        means.append(posterior.mean.cpu())
        stds.append(posterior.std.cpu())
    return torch.cat(means), torch.cat(stds)


def tokenize(tokenizer: CLIPTokenizer, prompts: list[str]) -> torch.Tensor:
    """Prompts -> input ids [N, 8], padded exactly as StableDiffusionPipeline pads them."""
    return tokenizer(
        prompts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def train_denoiser(
    settings: TeacherSettings,
    recipe,
    latent_mean: torch.Tensor,
    latent_std: torch.Tensor,
    input_ids: torch.Tensor,
    empty_ids: torch.Tensor,
    save=None,
) -> list[float]:
    """Stage 2: train the recipe's modules in place on normalised latents [N, 4, 8, 8] and prompt ids [N, 8].

    Ends with the EMA weights loaded; returns the per-log-interval mean losses. `save(recipe)` is
    called with EMA weights every `settings.save_every` steps.
    """
    device = settings.device
    for module in recipe.modules.values():
        module.to(device).train()
    parameters = [p for module in recipe.modules.values() for p in module.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=settings.denoiser_lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: cosine_with_warmup(s, settings.denoiser_steps, settings.warmup_steps)
    )
    ema = EMAModel(parameters, decay=0.999, use_ema_warmup=True, power=settings.ema_power)
    generator = torch.Generator().manual_seed(settings.seed + 3)

    def with_ema_weights(callback):
        ema.store(parameters)
        ema.copy_to(parameters)
        callback(recipe)
        ema.restore(parameters)

    started, running, history = time.time(), [], []
    for step in range(settings.denoiser_steps):
        rows = torch.randint(len(latent_mean), (settings.denoiser_batch_size,), generator=generator)
        latents = latent_mean[rows] + latent_std[rows] * torch.randn(
            latent_mean[rows].shape, generator=generator
        )
        dropped = torch.rand(len(rows), generator=generator) < settings.prompt_dropout
        ids = torch.where(dropped[:, None], empty_ids, input_ids[rows])  # [B, 8]
        loss = recipe.loss(latents.to(device), ids.to(device), generator).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        ema.step(parameters)
        running.append(loss.item())
        if (step + 1) % settings.log_every == 0 or step + 1 == settings.denoiser_steps:
            history.append(float(np.mean(running)))
            rate = (step + 1) / (time.time() - started)
            print(
                f"denoiser step {step + 1:5d}  loss {history[-1]:.4f}  {time.time() - started:6.0f}s  {rate:.2f} it/s",
                flush=True,
            )
            running = []
        if save is not None and settings.save_every and (step + 1) % settings.save_every == 0:
            with_ema_weights(save)
    ema.copy_to(parameters)
    for module in recipe.modules.values():
        module.eval()
    return history


def prepare_vae(settings: TeacherSettings, images: torch.Tensor) -> tuple[AutoencoderKL, list[float]]:
    """Stage 1: the VAE of `settings.vae_source`, or a new one trained on `images`; and its loss curve."""
    torch.manual_seed(settings.seed)
    if settings.vae_source:
        vae = AutoencoderKL.from_pretrained(resolve_teacher_source(settings.vae_source), subfolder="vae")
        vae.register_to_config(_name_or_path=portable_path(settings.vae_source))  # saved in vae/config.json
        vae.eval()
        return vae.to(settings.device), []
    vae = build_vae(settings.architecture)
    return vae, train_vae(settings, vae, images)


def normalise_latents(
    vae: AutoencoderKL, latent_mean: torch.Tensor, latent_std: torch.Tensor, centre: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Set the VAE's `scaling_factor` (1 / std of sampled latents) and, with `centre`, `shift_factor`
    (their mean, as SD3's VAE); returns the normalised posterior mean and std [N, 4, 8, 8]."""
    sampled = latent_mean + latent_std * torch.randn_like(latent_mean)
    shift = float(sampled.mean()) if centre else 0.0
    scaling = 1.0 / float((sampled - shift).std())
    vae.register_to_config(scaling_factor=scaling, **({"shift_factor": shift} if centre else {}))
    return (latent_mean - shift) * scaling, latent_std * scaling


def recorded_settings(settings: TeacherSettings) -> dict:
    """`settings` as teacher_training.json holds them: the path settings through portable_path."""
    record = asdict(settings)
    return record | {name: portable_path(record[name]) for name in PATH_SETTINGS}


def run(settings: TeacherSettings) -> Path:
    torch.set_num_threads(settings.threads)
    family = FAMILIES[settings.family]
    out = Path(settings.out or family.folder)
    started, cpu_started = time.time(), time.process_time()
    # Data: one fixed pool of training images over every prompt combination.
    images_uint8, prompts = make_images(settings.pool_size, seed=settings.seed, split="train")
    images = images_to_tensor(images_uint8)  # [N, 3, 32, 32]
    tokenizer = build_word_tokenizer(Path(tempfile.mkdtemp(prefix="digit_tokenizer_")))
    input_ids, empty_ids = tokenize(tokenizer, prompts), tokenize(tokenizer, [""])[0]

    # Stage 1: the VAE; the latents normalised to unit variance (and zero mean for sd3).
    vae, vae_history = prepare_vae(settings, images)
    latent_mean, latent_std = encode_pool(vae, images)
    vae.to("cpu")
    latent_mean, latent_std = normalise_latents(vae, latent_mean, latent_std, family.centre_latents)
    print(
        f"vae  done: {dict(vae.config)['scaling_factor']:.4f} scaling  {time.time() - started:.0f}s",
        flush=True,
    )

    # Stage 2: the denoiser + text encoder(s), saving EMA snapshots along the way.
    def save(recipe):
        recipe.pipeline(vae, tokenizer).to("cpu").save_pretrained(out)
        for module in recipe.modules.values():
            module.to(settings.device)

    torch.manual_seed(settings.seed + 2)
    recipe = family.recipe(settings.architecture, len(tokenizer))
    history = train_denoiser(settings, recipe, latent_mean, latent_std, input_ids, empty_ids, save=save)
    save(recipe)
    record = {
        "settings": recorded_settings(settings),
        "vae_loss_history": vae_history,
        "denoiser_loss_history": history,
        "seconds": round(time.time() - started),
        "cpu_seconds": round(time.process_time() - cpu_started),
    }
    (out / "teacher_training.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"saved {out} in {time.time() - started:.0f}s", flush=True)
    return out


def parse_settings(argv: list[str] | None = None) -> TeacherSettings:
    """--family first (its defaults become the other flags' defaults), then one flag per setting."""
    family_parser = argparse.ArgumentParser(add_help=False)
    family_parser.add_argument("--family", default="sd", choices=list(FAMILIES))
    family = family_parser.parse_known_args(argv)[0].family
    defaults = teacher_settings(family)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, value in asdict(defaults).items():
        if name == "architecture":
            continue
        parser.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    return teacher_settings(**vars(parser.parse_args(argv)))


if __name__ == "__main__":
    run(parse_settings())
