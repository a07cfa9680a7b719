"""Students: built from the denoiser without copying it, LoRA initialised from --seed alone, and
gradient checkpointing that changes memory, not gradients."""

import torch

from student_train.data.randomness import SampleRandom
from student_train.students import build_student
from tests.student_store_fixture import (
    capture_batch,
    shared_capture,
    teacher_denoiser,  # noqa: F401 (autouse)
    tiny_train_config,
)


def lora_weights(student) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in student.model.named_parameters() if "lora_" in name}


def test_lora_student_adapts_the_denoiser_in_place_with_a_seeded_init():
    base = teacher_denoiser()
    student = build_student("lora", base, tiny_train_config("unused", "unused", seed=3))
    assert student.model is base  # no second copy of the base weights (an SD1.5 UNet is 3.4 GB)
    again = lora_weights(
        build_student("lora", teacher_denoiser(), tiny_train_config("unused", "unused", seed=3))
    )
    other = lora_weights(
        build_student("lora", teacher_denoiser(), tiny_train_config("unused", "unused", seed=4))
    )
    ours = lora_weights(student)
    assert ours and ours.keys() == again.keys()
    assert all(torch.equal(ours[name], again[name]) for name in ours)
    assert not all(torch.equal(ours[name], other[name]) for name in ours)


def test_gradient_checkpointing_keeps_the_gradients():
    capture = shared_capture()
    batch = capture_batch(capture, [0, 1, 2])
    x_t = batch.fields["trajectory"][:, 3]
    t = torch.full((3,), 500)
    grads = []
    for checkpointing in (False, True):
        config = tiny_train_config("unused", "unused", gradient_checkpointing=checkpointing)
        student = build_student("lora", teacher_denoiser(), config)
        assert student.model.is_gradient_checkpointing == checkpointing
        calls = []  # a pre-hook: the recompute stops early, before a forward hook would fire
        student.model.down_blocks[0].resnets[0].register_forward_pre_hook(
            lambda *_, calls=calls: calls.append(1)
        )
        noise = SampleRandom(0, 0, batch.sample_ids).normal(tuple(x_t.shape[1:]))
        loss = (student.denoise(x_t, t, batch.cond) - noise).pow(2).mean()
        loss.backward()
        assert len(calls) == (2 if checkpointing else 1)  # recomputed in the backward pass
        grads.append(
            {name: p.grad.clone() for name, p in student.model.named_parameters() if p.grad is not None}
        )
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    assert all(torch.allclose(grads[0][name], grads[1][name], atol=1e-6) for name in grads[0])
