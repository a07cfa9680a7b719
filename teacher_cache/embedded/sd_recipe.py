"""The default teacher's denoiser stage: a UNet2DConditionModel + CLIP text encoder trained jointly on
eps-prediction with Min-SNR-5 loss weights (Hang et al., "Efficient Diffusion Training via Min-SNR
Weighting Strategy"); saved as a `StableDiffusionPipeline` (DDIM scheduler, no safety checker).

    recipe = SdRecipe(TeacherArchitecture(), vocab_size=len(tokenizer))
    loss = recipe.loss(latents, input_ids, generator)      # [B]: draws the noise, then the timesteps
    pipe = recipe.pipeline(vae, tokenizer)                 # the trained modules in a stock pipeline
"""

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextModel

from teacher_cache.embedded.architecture import (
    TeacherArchitecture,
    build_scheduler,
    build_text_encoder,
    build_unet,
)

MIN_SNR_GAMMA = 5.0


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


class SdRecipe:
    """UNet + text encoder, trained together; `modules` are what the training loop optimises and saves."""

    def __init__(self, architecture: TeacherArchitecture, vocab_size: int):
        self.unet = build_unet(architecture)
        self.text_encoder = build_text_encoder(architecture, vocab_size=vocab_size)
        self.scheduler = build_scheduler()
        self.modules = {"unet": self.unet, "text_encoder": self.text_encoder}

    def loss(
        self, latents: torch.Tensor, input_ids: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        """latents [B, 4, 8, 8] and input_ids [B, 8] on the training device -> per-sample loss [B]."""
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(
            self.scheduler.config.num_train_timesteps, (len(latents),), generator=generator
        )
        device = latents.device
        return denoiser_loss(
            self.unet,
            self.text_encoder,
            self.scheduler,
            latents,
            input_ids,
            noise.to(device),
            timesteps.to(device),
        )

    def pipeline(self, vae, tokenizer) -> StableDiffusionPipeline:
        return StableDiffusionPipeline(
            vae=vae,
            text_encoder=self.text_encoder,
            tokenizer=tokenizer,
            unet=self.unet,
            scheduler=build_scheduler(),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
