"""distill.json by hand: the recommended steps / guidance / w of each sampler (the store's guidance - 1
clamped to [w_min, w_max], a fixed --init w, the teacher's own steps and CFG scale for blockkd, the
teacher's step count for guidance), the exported step counts, timesteps as JSON ints, eta for tcd
only, and where the teacher and the store came from. The weights: written in --save-dtype, read back
by stock diffusers (full) or stock `load_lora_weights` with alpha != rank (LoRA), and
load_exported_student / load_fused_student give the student's own outputs (also from a teacher
folder given anew, when the recorded one has moved)."""

import json
from dataclasses import replace
from types import SimpleNamespace

import pytest
import safetensors.torch
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


@pytest.mark.parametrize(
    "given, recorded",
    [
        (None, {"source": "org/teacher", "revision": "abc123"}),
        ("/elsewhere", {"source": "/elsewhere", "revision": None}),
    ],
)
def test_a_hub_teachers_revision_is_recorded_unless_a_teacher_is_given(given, recorded):
    hub = reader()
    hub.teacher = {"source": "org/teacher", "revision": "abc123"}  # a store captured from the Hub
    config = tiny_train_config("store-url", "unused", method="direct", teacher=given)
    scheduler = student_scheduler("direct", hub.settings["scheduler"], 10, config.timestep_scaling)
    student = build_student("full", teacher_denoiser(), config)
    record = distill_record(student, config, hub, SUMMARY, scheduler)
    assert record["teacher"] == {**recorded, "fingerprint": hub.fingerprint}


def test_reflow_records_the_schedulers_own_steps_and_a_flow_prediction():
    record, _ = record_of("reflow")
    assert record["recommended"]["timesteps"] is None and record["recommended"]["schedule_kwargs"] == {}
    assert record["sampling"]["prediction_type"] == "flow_prediction"


@pytest.mark.parametrize("method", ["lcm", "direct", "guidance", "tcd", "progressive", "blockkd"])
def test_the_schedule_kwargs_make_a_stock_pipeline_step_at_the_trained_timesteps(method):
    """diffusers' own retrieve_timesteps (what StableDiffusionPipeline calls), given the exported
    scheduler, num_inference_steps and schedule_kwargs, gives the recommended (trained) timesteps."""
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import retrieve_timesteps

    record, config = record_of(method)
    recommended, settings = record["recommended"], reader().settings
    scheduler = student_scheduler(
        method, settings["scheduler"], len(settings["timesteps"]), config.timestep_scaling
    )
    timesteps, count = retrieve_timesteps(
        scheduler, recommended["num_inference_steps"], None, **recommended["schedule_kwargs"]
    )
    assert [int(t) for t in timesteps] == recommended["timesteps"] and count == len(recommended["timesteps"])


def eight_step_reader():
    """The shared capture's reader as if its teacher had run 8 DDIM steps."""
    from diffusers import DDIMScheduler

    settings = reader().settings
    ddim = DDIMScheduler.from_config(settings["scheduler"]["config"])
    ddim.set_timesteps(8)
    eight = reader()
    eight.settings = {**settings, "timesteps": [float(t) for t in ddim.timesteps], "num_inference_steps": 8}
    return eight


def test_an_eight_step_teacher_exports_eight_steps_too():
    """The exported step counts are 1, 2, 4, 8 up to the teacher's own S, S included."""
    eight = eight_step_reader()
    config = tiny_train_config("store-url", "unused", method="direct")
    scheduler = student_scheduler("direct", eight.settings["scheduler"], 8, config.timestep_scaling)
    record = distill_record(
        build_student("full", teacher_denoiser(), config), config, eight, SUMMARY, scheduler
    )
    assert sorted(record["sampling"]["timesteps"], key=int) == ["1", "2", "4", "8"]


def test_an_lcm_students_scheduler_has_the_teachers_step_count_and_the_trained_timestep_scaling(tmp_path):
    """LCMScheduler's original_inference_steps is the cached grid's S (8 here) and its timestep_scaling
    the one the boundary conditions were trained with (5 here, not the default 10)."""
    config = tiny_train_config("store-url", tmp_path, method="lcm", timestep_scaling=5.0)
    export_student(
        build_student("full", teacher_denoiser(), config), config, eight_step_reader(), tmp_path, SUMMARY
    )
    saved = json.loads((tmp_path / "scheduler" / "scheduler_config.json").read_text())
    assert (saved["_class_name"], saved["original_inference_steps"], saved["timestep_scaling"]) == (
        "LCMScheduler",
        8,
        5.0,
    )


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


@pytest.mark.parametrize("save_dtype, dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_a_lora_adapter_is_saved_in_the_save_dtype(tmp_path, save_dtype, dtype):
    from safetensors.torch import load_file

    config = tiny_train_config("store-url", tmp_path, method="direct", student="lora", save_dtype=save_dtype)
    student = build_student("lora", teacher_denoiser(), config)
    perturb(p for name, p in student.model.named_parameters() if "lora_B" in name)
    trained = sorted(
        float(p.to(dtype).sum()) for name, p in student.model.named_parameters() if "lora_" in name
    )
    export_student(student, config, reader(), tmp_path, SUMMARY)
    saved = load_file(str(tmp_path / "pytorch_lora_weights.safetensors"))
    assert {value.dtype for value in saved.values()} == {dtype}
    assert sorted(float(value.sum()) for value in saved.values()) == trained  # each layer, cast once


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


def test_a_lora_student_of_an_init_chain_loads_on_its_fused_predecessor(tmp_path):
    """--init chain: LoRA A on the teacher, then LoRA B on A fused. B's folder holds only B's adapter;
    load_exported_student puts it on lineage[-1] (A, fused) and gives B's own outputs, from the recorded
    teacher or from one given anew."""
    from student_train.students.init import load_init

    config = tiny_train_config("store-url", tmp_path, method="direct", student="lora", lora_rank=2)
    first = build_student("lora", teacher_denoiser(), config)
    perturb(p for name, p in first.model.named_parameters() if "lora_B" in name)
    export_student(first, config, reader(), tmp_path / "a", SUMMARY)
    base, origin = load_init(str(tmp_path / "a"), None, False)
    second = build_student("lora", base, replace(config, seed=1), origin=origin)
    perturb(p for name, p in second.model.named_parameters() if "lora_B" in name)
    x, t, cond = inputs()
    with torch.no_grad():
        expected = second.denoise(x, t, cond)
        on_teacher = call_denoiser(teacher_denoiser(), x, t, cond)
        first_alone = first.denoise(x, t, cond)
    assert not torch.allclose(expected, first_alone, atol=1e-4)  # B's adapter changes A's output
    export_student(second, config, reader(), tmp_path / "b", SUMMARY)
    recorded = json.loads((tmp_path / "b" / "distill.json").read_text())["lineage"]
    assert [entry["dir"] for entry in recorded] == [str((tmp_path / "a").resolve())]
    teacher_dir = str(shared_capture().teacher_dir)
    for teacher in (None, teacher_dir):
        exported, _ = load_exported_student(tmp_path / "b", teacher)
        fused, _ = load_fused_student(tmp_path / "b", teacher)
        assert not any("lora" in name for name, _ in fused.named_parameters())
        with torch.no_grad():
            for model in (exported, fused):
                got = call_denoiser(model, x, t, cond)
                torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
                assert not torch.allclose(got, on_teacher, atol=1e-4)
    # the teacher A recorded has moved: only the one given anew reaches the base of the chain
    from shared.errors import DistillCacheError

    first_record = json.loads((tmp_path / "a" / "distill.json").read_text())
    first_record["teacher"]["source"] = str(tmp_path / "moved-teacher")
    (tmp_path / "a" / "distill.json").write_text(json.dumps(first_record))
    with pytest.raises(DistillCacheError, match="moved-teacher"):
        load_exported_student(tmp_path / "b")
    exported, _ = load_exported_student(tmp_path / "b", teacher_dir)
    with torch.no_grad():
        torch.testing.assert_close(call_denoiser(exported, x, t, cond), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_a_folder_without_a_recorded_denoiser_is_a_unet_folder(tmp_path, kind):
    """A store and a distill.json from before the "denoiser" field: the denoiser is `unet` (its folder,
    its LoRA prefix). The store's pipeline class is one diffusers lacks (a custom pipeline): the adapter
    is saved as StableDiffusionPipeline saves one. The folder is made with its parents."""
    config = tiny_train_config("store-url", tmp_path, method="direct", student=kind, lora_rank=2)
    student = build_student(kind, teacher_denoiser(), config)
    perturb(p for name, p in student.model.named_parameters() if kind == "full" or "lora_B" in name)
    x, t, cond = inputs()
    with torch.no_grad():
        expected = student.denoise(x, t, cond)
    old = reader()
    old.settings = {name: value for name, value in old.settings.items() if name != "denoiser"}
    old.fingerprint = {**old.fingerprint, "pipeline_class": "SomeCustomPipeline"}
    out = tmp_path / "runs" / "student"
    export_student(student, config, old, out, SUMMARY)
    assert (out / "unet").is_dir() == (kind == "full")
    distill = json.loads((out / "distill.json").read_text())
    assert distill["denoiser"] == "unet" and distill["train"] == SUMMARY
    del distill["denoiser"]
    (out / "distill.json").write_text(json.dumps(distill))
    model, _ = load_exported_student(out)
    with torch.no_grad():
        torch.testing.assert_close(call_denoiser(model, x, t, cond), expected, rtol=1e-4, atol=1e-5)


def test_a_lora_student_refuses_another_teacher_and_names_a_damaged_adapter(tmp_path):
    """The adapter only fits the teacher the store was made with (its digest is checked), and a damaged
    adapter file is one line naming the file."""
    from shared.errors import DistillCacheError
    from tests.tiny_models import tiny_unet

    config = tiny_train_config("store-url", tmp_path, method="direct", student="lora", lora_rank=2)
    export_student(
        build_student("lora", teacher_denoiser(), config), config, reader(), tmp_path / "s", SUMMARY
    )
    tiny_unet(seed=1).save_pretrained(tmp_path / "other" / "unet")  # same architecture, other weights
    with pytest.raises(DistillCacheError, match="it is another model; pass --teacher with the store's own"):
        load_exported_student(tmp_path / "s", str(tmp_path / "other"))
    adapter = tmp_path / "s" / "pytorch_lora_weights.safetensors"
    adapter.write_bytes(adapter.read_bytes()[:100])
    with pytest.raises(DistillCacheError) as refused:
        load_exported_student(tmp_path / "s")
    try:  # the reason is what safetensors itself says of the file
        safetensors.torch.load_file(adapter)
    except Exception as error:  # noqa: BLE001
        reason = str(error).strip().splitlines()[0]
    assert str(refused.value) == f"cannot load the student's LoRA adapter {adapter} ({reason})"


def test_a_lora_student_of_a_hub_teacher_loads_it_at_the_recorded_revision(tmp_path, monkeypatch):
    """Without --teacher, the recorded Hub teacher is loaded at the revision the store was made with (a
    later revision may hold other weights); a teacher given anew is loaded as given, at no revision."""
    import diffusers

    config = tiny_train_config("store-url", tmp_path, method="direct", student="lora", lora_rank=2)
    student = build_student("lora", teacher_denoiser(), config)
    export_student(student, config, reader(), tmp_path / "s", SUMMARY)
    distill = json.loads((tmp_path / "s" / "distill.json").read_text())
    local = distill["teacher"]["source"]
    distill["teacher"].update(source="org/teacher", revision="abc123")  # as recorded from a Hub capture
    (tmp_path / "s" / "distill.json").write_text(json.dumps(distill))
    loads = []
    from_folder = UNet2DConditionModel.from_pretrained

    def recorded(stored_at=None):  # from_pretrained noting what it was asked; the Hub serves `stored_at`
        def from_pretrained(source, subfolder, revision):
            loads.append((source, subfolder, revision))
            return from_folder(stored_at or source, subfolder=subfolder)

        return from_pretrained

    monkeypatch.setattr(diffusers.AutoModel, "from_pretrained", recorded(stored_at=local))
    monkeypatch.setattr(UNet2DConditionModel, "from_pretrained", recorded())
    x, t = torch.randn(1, *LATENT_SHAPE), torch.tensor([500])
    cond = {"encoder_hidden_states": torch.randn(1, 4, TEXT_DIM)}
    with torch.no_grad():
        expected = call_denoiser(student.model, x, t, cond)
        for teacher, load in ((None, ("org/teacher", "unet", "abc123")), (local, (local, "unet", None))):
            loads.clear()
            model, _ = load_exported_student(tmp_path / "s", teacher)
            assert loads == [load]
            torch.testing.assert_close(call_denoiser(model, x, t, cond), expected, rtol=1e-4, atol=1e-5)


def test_a_damaged_full_student_is_named(tmp_path):
    from shared.errors import DistillCacheError

    config = tiny_train_config("store-url", tmp_path, method="direct")
    export_student(build_student("full", teacher_denoiser(), config), config, reader(), tmp_path, SUMMARY)
    weights = tmp_path / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(DistillCacheError, match=f"^cannot load the student's denoiser from '{tmp_path}' "):
        load_exported_student(tmp_path)
