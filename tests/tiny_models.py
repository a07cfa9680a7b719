"""Tiny random diffusers components, built on CPU in the test itself (nothing is downloaded).

    pipe = tiny_sd_pipeline()                       # StableDiffusionPipeline, 16x16 images, 4x8x8 latents
    path = save_tiny_sd_pipeline(tmp_path / "sd")   # the same, saved as a diffusers folder
    pipe = tiny_sdxl_pipeline()                     # StableDiffusionXLPipeline (two text encoders, added_cond_kwargs)
    pipe = tiny_sd3_pipeline()                      # StableDiffusion3Pipeline, flow matching, text_encoder_3=None
    path = save_tiny_pipeline(tiny_sd3_pipeline, tmp_path / "sd3")   # any of them, saved

The CLIP tokenizer is built from a generated character-level `vocab.json` and a `merges.txt`
holding only its version line, so every prompt tokenizes without any download.
"""

import json
import string
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

TEXT_DIM = 32
LATENT_SHAPE = (4, 8, 8)


def write_char_tokenizer_files(folder: Path) -> tuple[Path, Path]:
    """A character-level CLIP vocabulary: every character alone and as a word end."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in string.ascii_lowercase + string.digits + ".,'-!?":
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    vocab_path, merges_path = folder / "vocab.json", folder / "merges.txt"
    vocab_path.write_text(json.dumps(vocab))
    merges_path.write_text("#version: 0.2\n")
    return vocab_path, merges_path


def tiny_tokenizer(folder: Path) -> CLIPTokenizer:
    vocab_path, merges_path = write_char_tokenizer_files(folder)
    return CLIPTokenizer(str(vocab_path), str(merges_path), model_max_length=16)


def tiny_text_encoder(vocab_size: int, seed: int = 0) -> CLIPTextModel:
    torch.manual_seed(seed)
    return CLIPTextModel(tiny_text_config(vocab_size)).eval()


def tiny_text_encoder_with_projection(vocab_size: int, seed: int = 0) -> CLIPTextModelWithProjection:
    """A CLIP text encoder whose pooled output is projected (`text_embeds`, TEXT_DIM wide): SDXL, SD3."""
    torch.manual_seed(seed)
    return CLIPTextModelWithProjection(tiny_text_config(vocab_size)).eval()


def tiny_text_config(vocab_size: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=TEXT_DIM,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=16,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        projection_dim=TEXT_DIM,
    )


def tiny_unet(seed: int = 0, **overrides) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    config = dict(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    config.update(overrides)
    return UNet2DConditionModel(**config).eval()


def tiny_vae(seed: int = 0, **overrides) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
        **overrides,
    ).eval()


def tiny_ddim_scheduler(prediction_type: str = "epsilon") -> DDIMScheduler:
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )


def tiny_sd_pipeline(
    prediction_type: str = "epsilon", tokenizer_dir: Path | None = None
) -> StableDiffusionPipeline:
    """A StableDiffusionPipeline on random tiny weights: 16x16 images, 4x8x8 latents."""
    import tempfile

    tokenizer = tiny_tokenizer(Path(tokenizer_dir or tempfile.mkdtemp(prefix="tiny_tok_")))
    pipe = StableDiffusionPipeline(
        vae=tiny_vae(),
        text_encoder=tiny_text_encoder(len(tokenizer)),
        tokenizer=tokenizer,
        unet=tiny_unet(),
        scheduler=tiny_ddim_scheduler(prediction_type),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_sd_pipeline(folder: Path, prediction_type: str = "epsilon") -> Path:
    """Save a tiny SD pipeline as a diffusers folder that `from_pretrained(folder)` loads."""
    pipe = tiny_sd_pipeline(prediction_type, tokenizer_dir=Path(folder).parent / f"{Path(folder).name}_tok")
    pipe.save_pretrained(folder)
    return Path(folder)


def tiny_sdxl_pipeline(tokenizer_dir: Path | None = None) -> StableDiffusionXLPipeline:
    """A StableDiffusionXLPipeline on random tiny weights: 16x16 images, 4x8x8 latents.

    The UNet gets added_cond_kwargs {text_embeds (B, 32) pooled, time_ids (B, 6)}; its cross-attention
    sees both text encoders' hidden states side by side (B, 16, 64).
    """
    import tempfile

    tokenizer = tiny_tokenizer(Path(tokenizer_dir or tempfile.mkdtemp(prefix="tiny_tok_")))
    time_embed_dim = 8
    unet = tiny_unet(
        cross_attention_dim=2 * TEXT_DIM,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        projection_class_embeddings_input_dim=6 * time_embed_dim + TEXT_DIM,  # 6 time ids + pooled text
        use_linear_projection=True,
    )
    pipe = StableDiffusionXLPipeline(
        vae=tiny_vae(),
        text_encoder=tiny_text_encoder(len(tokenizer), seed=0),
        text_encoder_2=tiny_text_encoder_with_projection(len(tokenizer), seed=1),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=tiny_ddim_scheduler(),
        force_zeros_for_empty_prompt=True,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sd3_transformer() -> SD3Transformer2DModel:
    """The tiny SD3 pipeline's transformer (seed 0): 8x8 latents, 2 layers, joint attention over 2 x TEXT_DIM."""
    torch.manual_seed(0)
    return SD3Transformer2DModel(
        sample_size=8,
        patch_size=1,
        in_channels=4,
        out_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=2 * TEXT_DIM,
        caption_projection_dim=16,
        pooled_projection_dim=2 * TEXT_DIM,
        pos_embed_max_size=16,
    )


def tiny_sd3_pipeline(tokenizer_dir: Path | None = None) -> StableDiffusion3Pipeline:
    """A StableDiffusion3Pipeline (flow matching, MMDiT) on random tiny weights, without T5.

    16x16 images, 4x8x8 latents; the transformer gets encoder_hidden_states (B, 16 + 256, 64) (CLIP
    tokens, then T5's zeros) and pooled_projections (B, 64).
    """
    import tempfile

    tokenizer = tiny_tokenizer(Path(tokenizer_dir or tempfile.mkdtemp(prefix="tiny_tok_")))
    transformer = tiny_sd3_transformer().eval()
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=tiny_vae(shift_factor=0.0609, scaling_factor=1.5035),
        text_encoder=tiny_text_encoder_with_projection(len(tokenizer), seed=0),
        tokenizer=tokenizer,
        text_encoder_2=tiny_text_encoder_with_projection(len(tokenizer), seed=1),
        tokenizer_2=tokenizer,
        text_encoder_3=None,
        tokenizer_3=None,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_pipeline(build, folder: Path) -> Path:
    """Save the pipeline `build(tokenizer_dir=...)` makes as a diffusers folder; returns the folder."""
    folder = Path(folder)
    build(tokenizer_dir=folder.parent / f"{folder.name}_tok").save_pretrained(folder)
    return folder
