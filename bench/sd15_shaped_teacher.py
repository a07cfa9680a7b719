"""A teacher with Stable Diffusion 1.5's architecture and random weights, for the cached-vs-online
benchmark (nothing can be downloaded here; time and memory depend on shapes, not on weight values).

    folder = save_sd15_shaped_teacher(Path("runs/bench/sd15_teacher"))   # ~4.3 GB, built once

UNet 860 M parameters (diffusers' UNet2DConditionModel defaults are SD1.x's, with 768-wide cross
attention), CLIP ViT-L/14 text encoder 123 M, VAE 84 M, Stable Diffusion's DDIM schedule. Next to the
8 MiB embedded teacher (a ~470 MiB torch runtime dwarfs it), this gives what a user's run has: the
teacher UNet, text encoder and VAE in SD1.5's proportions to the student and its training state.
The tokenizer is the embedded teacher's word-level one, padded to CLIP's 77 tokens.
"""

import shutil
import tempfile
from pathlib import Path

import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from teacher_cache.embedded.architecture import build_scheduler
from teacher_cache.embedded.word_tokenizer import build_word_tokenizer

CLIP_MAX_LENGTH = 77


def sd15_text_encoder() -> CLIPTextModel:
    """CLIP ViT-L/14's text tower, as in SD1.5's text_encoder/config.json."""
    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=CLIP_MAX_LENGTH,
        hidden_act="quick_gelu",
        projection_dim=768,
    )
    return CLIPTextModel(config)


def sd15_vae() -> AutoencoderKL:
    """SD1.5's vae/config.json."""
    return AutoencoderKL(
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=[128, 256, 512, 512],
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
        scaling_factor=0.18215,
    )


def save_sd15_shaped_teacher(folder: Path, seed: int = 0) -> Path:
    """Build and save the pipeline (atomically: a half-written folder never takes the name); reuse
    an existing one."""
    folder = Path(folder)
    if (folder / "model_index.json").exists():
        return folder
    torch.manual_seed(seed)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent) as scratch:  # same disk: the move is a rename
        tokenizer = build_word_tokenizer(Path(scratch) / "tokenizer_files")
        tokenizer.model_max_length = CLIP_MAX_LENGTH
        pipe = StableDiffusionPipeline(
            vae=sd15_vae(),
            text_encoder=sd15_text_encoder(),
            tokenizer=tokenizer,
            unet=UNet2DConditionModel(cross_attention_dim=768, sample_size=64),
            scheduler=build_scheduler(),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        staged = Path(scratch) / "pipeline"
        pipe.save_pretrained(staged)
        shutil.move(str(staged), str(folder))
    return folder
