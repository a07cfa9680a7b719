"""The components of the embedded teachers, each built from one frozen architecture dataclass.

The default teacher (`StableDiffusionPipeline`), from `TeacherArchitecture`:

    arch = TeacherArchitecture()                # the committed teacher's sizes
    vae = build_vae(arch)                       # AutoencoderKL: RGB 32x32 in [-1, 1] <-> latents [4, 8, 8]
    text_encoder = build_text_encoder(arch, vocab_size=len(tokenizer))   # CLIPTextModel, [B, 8] -> [B, 8, 64]
    unet = build_unet(arch)                     # UNet2DConditionModel, eps-prediction on [B, 4, 8, 8]
    scheduler = build_scheduler()               # DDIMScheduler with Stable Diffusion's noise schedule

The flow teacher (`StableDiffusion3Pipeline` without T5; it reuses the default teacher's VAE), from
`FlowTeacherArchitecture`:

    flow = FlowTeacherArchitecture()
    text_encoder = build_projected_text_encoder(flow, vocab_size)   # CLIPTextModelWithProjection (x2)
    transformer = build_transformer(flow)       # SD3Transformer2DModel, velocity on [B, 4, 8, 8]
    scheduler = build_flow_scheduler(flow)      # FlowMatchEulerDiscreteScheduler(shift=flow.shift)

Tests build the same components with smaller architectures.
"""

from dataclasses import dataclass

from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

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


def text_config(text_dim: int, layers: int, heads: int, vocab_size: int, projection_dim: int = 512):
    """A CLIP text config for the word tokenizer (8 tokens, <|startoftext|> = 0, <|endoftext|> = pad = 1)."""
    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=text_dim,
        intermediate_size=2 * text_dim,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=MAX_LENGTH,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        projection_dim=projection_dim,
    )


def build_text_encoder(arch: TeacherArchitecture, vocab_size: int) -> CLIPTextModel:
    return CLIPTextModel(text_config(arch.text_dim, arch.text_layers, arch.text_heads, vocab_size))


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


@dataclass(frozen=True)
class FlowTeacherArchitecture:
    latent_channels: int = 4  # the default teacher's VAE: RGB 32x32 <-> latents [4, 8, 8]
    latent_size: int = 8
    text_dim: int = 32  # each of the two CLIP encoders; their penultimate states side by side = 2 x 32
    text_layers: int = 2
    text_heads: int = 2
    patch_size: int = 1  # 8 x 8 = 64 image tokens
    layers: int = 4  # joint (MMDiT) blocks
    heads: int = 4
    head_dim: int = 16  # width = heads x head_dim
    # FlowMatchEulerDiscreteScheduler's timestep shift. SD3 uses 3.0 for 128x128 latents; the shift grows
    # with resolution (Esser et al. 2024, sec. 5.3.2). At 8x8 latents, 1.0: 46-50 % adherence after 1000
    # updates of 128, against 20 % with 3.0 (docs/teacher.md).
    shift: float = 1.0


def build_projected_text_encoder(
    arch: FlowTeacherArchitecture, vocab_size: int
) -> CLIPTextModelWithProjection:
    """One of SD3's two CLIP encoders: penultimate hidden states [B, 8, text_dim] + pooled `text_embeds`."""
    config = text_config(
        arch.text_dim, arch.text_layers, arch.text_heads, vocab_size, projection_dim=arch.text_dim
    )
    return CLIPTextModelWithProjection(config)


def build_transformer(arch: FlowTeacherArchitecture) -> SD3Transformer2DModel:
    """SD3's MMDiT: CLIP tokens (two encoders side by side, 2 x text_dim wide) and the pooled text
    (2 x text_dim) condition `layers` joint blocks over the latent patches; predicts the velocity."""
    width = arch.heads * arch.head_dim
    return SD3Transformer2DModel(
        sample_size=arch.latent_size,
        patch_size=arch.patch_size,
        in_channels=arch.latent_channels,
        out_channels=arch.latent_channels,
        num_layers=arch.layers,
        attention_head_dim=arch.head_dim,
        num_attention_heads=arch.heads,
        joint_attention_dim=2 * arch.text_dim,
        caption_projection_dim=width,
        pooled_projection_dim=2 * arch.text_dim,
        pos_embed_max_size=arch.latent_size // arch.patch_size,
    )


def build_flow_scheduler(arch: FlowTeacherArchitecture) -> FlowMatchEulerDiscreteScheduler:
    """Rectified-flow Euler sampling with Stable Diffusion 3's timestep shift (1000 train timesteps)."""
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=arch.shift)
