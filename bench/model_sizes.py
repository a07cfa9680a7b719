"""Exact parameter counts of SD1.5- and SDXL-shaped models, built on the meta device (no memory, no
weights), for the memory arithmetic of docs/scaling.md ("smaller GPUs").

    counts = parameter_counts()   # {"sd15": {"unet": 859520964, "lora_r64": 67252224, ...}, "sdxl": {...}}

The UNets are diffusers' UNet2DConditionModel with SD1.5's and SDXL's configs; `lora_r64` is the
adapter that `student-train run --student lora` adds (rank 64, the LCM-LoRA target modules);
text encoders are CLIP ViT-L/14 (both) and OpenCLIP ViT-bigG/14 (SDXL's second), the VAE is SD's.
"""

import torch

SDXL_UNET = dict(
    sample_size=128,
    cross_attention_dim=2048,
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
CLIP_BIG_G = dict(
    vocab_size=49408,
    hidden_size=1280,
    intermediate_size=5120,
    num_hidden_layers=32,
    num_attention_heads=20,
    max_position_embeddings=77,
    hidden_act="gelu",
    projection_dim=1280,
)


def count(module: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def parameter_counts() -> dict[str, dict[str, int]]:
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from bench.sd15_shaped_teacher import sd15_text_encoder, sd15_vae
    from student_train.students.student import lora_target_modules

    counts = {}
    with torch.device("meta"):
        clip_l, vae = count(sd15_text_encoder()), count(sd15_vae())
        big_g = count(CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_BIG_G)))
        for family, config, text in (
            ("sd15", dict(cross_attention_dim=768, sample_size=64), clip_l),
            ("sdxl", SDXL_UNET, clip_l + big_g),
        ):
            unet = UNet2DConditionModel(**config)
            base = count(unet)
            unet.requires_grad_(False)
            unet.add_adapter(LoraConfig(r=64, lora_alpha=64, target_modules=lora_target_modules(unet)))
            counts[family] = {"unet": base, "lora_r64": count(unet, True), "text_encoders": text, "vae": vae}
    return counts


if __name__ == "__main__":
    print(parameter_counts())
