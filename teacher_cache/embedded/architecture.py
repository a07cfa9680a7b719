"""The components of the embedded teacher, built from one frozen `TeacherArchitecture`.

    arch = TeacherArchitecture()                # the committed teacher's sizes
    vae = build_vae(arch)                       # AutoencoderKL: RGB 32x32 in [-1, 1] <-> latents [4, 8, 8]
    text_encoder = build_text_encoder(arch, vocab_size=len(tokenizer))   # CLIPTextModel, [B, 8] -> [B, 8, 64]
    unet = build_unet(arch)                     # UNet2DConditionModel, eps-prediction on [B, 4, 8, 8]
    scheduler = build_scheduler()               # DDIMScheduler with Stable Diffusion's noise schedule

Tests build the same components with a smaller `TeacherArchitecture(...)`.
"""

from dataclasses import dataclass

from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from teacher_cache.embedded.word_tokenizer import MAX_LENGTH


@dataclass(frozen=True)
class TeacherArchitecture:
    image_size: int = 32
    latent_channels: int = 4
    vae_channels: tuple[int, ...] = (16, 32, 64)  # three levels: 32x32 -> 8x8 latents
    vae_norm_groups: int = 8
    text_dim: int = 64
    text_layers: int = 2
    text_heads: int = 4
    unet_channels: tuple[int, ...] = (32, 64)  # latents 8x8 -> 4x4
    unet_layers_per_block: int = 2  # BK-SDM style block pruning needs a second layer to remove
    unet_heads: int = 4
    unet_norm_groups: int = 8

    @property
    def latent_size(self) -> int:
        return self.image_size // 2 ** (len(self.vae_channels) - 1)


def build_vae(arch: TeacherArchitecture) -> AutoencoderKL:
    levels = len(arch.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=arch.vae_channels,
        layers_per_block=1,
        latent_channels=arch.latent_channels,
        norm_num_groups=arch.vae_norm_groups,
        sample_size=arch.image_size,
    )


def build_text_encoder(arch: TeacherArchitecture, vocab_size: int) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=arch.text_dim,
        intermediate_size=2 * arch.text_dim,
        num_hidden_layers=arch.text_layers,
        num_attention_heads=arch.text_heads,
        max_position_embeddings=MAX_LENGTH,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    return CLIPTextModel(config)


def build_unet(arch: TeacherArchitecture) -> UNet2DConditionModel:
    """Cross-attention at the coarse level(s) and in the mid block; plain ResNet blocks at full latent size."""
    levels = len(arch.unet_channels)
    down = ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (levels - 1)
    up = ("CrossAttnUpBlock2D",) * (levels - 1) + ("UpBlock2D",)
    return UNet2DConditionModel(
        sample_size=arch.latent_size,
        in_channels=arch.latent_channels,
        out_channels=arch.latent_channels,
        block_out_channels=arch.unet_channels,
        layers_per_block=arch.unet_layers_per_block,
        down_block_types=down,
        up_block_types=up,
        cross_attention_dim=arch.text_dim,
        attention_head_dim=arch.unet_heads,  # diffusers' legacy name: the number of heads
        norm_num_groups=arch.unet_norm_groups,
    )


def build_scheduler() -> DDIMScheduler:
    """Stable Diffusion's schedule (scaled_linear 0.00085..0.012, 1000 steps, epsilon), DDIM sampling."""
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
