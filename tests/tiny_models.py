"""Tiny random diffusers components, built on CPU in the test itself (nothing is downloaded).

    pipe = tiny_sd_pipeline()                       # StableDiffusionPipeline, 16x16 images, 4x8x8 latents
    path = save_tiny_sd_pipeline(tmp_path / "sd")   # the same, saved as a diffusers folder

The CLIP tokenizer is built from a generated character-level `vocab.json` and a `merges.txt`
holding only its version line, so every prompt tokenizes without any download.
"""

import json
import string
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

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
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=TEXT_DIM,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=16,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    return CLIPTextModel(config).eval()


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


def tiny_vae(seed: int = 0) -> AutoencoderKL:
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


def tiny_sd_pipeline(prediction_type: str = "epsilon", tokenizer_dir: Path | None = None) -> StableDiffusionPipeline:
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
