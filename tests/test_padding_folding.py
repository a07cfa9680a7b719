"""SD3 students fold the T5-less padding (shared/padding_attention.py): a batch whose context ends in
n >= 2 all-zero tokens runs on L - n + 1 tokens, the last counted n times. Each output is checked
against diffusers' own SD3Transformer2DModel with the stock JointAttnProcessor2_0 on the full context;
a batch that does not qualify must take the stock path bit for bit."""

import copy
from types import SimpleNamespace

import pytest
import torch
from diffusers.models.attention_processor import JointAttnProcessor2_0

from shared.padding_attention import RepeatedPaddingJointAttnProcessor, fold_trailing_padding
from shared.schedule import NoiseSchedule
from shared.store import StoreReader
from student_train.data.batches import TrainingData
from student_train.losses.direct import DirectLoss
from student_train.losses.distance import Distance
from student_train.students.denoiser import load_denoiser
from student_train.students.student import build_student
from tests.family_stores import family_capture
from tests.student_store_fixture import one_torch_thread  # noqa: F401 (autouse)
from tests.tiny_models import tiny_sd3_pipeline

CLIP_TOKENS, PADDING = 16, 256
SETTINGS = SimpleNamespace(
    lora_rank=4, lora_alpha=4, seed=0, base_dtype="fp32", ema_decay=0.9, time_cond_proj_dim=0,
    gradient_checkpointing=False, prune="none",
)  # fmt: skip


@pytest.fixture(scope="module")
def transformer():
    return tiny_sd3_pipeline().transformer


def stock(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model` with diffusers' stock joint processor everywhere."""
    model = copy.deepcopy(model)
    model.set_attn_processor(JointAttnProcessor2_0())
    return model


def inputs(batch: int = 2, padding: int = PADDING, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x_t = torch.randn(batch, 4, 8, 8, generator=generator)
    timesteps = torch.tensor([900.0, 300.0][:batch])
    clip = torch.randn(batch, CLIP_TOKENS, 64, generator=generator)
    context = torch.cat([clip, torch.zeros(batch, padding, 64)], dim=1)  # (B, 16 + 256, 64): T5's zeros
    return x_t, timesteps, {"encoder_hidden_states": context, "pooled_projections": torch.randn(batch, 64)}


def context_lengths(model: torch.nn.Module) -> list[int]:
    """Context lengths the first joint attention sees, appended per call."""
    seen = []
    model.transformer_blocks[0].attn.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["encoder_hidden_states"].shape[1]), with_kwargs=True
    )
    return seen


def make_student(kind: str, transformer, settings=SETTINGS):
    student = build_student(kind, copy.deepcopy(transformer), settings)
    if kind == "lora":  # lora_B starts at zero: give the adapters a non-zero path to check
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, param in student.model.named_parameters():
                if "lora_B" in name:
                    param.copy_(0.1 * torch.randn(param.shape, generator=generator))
    return student


def test_fold_keeps_the_first_token_of_the_padding_and_counts_it():
    context = torch.cat([torch.ones(2, 3, 4), torch.zeros(2, 5, 4)], dim=1)
    context[1, 3] = 0.5  # row 1: only 4 zero tokens at the end
    folded, copies = fold_trailing_padding(context)
    assert copies == 4 and torch.equal(folded, context[:, :5])
    context[0, -1, 0] = 1e-30  # one non-zero number in the last token of one row: no fold
    assert fold_trailing_padding(context) == (context, 1)


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_folded_student_equals_the_stock_transformer_on_the_full_context(transformer, kind):
    student = make_student(kind, transformer)
    reference = stock(student.model)  # the same weights (and adapters), stock processors
    seen = context_lengths(student.model)
    x_t, timesteps, cond = inputs()
    output = student.denoise(x_t, timesteps, cond)
    expected = reference(hidden_states=x_t, timestep=timesteps, **cond, return_dict=False)[0]
    assert seen == [CLIP_TOKENS + 1]  # folded: 16 CLIP tokens + 1 padding token counted 256 times
    torch.testing.assert_close(output, expected, atol=1e-5, rtol=1e-5)
    if kind == "lora":  # the adapters (peft-wrapped projections the processor calls) are in the path
        base = stock(transformer)(hidden_states=x_t, timestep=timesteps, **cond, return_dict=False)[0]
        assert (output - base).abs().max() > 1e-3
    # the gradients of the trainable weights too
    output.square().mean().backward()
    expected.square().mean().backward()
    for (name, ours), theirs in zip(student.model.named_parameters(), reference.parameters()):
        if ours.requires_grad:
            torch.testing.assert_close(ours.grad, theirs.grad, atol=1e-5, rtol=1e-4, msg=name)
    # the EMA target (full) and the LoRA student itself fold as well
    with torch.no_grad():
        target = student.target_denoise(x_t, timesteps, cond)
    torch.testing.assert_close(target, expected.detach(), atol=1e-5, rtol=1e-5)


def test_folding_survives_gradient_checkpointing(transformer):
    """diffusers' checkpointing recomputes each block in backward with the same joint_attention_kwargs."""
    student = make_student(
        "full", transformer, SimpleNamespace(**{**vars(SETTINGS), "gradient_checkpointing": True})
    )
    reference = stock(student.model)
    x_t, timesteps, cond = inputs()
    student.denoise(x_t, timesteps, cond).square().mean().backward()
    reference(hidden_states=x_t, timestep=timesteps, **cond, return_dict=False)[0].square().mean().backward()
    for ours, theirs in zip(student.model.parameters(), reference.parameters()):
        torch.testing.assert_close(ours.grad, theirs.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "kind, padding, non_zero_row",
    [("full", 0, None), ("full", 1, None), ("lora", PADDING, 1)],  # row 1's last token is not padding
)
def test_a_batch_without_two_shared_zero_tokens_takes_the_stock_path(
    transformer, kind, padding, non_zero_row
):
    student = make_student(kind, transformer)
    x_t, timesteps, cond = inputs(padding=padding)
    if non_zero_row is not None:
        cond["encoder_hidden_states"][non_zero_row, -1, 3] = 0.25
    reference = stock(student.model)
    seen = context_lengths(student.model)
    output = student.denoise(x_t, timesteps, cond)
    assert seen == [CLIP_TOKENS + padding]  # the whole context
    assert torch.equal(output, reference(hidden_states=x_t, timestep=timesteps, **cond, return_dict=False)[0])


def test_the_processor_is_a_joint_processor_and_stock_with_one_copy(transformer):
    student = make_student("full", transformer)
    processors = set(map(type, student.model.attn_processors.values()))
    assert processors == {RepeatedPaddingJointAttnProcessor} and student.folds_padding
    assert isinstance(RepeatedPaddingJointAttnProcessor(1), JointAttnProcessor2_0)


def test_a_direct_loss_on_the_sd3_store_is_the_stock_loss():
    """The direct loss (and its gradient) of a full student on the tiny SD3 store's rows, folded vs
    stock; every method reaches the student through the same Student.call."""
    capture = family_capture("sd3")
    reader = StoreReader(capture.store)
    settings = reader.settings
    schedule = NoiseSchedule.from_scheduler_config(
        settings["scheduler"]["config"], settings["scheduler"]["class"]
    )
    batch = TrainingData(reader, ("noise", "final_latents"), split="all", loader="memory").batch(
        torch.arange(3), "cpu"
    )
    assert fold_trailing_padding(batch.cond["encoder_hidden_states"])[1] == PADDING
    denoiser = load_denoiser(str(capture.teacher_dir), "transformer")
    folded = build_student("full", copy.deepcopy(denoiser), SETTINGS)
    plain = build_student("full", stock(denoiser), SETTINGS)
    plain.folds_padding = False  # stock processors, whole context
    seen = context_lengths(folded.model)
    loss = DirectLoss(schedule, settings["timesteps"][::3], "flow_prediction", Distance("l2"))
    values = [loss(student, batch, None, 0) for student in (folded, plain)]
    assert seen == [CLIP_TOKENS + 1] * 2  # both student steps folded
    torch.testing.assert_close(values[0], values[1], atol=1e-6, rtol=1e-5)
    assert values[0].min() > 1e-3  # a loss that measures something
    for value in values:
        value.mean().backward()
    for ours, theirs in zip(folded.model.parameters(), plain.model.parameters()):
        torch.testing.assert_close(ours.grad, theirs.grad, atol=1e-6, rtol=1e-4)


def test_two_shared_zero_tokens_are_the_fewest_that_fold(transformer):
    student = make_student("full", transformer)
    reference = stock(student.model)
    seen = context_lengths(student.model)
    x_t, timesteps, cond = inputs(padding=2)
    output = student.denoise(x_t, timesteps, cond)
    assert seen == [CLIP_TOKENS + 1]  # 16 CLIP tokens + 1 padding token counted twice
    expected = reference(hidden_states=x_t, timestep=timesteps, **cond, return_dict=False)[0]
    torch.testing.assert_close(output, expected, atol=1e-5, rtol=1e-5)


def test_a_unet_student_never_folds_its_context():
    """UNets keep their stock cross-attention: a context ending in zero tokens reaches them whole,
    whether the student comes from build_student or from build_full alone."""
    from student_train.students.denoiser import call_denoiser
    from student_train.students.student import build_full
    from tests.tiny_models import TEXT_DIM, tiny_unet

    generator = torch.Generator().manual_seed(0)
    x_t = torch.randn(2, 4, 8, 8, generator=generator)
    context = torch.cat(
        [torch.randn(2, 3, TEXT_DIM, generator=generator), torch.zeros(2, 4, TEXT_DIM)], dim=1
    )
    cond, timesteps = {"encoder_hidden_states": context}, torch.tensor([900, 300])
    with torch.no_grad():
        expected = call_denoiser(tiny_unet(), x_t, timesteps, cond)
        for student in (
            build_student("full", tiny_unet(), SETTINGS),
            build_full(tiny_unet(), SETTINGS, False),
        ):
            assert not student.folds_padding
            seen = []
            student.model.down_blocks[0].attentions[0].transformer_blocks[0].attn2.register_forward_pre_hook(
                lambda module, args, kwargs, seen=seen: seen.append(kwargs["encoder_hidden_states"].shape[1]),
                with_kwargs=True,
            )
            torch.testing.assert_close(student.denoise(x_t, timesteps, cond), expected, rtol=0, atol=0)
            assert seen == [7]
