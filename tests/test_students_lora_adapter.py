"""A LoRA student's adapter is the one the flags ask for: rank --lora-rank and scale --lora-alpha / rank
(checked against the layer's output computed by hand, W x + alpha / r * B A x), only the adapter
trains, the frozen base sits in --base-dtype and the adapter in float32, and the inputs (the nested
conditioning too) reach the base in its dtype; a denoiser class without
LoRA target modules is refused naming the supported ones."""

import pytest
import torch

from shared.errors import DistillCacheError
from student_train.students import build_student, lora_target_modules
from student_train.students.student import cast_floating
from tests.student_store_fixture import (
    capture_batch,
    shared_capture,
    teacher_denoiser,  # noqa: F401 (one_torch_thread: autouse)
    tiny_train_config,
)
from tests.tiny_models import tiny_sd3_transformer


def test_the_adapter_has_the_flags_rank_and_scale_by_hand():
    config = tiny_train_config("unused", "unused", lora_rank=2, lora_alpha=6)  # peft's defaults: r 8, alpha 8
    student = build_student("lora", teacher_denoiser(), config)
    layer = student.model.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
    lora_a, lora_b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    assert lora_a.shape == (2, layer.in_features) and lora_b.shape == (layer.out_features, 2)
    with torch.no_grad():
        lora_b.copy_(torch.randn(lora_b.shape, generator=torch.Generator().manual_seed(0)))  # B starts at 0
        x = torch.randn(3, layer.in_features, generator=torch.Generator().manual_seed(1))
        base = torch.nn.functional.linear(x, layer.base_layer.weight, layer.base_layer.bias)
        expected = base + 3.0 * (x @ lora_a.T @ lora_b.T)
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)  # alpha / r = 6 / 2


@pytest.mark.parametrize("base_dtype, base_torch_dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_only_the_adapter_trains_in_float32_over_a_base_in_the_base_dtype(base_dtype, base_torch_dtype):
    student = build_student(
        "lora", teacher_denoiser(), tiny_train_config("unused", "unused", base_dtype=base_dtype)
    )
    trainable = {name for name, p in student.model.named_parameters() if p.requires_grad}
    adapter = {name for name, _ in student.model.named_parameters() if ".lora_" in name}
    assert trainable == adapter and adapter
    assert {p for p in student.trainable_parameters()} == {
        p for name, p in student.model.named_parameters() if name in adapter
    }
    for name, param in student.model.named_parameters():
        assert param.dtype == (torch.float32 if name in adapter else base_torch_dtype), name
    assert student.input_dtype == base_torch_dtype


def test_a_denoiser_class_without_target_modules_is_refused_naming_the_supported_ones():
    with pytest.raises(DistillCacheError) as refused:
        lora_target_modules(torch.nn.Linear(2, 2))
    message = str(refused.value)
    assert message == (
        "--student lora has no target modules for a Linear denoiser (supported: "
        "UNet2DConditionModel, SD3Transformer2DModel); train --student full"
    )


def test_the_conditioning_reaches_a_bf16_base_cast_floating_tensors_only_nested_too():
    cond = {
        "encoder_hidden_states": torch.tensor([[0.1, 1.0 / 3.0]]),
        "added_cond_kwargs": {"time_ids": torch.tensor([[512.25, 7.0]]), "ids": torch.tensor([3, 4])},
        "flag": True,
    }
    cast = cast_floating(cond, torch.bfloat16)
    assert cast.keys() == cond.keys() and cast["added_cond_kwargs"].keys() == {"time_ids", "ids"}
    assert (
        cast["encoder_hidden_states"].dtype == cast["added_cond_kwargs"]["time_ids"].dtype == torch.bfloat16
    )
    assert torch.equal(cast["encoder_hidden_states"], torch.tensor([[0.1, 1.0 / 3.0]], dtype=torch.bfloat16))
    assert torch.equal(
        cast["added_cond_kwargs"]["time_ids"], torch.tensor([[512.0, 7.0]], dtype=torch.bfloat16)
    )
    assert cast["added_cond_kwargs"]["ids"].dtype == torch.int64 and cast["flag"] is True
    assert cond["encoder_hidden_states"].dtype == torch.float32  # the caller's tensors are not changed


def test_a_bf16_lora_student_starts_as_the_teacher_called_in_bf16():
    batch = capture_batch(shared_capture(), [0, 1])
    x_t, t = batch.fields["trajectory"][:, 3], torch.tensor([700, 300])
    teacher = teacher_denoiser().to(torch.bfloat16)
    with torch.no_grad():
        expected = teacher(
            x_t.to(torch.bfloat16),
            t,
            encoder_hidden_states=batch.cond["encoder_hidden_states"].to(torch.bfloat16),
        ).sample.float()
        student = build_student(
            "lora", teacher_denoiser(), tiny_train_config("unused", "unused", base_dtype="bf16")
        )
        got = student.denoise(x_t, t, batch.cond)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_a_bf16_lora_sd3_student_gets_its_pooled_projections_in_bf16():
    """SD3's pooled projections feed a layer no adapter wraps (time_text_embed): float32 there would
    meet bf16 weights. The student equals the bf16 transformer called with bf16 inputs by hand."""
    generator = torch.Generator().manual_seed(0)
    x_t, t = torch.randn((2, 4, 8, 8), generator=generator), torch.tensor([700.0, 300.0])
    cond = {
        "encoder_hidden_states": torch.randn((2, 5, 64), generator=generator),
        "pooled_projections": torch.randn((2, 64), generator=generator),
    }
    with torch.no_grad():
        bf16 = {name: value.to(torch.bfloat16) for name, value in cond.items()}
        expected = (
            tiny_sd3_transformer()
            .to(torch.bfloat16)(hidden_states=x_t.to(torch.bfloat16), timestep=t, **bf16)
            .sample.float()
        )
        config = tiny_train_config("unused", "unused", base_dtype="bf16")
        got = build_student("lora", tiny_sd3_transformer(), config).denoise(x_t, t, cond)
    assert got.dtype == torch.float32 and expected.abs().max() < 8
    torch.testing.assert_close(got, expected, rtol=0, atol=2**-5)  # 1 bf16 ulp below 8: rounding order


LCM_LORA_SD_SCRIPT = [
    "to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
    "conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj",
]  # fmt: skip
DREAMBOOTH_LORA_SD3_SCRIPT = [
    "attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out",
    "attn.to_k", "attn.to_out.0", "attn.to_q", "attn.to_v",
]  # fmt: skip


def named_by(model: torch.nn.Module, suffixes: list[str]) -> dict[str, set[str]]:
    """suffix -> the module names of `model` that are it or end in "." + it."""
    return {
        suffix: {name for name, _ in model.named_modules() if name == suffix or name.endswith("." + suffix)}
        for suffix in suffixes
    }


def adapted(model: torch.nn.Module) -> set[str]:
    """The modules peft wrapped (they hold a `lora_A` ModuleDict)."""
    return {
        name
        for name, module in model.named_modules()
        if isinstance(getattr(module, "lora_A", None), torch.nn.ModuleDict)
    }


def check_targets(denoiser, fresh, suffixes):
    expected = named_by(fresh, suffixes)
    assert all(expected.values()), {s: n for s, n in expected.items() if not n}  # each name is in the model
    student = build_student(
        "lora", denoiser, tiny_train_config("unused", "unused", lora_rank=1, lora_alpha=1)
    )
    assert adapted(student.model) == set().union(*expected.values())
    assert student.model.training  # built for training
    return student


def test_a_unet_gets_the_lcm_lora_scripts_modules_at_rank_one():
    student = check_targets(teacher_denoiser(), teacher_denoiser(), LCM_LORA_SD_SCRIPT)
    layer = student.model.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
    assert layer.lora_A["default"].weight.shape == (1, layer.in_features)  # rank 1 is a valid rank


def test_an_sd3_transformer_gets_the_dreambooth_sd3_scripts_modules():
    check_targets(tiny_sd3_transformer(), tiny_sd3_transformer(), DREAMBOOTH_LORA_SD3_SCRIPT)
