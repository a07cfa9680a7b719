"""A student starts as its teacher (full, full with a w-embedding, LoRA), and the EMA copy moves by
exactly (1 - decay) towards the trained weights at each update."""

import pytest
import torch

from student_train.students import build_student
from student_train.students.denoiser import call_denoiser, load_denoiser
from tests.student_store_fixture import (  # noqa: F401 (autouse)
    capture_batch,
    one_torch_thread,
    shared_capture,
    tiny_train_config,
)


def teacher_denoiser():
    return load_denoiser(str(shared_capture().teacher_dir))


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
