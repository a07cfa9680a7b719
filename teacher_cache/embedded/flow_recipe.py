"""The flow teacher's denoiser stage: an SD3Transformer2DModel + two CLIP text encoders (no T5) trained
jointly on rectified flow (Esser et al. 2024, "Scaling Rectified Flow Transformers", as diffusers'
examples/dreambooth/train_dreambooth_lora_sd3.py): x_t = (1 - sigma) x0 + sigma noise, the
transformer predicts the velocity noise - x0 at timestep 1000 sigma, sigma = shift(u) with
u ~ logit-normal(0, 1) (the paper's rf/lognorm(0.00, 1.00)) and the scheduler's shift, uniform
loss weights. Saved as a `StableDiffusion3Pipeline` (FlowMatchEulerDiscreteScheduler, no T5).

The prompt is encoded exactly as `StableDiffusion3Pipeline.encode_prompt` encodes it (penultimate
CLIP states of both encoders side by side, pooled projections concatenated), except that the 256 zero
tokens the pipeline appends without T5 are one token that counts 256 times in attention
(shared/padding_attention.py): the same function at a quarter of the cost.

    recipe = FlowRecipe(FlowTeacherArchitecture(), vocab_size=len(tokenizer))
    loss = recipe.loss(latents, input_ids, generator)      # [B]: draws the noise, then u
    pipe = recipe.pipeline(vae, tokenizer)                 # StableDiffusion3Pipeline
"""

import torch
from diffusers import StableDiffusion3Pipeline

from shared.padding_attention import SD3_PADDING_TOKENS, RepeatedPaddingJointAttnProcessor
from teacher_cache.embedded.architecture import (
    FlowTeacherArchitecture,
    build_flow_scheduler,
    build_projected_text_encoder,
    build_transformer,
)

LOGIT_MEAN, LOGIT_STD = 0.0, 1.0  # timestep density: sigmoid(N(mean, std)), as the SD3 paper and script


def shifted_sigmas(u: torch.Tensor, shift: float) -> torch.Tensor:
    """FlowMatchEulerDiscreteScheduler's timestep shift: shift u / (1 + (shift - 1) u)."""
    return shift * u / (1 + (shift - 1) * u)


class FlowRecipe:
    """Transformer + two CLIP encoders, trained together. The transformer keeps the repeated-padding
    processor in this process; the saved folder loads with diffusers' stock processor."""

    def __init__(self, architecture: FlowTeacherArchitecture, vocab_size: int):
        self.architecture = architecture
        self.transformer = build_transformer(architecture)
        self.text_encoder = build_projected_text_encoder(architecture, vocab_size)
        self.text_encoder_2 = build_projected_text_encoder(architecture, vocab_size)
        self.transformer.set_attn_processor(RepeatedPaddingJointAttnProcessor(SD3_PADDING_TOKENS))
        self.modules = {
            "transformer": self.transformer,
            "text_encoder": self.text_encoder,
            "text_encoder_2": self.text_encoder_2,
        }

    def encode(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """input_ids [B, 8] -> prompt_embeds [B, 8 + 1, 2 text_dim] (the last token: the zero padding,
        counted 256 times) and pooled_projections [B, 2 text_dim], as StableDiffusion3Pipeline.encode_prompt."""
        states, pooled = [], []
        for encoder in (self.text_encoder, self.text_encoder_2):
            output = encoder(input_ids, output_hidden_states=True)
            states.append(output.hidden_states[-2])  # [B, 8, text_dim]: the pipeline's clip_skip=None
            pooled.append(output.text_embeds)  # [B, text_dim]
        clip_states = torch.cat(states, dim=-1)  # [B, 8, 2 text_dim] = joint_attention_dim: no padding
        padding = clip_states.new_zeros(clip_states.shape[0], 1, clip_states.shape[-1])
        return torch.cat([clip_states, padding], dim=1), torch.cat(pooled, dim=-1)

    def loss(
        self, latents: torch.Tensor, input_ids: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        """latents [B, 4, 8, 8] and input_ids [B, 8] on the training device -> per-sample loss [B]."""
        device = latents.device
        noise = torch.randn(latents.shape, generator=generator).to(device)
        u = torch.sigmoid(LOGIT_MEAN + LOGIT_STD * torch.randn(len(latents), generator=generator))
        sigma = shifted_sigmas(u, self.architecture.shift).to(device)  # [B]
        noisy = (1 - sigma)[:, None, None, None] * latents + sigma[:, None, None, None] * noise
        prompt_embeds, pooled = self.encode(input_ids)
        velocity = self.transformer(
            hidden_states=noisy,
            timestep=sigma * 1000,  # the pipeline passes scheduler.timesteps = 1000 sigma
            encoder_hidden_states=prompt_embeds,
            pooled_projections=pooled,
        ).sample  # [B, 4, 8, 8]
        return (velocity - (noise - latents)).pow(2).flatten(1).mean(1)

    def pipeline(self, vae, tokenizer) -> StableDiffusion3Pipeline:
        return StableDiffusion3Pipeline(
            transformer=self.transformer,
            scheduler=build_flow_scheduler(self.architecture),
            vae=vae,
            text_encoder=self.text_encoder,
            tokenizer=tokenizer,
            text_encoder_2=self.text_encoder_2,
            tokenizer_2=tokenizer,
            text_encoder_3=None,
            tokenizer_3=None,
        )
