"""distill.json by hand: the recommended steps / guidance / w of each sampler (the store's guidance - 1
clamped to [w_min, w_max], a fixed --init w, the teacher's own steps and CFG scale for blockkd, the
teacher's step count for guidance), the exported step counts, timesteps as JSON ints, eta for tcd
only, and where the teacher and the store came from. The weights: written in --save-dtype, read back
by stock diffusers (full) or stock `load_lora_weights` with alpha != rank (LoRA), and
load_exported_student / load_fused_student give the student's own outputs (also from a teacher
folder given anew, when the recorded one has moved)."""

import json
from types import SimpleNamespace

import pytest
import torch
from diffusers import (
    FlowMatchEulerDiscreteScheduler,
    StableDiffusionPipeline,
    TCDScheduler,
    UNet2DConditionModel,
)

from student_train.export import distill_record, export_student, load_exported_student, load_fused_student
from student_train.export.folder import json_timesteps, takes_eta
from student_train.sampling import student_scheduler
from student_train.students import build_student
from student_train.students.denoiser import call_denoiser
from tests.student_store_fixture import one_torch_thread, shared_capture, teacher_denoiser, tiny_train_config  # noqa: F401
from tests.tiny_models import LATENT_SHAPE, TEXT_DIM

SUMMARY = {"steps": 0}


def reader():
    capture = shared_capture()  # DDIM teacher, 10 steps at guidance 2.0
    return SimpleNamespace(
        settings=capture.settings, teacher=capture.teacher, fingerprint=capture.fingerprint
    )


def record_of(method, student_kind="full", fixed_w=None, w_conditioned=None, **flags):
    config = tiny_train_config("store-url", "unused", method=method, student=student_kind, **flags)
    if w_conditioned is None:
        w_conditioned = method in ("lcm", "tcd", "guidance")
    student = build_student(student_kind, teacher_denoiser(), config, w_conditioned)
    student.fixed_w = fixed_w
    settings = reader().settings
    scheduler = student_scheduler(
        method, settings["scheduler"], len(settings["timesteps"]), config.timestep_scaling
    )
    return distill_record(student, config, reader(), SUMMARY, scheduler), config


@pytest.mark.parametrize(
    "method, kind, fixed_w, flags, steps, scale, w",
    [
        ("lcm", "full", None, dict(w_min=1.5, w_max=3.0), 2, 2.5, 1.5),  # store g - 1 = 1 < w_min
        ("lcm", "full", None, dict(w_min=0.1, w_max=0.5), 2, 1.5, 0.5),  # 1 > w_max
        ("lcm", "full", None, dict(w_min=0.5, w_max=3.0, num_student_steps=4), 4, 2.0, 1.0),  # within
        ("lcm", "lora", None, dict(), 2, 1.0, None),  # no w input: no CFG either
        ("direct", "full", 3.0, dict(), 2, 4.0, 3.0),  # a w-conditioned --init's fixed w
        ("guidance", "full", None, dict(w_min=1.5, w_max=3.0), 10, 2.5, 1.5),  # the teacher's 10 steps
        ("blockkd", "full", None, dict(), 10, 2.0, None),  # samples as the teacher: its steps, CFG at g
    ],
)
def test_recommended_sampling_by_hand(method, kind, fixed_w, flags, steps, scale, w):
    record, config = record_of(method, kind, fixed_w, **flags)
    recommended, sampling = record["recommended"], record["sampling"]
    assert (recommended["num_inference_steps"], recommended["guidance_scale"], sampling["guidance_w"]) == (
        steps,
        scale,
        w,
    )
    assert type(recommended["num_inference_steps"]) is int and type(recommended["guidance_scale"]) is float
    assert sorted(sampling["timesteps"], key=int) == [str(k) for k in sorted({1, 2, 4, 8, steps})]
    assert recommended["timesteps"] == sampling["timesteps"][str(steps)]
    assert all(type(t) is int for k in sampling["timesteps"] for t in sampling["timesteps"][k])
    assert all(len(sampling["timesteps"][k]) == int(k) for k in sampling["timesteps"])
    assert "eta" not in recommended
    assert record["format_version"] == 1 and (record["method"], record["student"]) == (method, kind)
    capture = shared_capture()
    assert record["teacher"] == {
        "source": capture.teacher["source"],
        "revision": capture.teacher["revision"],
        "fingerprint": capture.fingerprint,
    }
    assert record["store"] == {"url": "store-url", "fingerprint": capture.fingerprint}
    assert record["denoiser"] == "unet" and sampling["prediction_type"] == "epsilon"
    assert (
        sampling["timestep_scaling"] == config.timestep_scaling
        and sampling["sampler"]
        == {
            "lcm": "lcm",
            "direct": "ddim",
            "guidance": "scheduler",
            "blockkd": "cfg",
        }[method]
    )
    assert record["pruning"] is None and record["lineage"] == [] and record["train"] == SUMMARY
    assert record["settings"] == config.to_json()


def test_a_w_conditioned_student_of_a_method_without_a_w_range_samples_in_lcms_range():
    """A direct student of a teacher that has a w embedding (an LCM teacher) and no fixed --init w: the
    store's guidance - 1 = 1, clamped to lcm's default [5, 15] (w_range's fallback) -> w 5, scale 6."""
    record, _ = record_of("direct", w_conditioned=True, w_min=None, w_max=None)
    assert (record["recommended"]["guidance_scale"], record["sampling"]["guidance_w"]) == (6.0, 5.0)
    record, _ = record_of("direct", w_conditioned=True, w_min=None, w_max=0.5)  # a given end wins
    assert (record["recommended"]["guidance_scale"], record["sampling"]["guidance_w"]) == (1.5, 0.5)


def test_a_given_teacher_is_recorded_without_the_stores_revision_and_tcd_records_its_eta():
    record, _ = record_of("tcd", teacher="/elsewhere/teacher", tcd_gamma=0.3)
    assert record["teacher"]["source"] == "/elsewhere/teacher" and record["teacher"]["revision"] is None
    assert record["recommended"]["eta"] == 0.3
    assert takes_eta(TCDScheduler()) and not takes_eta(FlowMatchEulerDiscreteScheduler())


def test_reflow_records_the_schedulers_own_steps_and_a_flow_prediction():
    record, _ = record_of("reflow")
    assert record["recommended"]["timesteps"] is None and record["recommended"]["schedule_kwargs"] == {}
    assert record["sampling"]["prediction_type"] == "flow_prediction"


def test_json_timesteps_are_ints_where_integral():
    assert json_timesteps(None) is None
    converted = json_timesteps([999.0, 499.5, 3, 0.0])
    assert converted == [999, 499.5, 3, 0] and [type(t) for t in converted] == [int, float, int, int]


def inputs():
    generator = torch.Generator().manual_seed(5)
    x = torch.randn((2, *LATENT_SHAPE), generator=generator)
    return (
        x,
        torch.tensor([900, 40]),
        {"encoder_hidden_states": torch.randn((2, 5, TEXT_DIM), generator=generator)},
    )


def perturb(parameters) -> None:
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in parameters:
            p.add_(0.05 * torch.randn(p.shape, generator=generator))


@pytest.mark.parametrize("save_dtype, dtype", [("fp32", torch.float32), ("fp16", torch.float16)])
def test_a_full_student_is_saved_in_the_save_dtype_and_read_back_by_stock_diffusers(
    tmp_path, save_dtype, dtype
):
    config = tiny_train_config("store-url", tmp_path, method="direct", save_dtype=save_dtype)
    student = build_student("full", teacher_denoiser(), config)
    perturb(student.model.parameters())
    trained = {name: p.detach().clone() for name, p in student.model.named_parameters()}
    export_student(student, config, reader(), tmp_path, SUMMARY)
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "unet" / "diffusion_pytorch_model.safetensors"))
    assert saved.keys() == trained.keys() and {value.dtype for value in saved.values()} == {dtype}
    stock = UNet2DConditionModel.from_pretrained(tmp_path, subfolder="unet", torch_dtype=dtype)
    for name, p in stock.named_parameters():
        assert torch.equal(p, trained[name].to(dtype)), name
    assert json.loads((tmp_path / "distill.json").read_text())["method"] == "direct"
    assert (tmp_path / "scheduler" / "scheduler_config.json").exists()
    model, distill = load_exported_student(tmp_path)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert distill["student"] == "full"


def test_a_lora_student_reloads_in_a_stock_pipeline_and_fused_with_its_own_outputs(tmp_path):
    config = tiny_train_config("store-url", tmp_path, method="lcm", student="lora", lora_rank=2, lora_alpha=6)
    student = build_student("lora", teacher_denoiser(), config)
    perturb(p for name, p in student.model.named_parameters() if "lora_B" in name)  # B starts at 0
    x, t, cond = inputs()
    with torch.no_grad():
        expected = student.denoise(x, t, cond)
        teacher = call_denoiser(teacher_denoiser(), x, t, cond)
    assert not torch.allclose(expected, teacher, atol=1e-4)  # the adapter changes the output
    moved = reader()  # the store names a teacher folder that has since moved: --teacher gives it
    moved.teacher = {"source": str(tmp_path / "moved-teacher"), "revision": None}
    export_student(student, config, moved, tmp_path, SUMMARY)
    teacher_dir = str(shared_capture().teacher_dir)
    pipe = StableDiffusionPipeline.from_pretrained(teacher_dir)
    pipe.load_lora_weights(tmp_path)
    exported, _ = load_exported_student(tmp_path, teacher_dir)
    fused, _ = load_fused_student(tmp_path, teacher_dir)
    assert not any("lora" in name for name, _ in fused.named_parameters())
    assert not exported.training and not any(p.requires_grad for p in exported.parameters())
    with torch.no_grad():
        for model in (pipe.unet, exported, fused):
            torch.testing.assert_close(call_denoiser(model, x, t, cond), expected, rtol=1e-4, atol=1e-5)
