"""Block-pruned students (BK-SDM): stock diffusers configs, every kept tensor the teacher's, BK-SDM's own
name mapping and parameter counts on an SD1.4-shaped UNet, and one-line refusals."""

import pytest
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel

from shared.errors import DistillCacheError
from student_train.students.pruning import prune_unet, pruned_config, teacher_module_name
from tests.student_store_fixture import one_torch_thread  # noqa: F401 (autouse)
from tests.tiny_models import tiny_sd_pipeline, tiny_unet

# Stable Diffusion v1.4's UNet (CompVis/stable-diffusion-v1-4 unet/config.json, structural keys).
SD14 = dict(
    act_fn="silu",
    attention_head_dim=8,
    block_out_channels=[320, 640, 1280, 1280],
    cross_attention_dim=768,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    mid_block_type="UNetMidBlock2DCrossAttn",
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    norm_num_groups=32,
    sample_size=64,
)

# BK-SDM's copy_weight_from_teacher (Nota-NetsPresso/BK-SDM src/kd_train_text_to_image.py):
# student prefix <- teacher prefix; every other key is copied under its own name.
BK_SDM_CONNECT = {
    "base": {
        "up_blocks.0.resnets.1.": "up_blocks.0.resnets.2.",
        "up_blocks.1.resnets.1.": "up_blocks.1.resnets.2.",
        "up_blocks.1.attentions.1.": "up_blocks.1.attentions.2.",
        "up_blocks.2.resnets.1.": "up_blocks.2.resnets.2.",
        "up_blocks.2.attentions.1.": "up_blocks.2.attentions.2.",
        "up_blocks.3.resnets.1.": "up_blocks.3.resnets.2.",
        "up_blocks.3.attentions.1.": "up_blocks.3.attentions.2.",
    },
    "tiny": {
        "up_blocks.0.resnets.0.": "up_blocks.1.resnets.0.",
        "up_blocks.0.attentions.0.": "up_blocks.1.attentions.0.",
        "up_blocks.0.resnets.1.": "up_blocks.1.resnets.2.",
        "up_blocks.0.attentions.1.": "up_blocks.1.attentions.2.",
        "up_blocks.0.upsamplers.": "up_blocks.1.upsamplers.",
        "up_blocks.1.resnets.0.": "up_blocks.2.resnets.0.",
        "up_blocks.1.attentions.0.": "up_blocks.2.attentions.0.",
        "up_blocks.1.resnets.1.": "up_blocks.2.resnets.2.",
        "up_blocks.1.attentions.1.": "up_blocks.2.attentions.2.",
        "up_blocks.1.upsamplers.": "up_blocks.2.upsamplers.",
        "up_blocks.2.resnets.0.": "up_blocks.3.resnets.0.",
        "up_blocks.2.attentions.0.": "up_blocks.3.attentions.0.",
        "up_blocks.2.resnets.1.": "up_blocks.3.resnets.2.",
        "up_blocks.2.attentions.1.": "up_blocks.3.attentions.2.",
    },
}
BK_SDM_CONNECT["small"] = BK_SDM_CONNECT["base"]


def bk_sdm_teacher_key(key: str, level: str) -> str:
    for student_prefix, teacher_prefix in BK_SDM_CONNECT[level].items():
        if key.startswith(student_prefix):
            return key.replace(student_prefix, teacher_prefix)
    return key


def parameter_count_on_meta(config: dict) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in UNet2DConditionModel.from_config(config).parameters())


def three_stage_unet(seed: int = 1) -> UNet2DConditionModel:
    """Cross-attention in the two outer stages, none innermost: tiny is buildable."""
    return tiny_unet(
        seed,
        block_out_channels=(16, 32, 32),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    )


def test_pruned_sd14_configs_have_bk_sdm_parameter_counts():
    """BK-SDM's paper: UNet 859.5M -> base 579.4M, small 482.3M, tiny 323.4M (counted on the meta device)."""
    expected = {"base": 579.4, "small": 482.3, "tiny": 323.4}
    assert round(parameter_count_on_meta(SD14) / 1e6, 1) == 859.5
    for level, millions in expected.items():
        assert round(parameter_count_on_meta(pruned_config(SD14, level)) / 1e6, 1) == millions
    tiny = pruned_config(SD14, "tiny")  # Nota-NetsPresso/BK-SDM src/unet_config/bk_tiny/config.json
    assert tiny["block_out_channels"] == [320, 640, 1280] and tiny["layers_per_block"] == 1
    assert tiny["down_block_types"] == ["CrossAttnDownBlock2D"] * 3 and tiny["mid_block_type"] is None
    assert tiny["up_block_types"] == ["CrossAttnUpBlock2D"] * 3


@pytest.mark.parametrize("level", ["base", "small", "tiny"])
def test_name_mapping_is_bk_sdm_copy_weight_from_teacher_on_an_sd_shaped_unet(level):
    teacher = UNet2DConditionModel.from_config(
        {**SD14, "block_out_channels": [8, 16, 32, 32], "cross_attention_dim": 16, "norm_num_groups": 8}
    )
    student, pruning = prune_unet(teacher, level)
    keys = list(student.state_dict())
    assert [teacher_module_name(key, pruning) for key in keys] == [
        bk_sdm_teacher_key(key, level) for key in keys
    ]


@pytest.mark.parametrize(
    "make_teacher, level",
    [(tiny_unet, "base"), (tiny_unet, "small"), (three_stage_unet, "small"), (three_stage_unet, "tiny")],
)
def test_every_student_tensor_is_the_teachers_and_the_config_loads_with_stock_diffusers(
    make_teacher, level, tmp_path
):
    teacher = make_teacher()
    student, pruning = prune_unet(teacher, level)
    teacher_state = teacher.state_dict()
    for key, tensor in student.state_dict().items():
        assert torch.equal(tensor, teacher_state[teacher_module_name(key, pruning)]), key
    assert sum(p.numel() for p in student.parameters()) < sum(p.numel() for p in teacher.parameters())
    student.save_pretrained(tmp_path / "unet")
    loaded = UNet2DConditionModel.from_pretrained(tmp_path, subfolder="unet")
    assert loaded.config.layers_per_block == teacher.config.layers_per_block - 1
    assert (loaded.mid_block is None) == (level != "base")
    assert len(loaded.down_blocks) == len(teacher.down_blocks) - (level == "tiny")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), student.state_dict().values()))


def test_the_pruned_student_samples_in_the_teachers_stock_pipeline():
    pipe = tiny_sd_pipeline()
    generator = torch.Generator().manual_seed(0)
    teacher_image = pipe("a red seven", num_inference_steps=3, generator=generator, output_type="np").images
    pipe.unet, _ = prune_unet(pipe.unet, "small")
    generator = torch.Generator().manual_seed(0)
    image = pipe("a red seven", num_inference_steps=3, generator=generator, output_type="np").images
    assert image.shape == teacher_image.shape == (1, 16, 16, 3) and torch.isfinite(torch.tensor(image)).all()
    assert isinstance(pipe, StableDiffusionPipeline) and not (image == teacher_image).all()


def test_a_pruned_student_of_the_embedded_teacher():
    """2 stages, cross-attention at the inner stage and in the mid block: base and small build, tiny
    is refused because the inner stage holds the only cross-attention left once the mid block goes."""
    from student_train.students.denoiser import load_denoiser
    from teacher_cache.config import EMBEDDED_TEACHER

    teacher = load_denoiser(str(EMBEDDED_TEACHER))
    small, _ = prune_unet(teacher, "small")
    assert sum(p.numel() for p in small.parameters()) <= 0.7 * sum(p.numel() for p in teacher.parameters())
    with pytest.raises(
        DistillCacheError, match="innermost stage of this 2-stage UNet .* only cross-attention"
    ):
        prune_unet(teacher, "tiny")


@pytest.mark.parametrize(
    "overrides, level, message",
    [
        (dict(layers_per_block=1), "base", "a stage with one resnet has none to remove"),
        (dict(mid_block_type=None), "small", "no mid block to remove"),
        (
            dict(down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D")),
            "small",
            "mid block .* holds its only cross-attention",
        ),
        ({}, "tiny", r"block_out_channels \[16, 32\]: the innermost two stages differ in width"),
        (dict(down_block_types=("DownBlock2D", "SimpleCrossAttnDownBlock2D")), "base", "block types"),
    ],
)
def test_levels_that_cannot_be_built_are_refused_with_the_reason(overrides, level, message):
    config = {**dict(tiny_unet().config), **overrides}
    with pytest.raises(DistillCacheError, match=message):
        pruned_config(config, level)


def test_a_transformer_denoiser_is_refused():
    from tests.tiny_models import tiny_sd3_pipeline

    with pytest.raises(DistillCacheError, match="SD3Transformer2DModel: use --student full or lora"):
        prune_unet(tiny_sd3_pipeline().transformer, "base")


@pytest.mark.parametrize("w_conditioned", [False, True])
def test_a_pruned_student_is_the_pruned_unet_with_a_w_embedding_when_its_method_feeds_w(w_conditioned):
    """build_student("pruned"): kind "pruned", the pruning record kept, a w-embedding (zero-initialised)
    exactly when the method is w-conditioned, and so the output of prune_unet's model at any w."""
    from student_train.students import build_student
    from tests.student_store_fixture import tiny_train_config
    from tests.tiny_models import LATENT_SHAPE, TEXT_DIM

    pruned, record = prune_unet(tiny_unet(), "small")
    config = tiny_train_config("unused", "unused", student="pruned", prune="small")
    student = build_student("pruned", tiny_unet(), config, w_conditioned)
    assert student.kind == "pruned" and student.pruning == record
    assert student.w_conditioned == w_conditioned
    generator = torch.Generator().manual_seed(0)
    x = torch.randn((2, *LATENT_SHAPE), generator=generator)
    context = torch.randn((2, 5, TEXT_DIM), generator=generator)
    t = torch.tensor([900, 100])
    with torch.no_grad():
        expected = pruned(x, t, encoder_hidden_states=context).sample
        got = student.denoise(
            x, t, {"encoder_hidden_states": context}, torch.tensor([2.0, 7.0]) if w_conditioned else None
        )
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
