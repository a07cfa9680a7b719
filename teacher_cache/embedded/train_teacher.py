"""Train the embedded default teacher from scratch and save it as a diffusers folder (= `make teacher`).

    python -m teacher_cache.embedded.train_teacher [--out DIR] [--unet-steps N] [--threads 2] ...

Recipe, seeded, two stages on the coloured digits of `shared.digits` (every prompt combination):
  1. AutoencoderKL on RGB 32x32 images in [-1, 1] -> latents [4, 8, 8]; MSE + a small KL term, then
     `scaling_factor` = 1 / std of the latents, as Stable Diffusion does.
  2. UNet2DConditionModel + CLIPTextModel (word-level tokenizer) trained jointly on eps-prediction, 10 %
     of prompts dropped to "" so classifier-free guidance works, Min-SNR-5 loss weights (Hang et al.,
     "Efficient Diffusion Training via Min-SNR Weighting Strategy"), AdamW with warmup + cosine,
     EMA weights saved.
The result is a `StableDiffusionPipeline` (DDIM scheduler, no safety checker) written with
`save_pretrained`, plus `teacher_training.json` holding these settings and the final losses.
"""

import argparse
import json
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.training_utils import EMAModel
from transformers import CLIPTextModel, CLIPTokenizer

from shared.digits import make_images
from teacher_cache.embedded import DEFAULT_TEACHER_DIR
from teacher_cache.embedded.architecture import (
    TeacherArchitecture,
    build_scheduler,
    build_text_encoder,
    build_unet,
    build_vae,
)
from teacher_cache.embedded.word_tokenizer import build_word_tokenizer

MIN_SNR_GAMMA = 5.0


@dataclass(frozen=True)
class TeacherSettings:
    out: str = str(DEFAULT_TEACHER_DIR)
    seed: int = 0
    pool_size: int = 24000  # training images, drawn once from shared.digits (split "train")
    vae_steps: int = 600
    vae_batch_size: int = 64
    vae_lr: float = 2e-3
    vae_kl_weight: float = 1e-4  # on the per-sample KL sum, against the per-sample squared-error sum
    unet_steps: int = 3000
    unet_batch_size: int = 256
    unet_lr: float = 1e-3
    warmup_steps: int = 100
    prompt_dropout: float = 0.1
    ema_power: float = 0.75  # EMAModel warmup: decay = 1 - (1 + step) ** -power, at most 0.999
    save_every: int = 500  # write the pipeline (EMA weights) every N UNet steps, 0 = only at the end
    log_every: int = 50
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    threads: int = 1  # on a shared CPU, 2 OpenMP threads ran 5-10x slower than 1 (oversubscription)
    architecture: TeacherArchitecture = field(default_factory=TeacherArchitecture)


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


def min_snr_weights(
    scheduler: DDIMScheduler, timesteps: torch.Tensor, gamma: float = MIN_SNR_GAMMA
) -> torch.Tensor:
    """Min-SNR-gamma loss weights for eps-prediction: min(SNR, gamma) / SNR; timesteps [B] -> [B]."""
    alpha_bar = scheduler.alphas_cumprod.to(timesteps.device)[timesteps]
    snr = alpha_bar / (1.0 - alpha_bar)
    return snr.clamp(max=gamma) / snr


def denoiser_loss(
    unet: UNet2DConditionModel,
    text_encoder: CLIPTextModel,
    scheduler: DDIMScheduler,
    latents: torch.Tensor,
    input_ids: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
) -> torch.Tensor:
    """Weighted eps-prediction error per sample: latents, noise [B, 4, 8, 8]; input_ids [B, 8]; timesteps [B] -> [B]."""
    text_embeddings = text_encoder(input_ids)[0]  # [B, 8, text_dim], as StableDiffusionPipeline.encode_prompt
    noisy = scheduler.add_noise(latents, noise, timesteps)
    predicted = unet(noisy, timesteps, encoder_hidden_states=text_embeddings).sample  # [B, 4, 8, 8]
    return (predicted - noise).pow(2).flatten(1).mean(1) * min_snr_weights(scheduler, timesteps)


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
    unet: UNet2DConditionModel,
    text_encoder: CLIPTextModel,
    latent_mean: torch.Tensor,
    latent_std: torch.Tensor,
    input_ids: torch.Tensor,
    empty_ids: torch.Tensor,
    save=None,
) -> list[float]:
    """Stage 2: train UNet + text encoder in place on scaled latents [N, 4, 8, 8] and prompt ids [N, 8].

    Ends with the EMA weights loaded; returns the per-log-interval mean losses. `save(unet, text_encoder)`
    is called with EMA weights every `settings.save_every` steps.
    """
    device = settings.device
    scheduler = build_scheduler()
    unet.to(device).train()
    text_encoder.to(device).train()
    parameters = [*unet.parameters(), *text_encoder.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=settings.unet_lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: cosine_with_warmup(s, settings.unet_steps, settings.warmup_steps)
    )
    ema = EMAModel(parameters, decay=0.999, use_ema_warmup=True, power=settings.ema_power)
    generator = torch.Generator().manual_seed(settings.seed + 3)

    def with_ema_weights(callback):
        ema.store(parameters)
        ema.copy_to(parameters)
        callback(unet, text_encoder)
        ema.restore(parameters)

    started, running, history = time.time(), [], []
    for step in range(settings.unet_steps):
        rows = torch.randint(len(latent_mean), (settings.unet_batch_size,), generator=generator)
        latents = latent_mean[rows] + latent_std[rows] * torch.randn(
            latent_mean[rows].shape, generator=generator
        )
        dropped = torch.rand(len(rows), generator=generator) < settings.prompt_dropout
        ids = torch.where(dropped[:, None], empty_ids, input_ids[rows])  # [B, 8]
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(scheduler.config.num_train_timesteps, (len(rows),), generator=generator)
        loss = denoiser_loss(
            unet,
            text_encoder,
            scheduler,
            latents.to(device),
            ids.to(device),
            noise.to(device),
            timesteps.to(device),
        ).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        ema.step(parameters)
        running.append(loss.item())
        if (step + 1) % settings.log_every == 0 or step + 1 == settings.unet_steps:
            history.append(float(np.mean(running)))
            rate = (step + 1) / (time.time() - started)
            print(
                f"unet step {step + 1:5d}  loss {history[-1]:.4f}  {time.time() - started:6.0f}s  {rate:.2f} it/s",
                flush=True,
            )
            running = []
        if save is not None and settings.save_every and (step + 1) % settings.save_every == 0:
            with_ema_weights(save)
    ema.copy_to(parameters)
    unet.eval()
    text_encoder.eval()
    return history


def assemble_pipeline(vae, text_encoder, tokenizer, unet) -> StableDiffusionPipeline:
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=build_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def run(settings: TeacherSettings) -> Path:
    torch.set_num_threads(settings.threads)
    out = Path(settings.out)
    started = time.time()
    # Data: one fixed pool of training images over every prompt combination.
    images_uint8, prompts = make_images(settings.pool_size, seed=settings.seed, split="train")
    images = images_to_tensor(images_uint8)  # [N, 3, 32, 32]
    tokenizer = build_word_tokenizer(Path(tempfile.mkdtemp(prefix="digit_tokenizer_")))
    input_ids, empty_ids = tokenize(tokenizer, prompts), tokenize(tokenizer, [""])[0]

    # Stage 1: the VAE; Stable Diffusion's scaling factor makes the latents unit-variance.
    torch.manual_seed(settings.seed)
    vae = build_vae(settings.architecture)
    vae_history = train_vae(settings, vae, images)
    latent_mean, latent_std = encode_pool(vae, images)
    vae.to("cpu")
    scaling = 1.0 / float((latent_mean + latent_std * torch.randn_like(latent_mean)).std())
    vae.register_to_config(scaling_factor=scaling)
    print(f"vae  done: scaling_factor {scaling:.4f}  {time.time() - started:.0f}s", flush=True)

    # Stage 2: UNet + text encoder, saving EMA snapshots along the way.
    def save(unet, text_encoder):
        assemble_pipeline(vae, text_encoder, tokenizer, unet).to("cpu").save_pretrained(out)
        unet.to(settings.device)
        text_encoder.to(settings.device)

    torch.manual_seed(settings.seed + 2)
    unet = build_unet(settings.architecture)
    text_encoder = build_text_encoder(settings.architecture, vocab_size=len(tokenizer))
    history = train_denoiser(
        settings,
        unet,
        text_encoder,
        latent_mean * scaling,
        latent_std * scaling,
        input_ids,
        empty_ids,
        save=save,
    )
    save(unet, text_encoder)
    record = {
        "settings": asdict(settings),
        "vae_loss_history": vae_history,
        "unet_loss_history": history,
        "seconds": round(time.time() - started),
    }
    (out / "teacher_training.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"saved {out} in {time.time() - started:.0f}s", flush=True)
    return out


def parse_settings(argv: list[str] | None = None) -> TeacherSettings:
    defaults = TeacherSettings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, value in asdict(defaults).items():
        if name == "architecture":
            continue
        parser.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    return TeacherSettings(**vars(parser.parse_args(argv)))


if __name__ == "__main__":
    run(parse_settings())
