"""An SD3 student's folder names its denoiser `transformer`: a full student is saved in `transformer/`
and read back by stock `SD3Transformer2DModel.from_pretrained(..., subfolder="transformer")`, a LoRA
student's adapter keys carry the "transformer." prefix that stock `StableDiffusion3Pipeline.load_lora_weights`
reads, and `load_exported_student` gives each student's own outputs."""

import copy
import json

import pytest
import torch
from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

from shared.store import StoreReader
from student_train.export import export_student, load_exported_student
from student_train.students import build_student
from student_train.students.denoiser import call_denoiser, load_denoiser
from tests.family_stores import family_capture
from tests.student_store_fixture import one_torch_thread, tiny_train_config  # noqa: F401

SUMMARY = {"steps": 0}


@pytest.fixture(scope="module")
def sd3():
    capture = family_capture("sd3")
    return capture, StoreReader(capture.store), load_denoiser(str(capture.teacher_dir), "transformer")


def inputs():
    generator = torch.Generator().manual_seed(0)
    return (
        torch.randn(2, 4, 8, 8, generator=generator),
        torch.tensor([900.0, 300.0]),
        {
            "encoder_hidden_states": torch.randn(2, 20, 64, generator=generator),
            "pooled_projections": torch.randn(2, 64, generator=generator),
        },
    )


def perturbed(student, only: str = ""):
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in student.model.named_parameters():
            if only in name:
                p.add_(0.05 * torch.randn(p.shape, generator=generator))
    return student


def outputs(model) -> torch.Tensor:
    with torch.no_grad():
        return call_denoiser(model, *inputs())


def test_a_full_sd3_student_is_saved_as_transformer(sd3, tmp_path):
    capture, reader, teacher = sd3
    assert reader.settings["denoiser"] == "transformer"
    config = tiny_train_config(capture.store, tmp_path, method="direct")
    student = perturbed(build_student("full", copy.deepcopy(teacher), config))
    expected = outputs(student.model)
    assert not torch.allclose(expected, outputs(teacher), atol=1e-4)
    export_student(student, config, reader, tmp_path, SUMMARY)
    assert json.loads((tmp_path / "distill.json").read_text())["denoiser"] == "transformer"
    stock = SD3Transformer2DModel.from_pretrained(tmp_path, subfolder="transformer")
    model, _ = load_exported_student(tmp_path)
    for got in (outputs(stock), outputs(model)):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_a_lora_sd3_student_reloads_in_a_stock_sd3_pipeline(sd3, tmp_path):
    capture, reader, teacher = sd3
    config = tiny_train_config(capture.store, tmp_path, method="direct", student="lora", lora_rank=2)
    student = perturbed(build_student("lora", copy.deepcopy(teacher), config), only="lora_B")
    expected = outputs(student.model)
    assert not torch.allclose(expected, outputs(teacher), atol=1e-4)
    export_student(student, config, reader, tmp_path, SUMMARY)
    pipe = StableDiffusion3Pipeline.from_pretrained(
        capture.teacher_dir, text_encoder_3=None, tokenizer_3=None
    )
    pipe.load_lora_weights(tmp_path)
    model, _ = load_exported_student(tmp_path)
    for got in (outputs(pipe.transformer), outputs(model)):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
