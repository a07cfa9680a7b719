"""A student starts as its teacher (full, full with a w-embedding, LoRA), and the EMA copy moves by
exactly (1 - decay) towards the trained weights at each update."""

import pytest
import torch

from student_train.students import build_student
from student_train.students.denoiser import call_denoiser
from tests.student_store_fixture import (
    capture_batch,
    shared_capture,
    teacher_denoiser,  # noqa: F401 (autouse)
    tiny_train_config,
)


@pytest.mark.parametrize("kind, w_conditioned", [("full", False), ("full", True), ("lora", False)])
def test_a_new_student_gives_the_teachers_output(kind, w_conditioned):
    batch = capture_batch(shared_capture(), [0, 1, 2])
    x_t, t = batch.fields["trajectory"][:, 2], torch.tensor([999, 500, 20])
    with torch.no_grad():
        expected = call_denoiser(teacher_denoiser(), x_t, t, batch.cond)
        student = build_student(
            kind, teacher_denoiser(), tiny_train_config("unused", "unused"), w_conditioned
        )
        assert student.w_conditioned == w_conditioned
        for w in ([0.5, 3.0, 9.0], [4.0, 4.0, 4.0]):
            got = student.denoise(x_t, t, batch.cond, torch.tensor(w) if w_conditioned else None)
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_ema_moves_by_one_minus_decay_towards_the_trained_weights():
    config = tiny_train_config("unused", "unused", ema_decay=0.9)
    student = build_student("full", teacher_denoiser(), config)
    before = {name: p.detach().clone() for name, p in student.ema.named_parameters()}
    with torch.no_grad():
        for p in student.model.parameters():
            p.add_(1.0)  # the trained weights move away from the EMA by exactly 1
    student.update_ema()
    for name, p in student.ema.named_parameters():
        torch.testing.assert_close(p, before[name] + 0.1, rtol=0, atol=1e-6)  # 0.9 old + 0.1 (old + 1)


def test_a_denoiser_with_its_own_w_embedding_keeps_it():
    """An --init student that was w-conditioned: its trained w projection is kept, not re-zeroed."""
    import copy

    from tests.tiny_models import LATENT_SHAPE, TEXT_DIM, tiny_unet

    own = tiny_unet(time_cond_proj_dim=16)
    with torch.no_grad():
        own.time_embedding.cond_proj.weight.normal_(generator=torch.Generator().manual_seed(2))
    reference = copy.deepcopy(own).eval()
    student = build_student("full", own, tiny_train_config("unused", "unused", time_cond_proj_dim=16), True)
    generator = torch.Generator().manual_seed(0)
    x, context = (
        torch.randn((2, *LATENT_SHAPE), generator=generator),
        torch.randn((2, 5, TEXT_DIM), generator=generator),
    )
    t, w = torch.tensor([800, 50]), torch.tensor([1.5, 6.0])
    with torch.no_grad():
        expected = call_denoiser(reference, x, t, {"encoder_hidden_states": context}, w)
        got = student.denoise(x, t, {"encoder_hidden_states": context}, w)
        without_w = call_denoiser(reference, x, t, {"encoder_hidden_states": context}, torch.zeros(2))
    assert not torch.allclose(expected, without_w, atol=1e-4)  # the w projection matters here
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("dim", [0, 1])
def test_time_cond_proj_dim_zero_means_no_w_embedding_and_one_is_an_embedding(dim):
    """--time-cond-proj-dim 0: the w-conditioned method's full student is the denoiser itself (no copy,
    no w input); any positive size (1 too) adds the embedding."""
    teacher = teacher_denoiser()
    student = build_student(
        "full", teacher, tiny_train_config("unused", "unused", time_cond_proj_dim=dim), True
    )
    assert student.w_conditioned == (dim > 0)
    assert (student.model is teacher) == (dim == 0)
    if dim:
        assert student.model.time_embedding.cond_proj.in_features == dim


def test_a_full_student_trains_every_weight_and_its_ema_is_a_frozen_copy():
    teacher = teacher_denoiser()
    student = build_student("full", teacher, tiny_train_config("unused", "unused"))
    assert student.kind == "full" and student.model is teacher and student.model.training
    assert student.trainable_parameters() == list(teacher.parameters())
    assert student.ema is not teacher and not student.ema.training
    assert not any(p.requires_grad for p in student.ema.parameters())
    for (name, p), (ema_name, ema_p) in zip(teacher.named_parameters(), student.ema.named_parameters()):
        assert name == ema_name and torch.equal(p, ema_p) and p.data_ptr() != ema_p.data_ptr()


def test_a_w_conditioned_init_is_called_at_its_fixed_w_when_the_loss_gives_none():
    """origin.fixed_w (a w-conditioned --init under a method without w): every row gets that w; a w the
    loss passes wins. Checked against the w-embedded model called with the w by hand."""
    import copy

    from student_train.students.student import Origin
    from tests.tiny_models import LATENT_SHAPE, TEXT_DIM, tiny_unet

    own = tiny_unet(time_cond_proj_dim=16)
    with torch.no_grad():
        own.time_embedding.cond_proj.weight.normal_(generator=torch.Generator().manual_seed(2))
    reference = copy.deepcopy(own).eval()
    config = tiny_train_config("unused", "unused", time_cond_proj_dim=16)
    student = build_student("full", own, config, False, origin=Origin(fixed_w=3.0))
    assert student.fixed_w == 3.0
    generator = torch.Generator().manual_seed(0)
    x = torch.randn((3, *LATENT_SHAPE), generator=generator)
    cond = {"encoder_hidden_states": torch.randn((3, 5, TEXT_DIM), generator=generator)}
    t = torch.tensor([800, 400, 50])
    with torch.no_grad():
        at_fixed = call_denoiser(reference, x, t, cond, torch.full((3,), 3.0))
        at_given = call_denoiser(reference, x, t, cond, torch.tensor([0.5, 1.0, 7.0]))
        torch.testing.assert_close(student.denoise(x, t, cond), at_fixed, rtol=0, atol=1e-6)
        torch.testing.assert_close(student.target_denoise(x, t, cond), at_fixed, rtol=0, atol=1e-6)
        given = student.denoise(x, t, cond, torch.tensor([0.5, 1.0, 7.0]))
    torch.testing.assert_close(given, at_given, rtol=0, atol=1e-6)
    on_meta = student.guidance(torch.empty((2, *LATENT_SHAPE), device="meta"), None)  # a device not the CPU
    assert on_meta.device.type == "meta" and on_meta.shape == (2,)  # the fixed w lives where x_t does
    assert not torch.allclose(at_fixed, at_given, atol=1e-4)
