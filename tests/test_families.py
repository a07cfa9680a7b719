"""Phase two on every family phase one captures (SD, SDXL, SD3 flow matching), from stores made by
phase one itself on tiny random pipelines (tests/family_stores.py):

- the exported student drops into the stock pipeline of the teacher's class (`unet/` or
  `transformer/`, or `load_lora_weights`), with its own scheduler, and samples exactly what
  student_train.sampling samples from the cached noise and conditioning;
- the loss falls, and a killed and resumed run ends bit-identical (slow matrix: every family x
  method x student);
- LoRA adapts the modules of diffusers' scripts for the denoiser's class;
- a student trained from an SD3 store never loads a text encoder, the VAE or the pipeline.
"""

import json

import diffusers
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import student_train.training.loop as training_loop
from shared.errors import DistillCacheError
from shared.schedule import NoiseSchedule
from shared.store import StoreReader
from student_train.data.batches import TrainingData
from student_train.data.randomness import SampleRandom
from student_train.eval.generation import student_latents
from student_train.eval.models import Models
from student_train.eval.teacher_baseline import read_conditioning
from student_train.export import LORA_WEIGHT_NAME, load_exported_student
from student_train.losses import get_method
from student_train.sampling import load_student_scheduler, trained_schedule_kwargs
from student_train.students import LORA_TARGET_MODULES, Student, build_student
from student_train.students.denoiser import load_denoiser, nest_conditioning
from student_train.students.student import Origin
from tests.family_stores import GUIDANCE, PIPELINE_CLASSES, family_capture
from tests.phase_two_watch import watch_phase_two
from tests.student_store_fixture import one_torch_thread, tiny_train_config  # noqa: F401 (autouse)

METHODS = ("direct", "lcm", "progressive", "guidance", "tcd", "reflow")  # blockkd: UNet only (refused on SD3)
STUDENTS = ("full", "lora")


def method_flags(family: str, method: str, student: str) -> dict:
    """What a family needs besides --method: guidance learns one w where the student has no w input
    (LoRA, SD3's transformer); a flow store samples TCD at gamma 0 (FlowMatchEulerDiscreteScheduler)."""
    if method == "guidance" and (student == "lora" or family == "sd3"):
        return {"w_min": GUIDANCE - 1, "w_max": GUIDANCE - 1}
    if method == "tcd":
        return {"tcd_gamma": 0.0 if family == "sd3" else 0.3}
    return {}


def train(family: str, out, **overrides) -> dict:
    """A few updates of the tiny family student at a learning rate that moves every weight; distill.json."""
    flags = method_flags(family, overrides.get("method", "direct"), overrides.get("student", "full"))
    settings = dict(train_steps=2, lr=1e-2, lora_alpha=8, batch_size=3) | flags | overrides
    training_loop.train(tiny_train_config(family_capture(family).store, out, **settings))
    return json.loads((out / "distill.json").read_text())


def cached(family: str, rows: list[int]) -> tuple[torch.Tensor, dict, list[str]]:
    """The store's noise (B, C, H, W), nested cond kwargs and sample ids of `rows`."""
    reader = StoreReader(family_capture(family).store)
    names = [name for name in reader.fields if name.startswith("cond.")]
    cond = nest_conditioning({name[len("cond.") :]: reader.read(name, rows) for name in names})
    ids = [str(reader.manifest.column("sample_id")[r]) for r in rows]
    return reader.read("noise", rows), cond, ids


def stock_pipeline(family: str, student_dir, distill: dict):
    """The teacher's own pipeline class with the student's denoiser (or adapter) and scheduler."""
    pipeline_class = getattr(diffusers, PIPELINE_CLASSES[family])
    teacher_dir = family_capture(family).teacher_dir
    extra = {"text_encoder_3": None, "tokenizer_3": None} if family == "sd3" else {}
    denoiser_name = distill["denoiser"]
    if distill["student"] != "lora":  # full or pruned: the folder's own denoiser
        denoiser_class = getattr(
            diffusers, "SD3Transformer2DModel" if family == "sd3" else "UNet2DConditionModel"
        )
        extra[denoiser_name] = denoiser_class.from_pretrained(student_dir, subfolder=denoiser_name)
    pipe = pipeline_class.from_pretrained(teacher_dir, scheduler=load_student_scheduler(student_dir), **extra)
    if distill["student"] == "lora":
        pipe.load_lora_weights(student_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def embeds_kwargs(family: str, cond: dict) -> dict:
    """The cached conditioning as the pipeline's own *_embeds arguments (the text encoders stay unused)."""
    if family == "sdxl":
        return {
            "prompt_embeds": cond["encoder_hidden_states"],
            "pooled_prompt_embeds": cond["added_cond_kwargs"]["text_embeds"],
        }
    if family == "sd3":
        return {
            "prompt_embeds": cond["encoder_hidden_states"],
            "pooled_prompt_embeds": cond["pooled_projections"],
        }
    return {"prompt_embeds": cond["encoder_hidden_states"]}


def stock_latents(family: str, student_dir, distill: dict, num_steps: int, rows: list[int]) -> torch.Tensor:
    """The stock pipeline from the cached noise and conditioning at the trained timesteps (tcd: its eta)."""
    noise, cond, ids = cached(family, rows)
    pipe = stock_pipeline(family, student_dir, distill)
    negative = {}  # a cfg student (blockkd): the cached uncond half (the capture encoded the empty prompt)
    if distill["sampling"]["sampler"] == "cfg":
        uncond = read_conditioning(StoreReader(family_capture(family).store), rows, "uncond")
        negative = {f"negative_{name}": value for name, value in embeds_kwargs(family, uncond).items()}
    trained = distill["sampling"]["timesteps"][str(num_steps)]  # None: the scheduler's own (reflow)
    eta = {"eta": distill["recommended"]["eta"]} if "eta" in distill["recommended"] else {}
    return pipe(
        **embeds_kwargs(family, cond),
        **negative,
        latents=noise,
        num_inference_steps=num_steps,
        guidance_scale=distill["recommended"]["guidance_scale"],
        output_type="latent",
        generator=SampleRandom(0, num_steps, ids).generators,  # the noise eval's samplers draw (tcd)
        **({} if trained is None else trained_schedule_kwargs(pipe.scheduler, trained)),
        **eta,
    ).images


def our_latents(family: str, student_dir, distill: dict, num_steps: int, rows: list[int]) -> torch.Tensor:
    """What `student-train eval` samples for these rows: the method's sampler of distill.json, from the
    store alone (no text encoder, no VAE)."""
    noise, cond, ids = cached(family, rows)
    model, _ = load_exported_student(student_dir)
    models = Models(None, None, model, load_student_scheduler(student_dir), distill, None)
    reader = StoreReader(family_capture(family).store)
    uncond = read_conditioning(reader, rows, "uncond")  # a cfg student's (blockkd) other half
    guidance = torch.tensor([reader.manifest.column("guidance_scale")[r].as_py() for r in rows])
    with torch.no_grad():
        return student_latents(models, reader.settings, noise, cond, ids, num_steps, uncond, guidance)


def check_stock_pipeline_matches_ours(family: str, student_dir, distill: dict) -> None:
    """One step for lcm (its multistep sampler re-noises with a generator of its own), two otherwise."""
    num_steps, rows = (1 if distill["method"] == "lcm" else 2), [0, 1]
    stock = stock_latents(family, student_dir, distill, num_steps, rows)
    torch.testing.assert_close(
        stock, our_latents(family, student_dir, distill, num_steps, rows), rtol=1e-4, atol=1e-4
    )


@pytest.mark.parametrize(
    "family, method, student",
    [
        ("sdxl", "lcm", "full"),
        ("sdxl", "guidance", "full"),  # SDXL's UNet gets the w-embedding: one pass per step
        ("sdxl", "tcd", "lora"),  # TCDScheduler with eta = gamma, the noise eval draws
        ("sd3", "lcm", "lora"),
        ("sd3", "progressive", "full"),
        ("sd3", "guidance", "full"),  # one w, no CFG in the pipeline
        ("sd3", "tcd", "lora"),  # gamma 0: Euler on the cached grid's sigmas
        ("sd3", "reflow", "full"),  # Euler on the teacher's own shifted sigmas
    ],
)
def test_export_samples_in_the_stock_pipeline_as_ours(tmp_path, family, method, student):
    distill = train(family, tmp_path / "student", method=method, student=student)
    assert distill["denoiser"] == ("transformer" if family == "sd3" else "unet")
    check_stock_pipeline_matches_ours(family, tmp_path / "student", distill)
    scheduler = load_student_scheduler(tmp_path / "student")
    if family == "sd3":  # a stock flow scheduler; no eta (StableDiffusion3Pipeline takes none)
        assert type(scheduler).__name__.startswith("FlowMatch") and "eta" not in distill["recommended"]
    if method == "guidance":  # sdxl: w + 1 embedded, one pass; sd3: the learnt w needs no CFG
        w = distill["sampling"]["guidance_w"]
        assert (w is not None and distill["recommended"]["guidance_scale"] == w + 1) == (family == "sdxl")
        assert family == "sdxl" or (w is None and distill["recommended"]["guidance_scale"] == 1.0)
    if method == "tcd" and family == "sdxl":
        assert type(scheduler).__name__ == "TCDScheduler" and distill["recommended"]["eta"] == 0.3


@pytest.mark.parametrize(
    "flags, message",
    [
        ({"method": "blockkd"}, "distils a UNet's blocks"),
        ({"method": "tcd", "tcd_gamma": 0.3}, "no flow TCD scheduler"),
        ({"method": "guidance", "w_min": 0.0, "w_max": 4.0}, "has no w input"),
    ],
)
def test_methods_an_sd3_store_cannot_serve_are_refused_in_one_line(tmp_path, flags, message):
    with pytest.raises(DistillCacheError, match=message) as refused:
        training_loop.train(tiny_train_config(family_capture("sd3").store, tmp_path / "s", **flags))
    assert "\n" not in str(refused.value) and not (tmp_path / "s").exists()


def test_sample_command_on_an_sd3_student_is_the_stock_pipeline_at_the_trained_sigmas(tmp_path):
    from PIL import Image

    from shared.noise import initial_noise
    from student_train.cli import main as student_train_main
    from student_train.sampling import trained_schedule_kwargs

    distill = train("sd3", tmp_path / "student", method="progressive", student="full")
    out = tmp_path / "one.png"
    args = ["sample", "--student", str(tmp_path / "student"), "--prompt", "a red one on blue", "--steps", "2"]
    assert student_train_main([*args, "--seed", "3", "--out", str(out)]) == 0
    pipe = stock_pipeline("sd3", tmp_path / "student", distill)
    kwargs = trained_schedule_kwargs(pipe.scheduler, distill["sampling"]["timesteps"]["2"])
    assert "sigmas" in kwargs  # the cached grid's points, not the scheduler's own 2 steps
    expected = pipe(
        "a red one on blue",
        num_inference_steps=2,
        guidance_scale=1.0,
        latents=initial_noise([3], (4, 8, 8), "cpu", torch.float32),
        **kwargs,
    ).images[0]
    assert (torch.as_tensor(np.asarray(Image.open(out))) == torch.as_tensor(np.asarray(expected))).all()


def test_flow_students_export_stock_flow_schedulers(tmp_path):
    schedulers = {}
    for method in METHODS:
        distill = train("sd3", tmp_path / method, method=method, student="lora", train_steps=1)
        scheduler = load_student_scheduler(tmp_path / method)
        schedulers[method] = (type(scheduler).__name__, scheduler.config.shift)
        assert distill["sampling"]["prediction_type"] == "flow_prediction"
        recommended = distill["recommended"]
        if method in (
            "direct",
            "reflow",
        ):  # the teacher's shifted schedule: K steps alone are the trained ones
            assert recommended["schedule_kwargs"] == {}
        else:  # the cached grid's (shifted) sigmas, passed as given to an unshifted scheduler
            assert recommended["schedule_kwargs"] == {"sigmas": [t / 1000 for t in recommended["timesteps"]]}
    teacher_shift = json.loads(
        (family_capture("sd3").teacher_dir / "scheduler" / "scheduler_config.json").read_text()
    )["shift"]
    unshifted_euler = ("FlowMatchEulerDiscreteScheduler", 1.0)
    assert schedulers == {
        "direct": ("FlowMatchEulerDiscreteScheduler", teacher_shift),
        "lcm": ("FlowMatchLCMScheduler", 1.0),
        "progressive": unshifted_euler,
        "guidance": unshifted_euler,
        "tcd": unshifted_euler,  # TCD at gamma 0 is Euler (DDIM) between the grid's points
        "reflow": ("FlowMatchEulerDiscreteScheduler", teacher_shift),
    }


@pytest.mark.parametrize(
    "family, denoiser_class",
    [pytest.param("sdxl", "UNet2DConditionModel", marks=pytest.mark.slow), ("sd3", "SD3Transformer2DModel")],
)  # peft takes seconds to adapt the 117 modules of even a tiny UNet: SDXL's list is SD's, tested there
def test_lora_adapts_the_modules_of_diffusers_scripts(family, denoiser_class):
    denoiser = load_denoiser(
        str(family_capture(family).teacher_dir), "transformer" if family == "sd3" else "unet"
    )
    assert type(denoiser).__name__ == denoiser_class
    targets = LORA_TARGET_MODULES[denoiser_class]
    expected = {  # peft's rule: a target matches a module named exactly so or ending in "." + target
        name for name, module in denoiser.named_modules()
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and any(name == t or name.endswith("." + t) for t in targets)
    }  # fmt: skip
    student = build_student("lora", denoiser, tiny_train_config("unused", "unused"))
    adapted = {
        name.rsplit(".lora_A", 1)[0] for name, _ in student.model.named_modules() if name.endswith(".lora_A")
    }
    assert adapted and adapted == expected
    if family == "sd3":  # both streams of every joint block: image q/k/v/out and text q/k/v/out
        blocks = denoiser.config.num_layers
        assert sum(name.endswith("attn.add_q_proj") for name in adapted) == blocks
        assert (
            sum(name.endswith("attn.to_add_out") for name in adapted) == blocks - 1
        )  # the last block: context_pre_only


def test_sd3_student_never_loads_a_text_encoder_or_runs_the_teacher(tmp_path, monkeypatch):
    family_capture("sd3")  # phase one (it runs the pipeline) before the watch, however the tests are ordered
    loaded, forwards = watch_phase_two(monkeypatch, diffusers.SD3Transformer2DModel)
    train("sd3", tmp_path / "lcm", method="lcm", student="full", train_steps=3)
    assert len(loaded) == 1 and type(loaded[0]).__name__ == "SD3Transformer2DModel"
    # Per update one forward of the student (the loaded transformer itself: SD3 has no w-embedding to
    # add, so the student takes it over) and one of its EMA copy (the target); no third, teacher, pass.
    assert len(forwards) == 2 * 3 and len(set(forwards)) == 2 and id(loaded[0]) in forwards
    exported = load_file(str(tmp_path / "lcm" / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert "time_text_embed.timestep_embedder.linear_1.weight" in exported  # a stock SD3 transformer


def fixed_loss(family: str, config, model, pruning: dict | None = None) -> float:
    """The method's loss of `model` on every row of the store, averaged over 8 fixed sets of draws
    (progressive: its last round); the consistency target is the model itself; `pruning` (a pruned
    student's record) maps its blocks to the teacher's cached features (blockkd)."""
    reader = StoreReader(family_capture(family).store)
    settings = reader.settings
    method = get_method(config.method)
    schedule = NoiseSchedule.from_scheduler_config(
        settings["scheduler"]["config"], settings["scheduler"]["class"]
    )
    loss = method.build(config, settings, schedule)
    data = TrainingData(reader, method.fields(config), split="all", loader="memory")
    batch = data.batch(torch.arange(len(data)), "cpu")
    student = Student("eval", model.eval(), None, 0.0, Origin(pruning=pruning))
    with torch.no_grad():
        draws = [
            loss(student, batch, SampleRandom(123, r, batch.sample_ids), config.train_steps - 1)
            for r in range(8)
        ]
    return float(torch.stack(draws).mean())


def exported_weights(out) -> dict[str, torch.Tensor]:
    files = list(out.glob("*/diffusion_pytorch_model.safetensors")) or [out / LORA_WEIGHT_NAME]
    return load_file(str(files[0]))


# Learning rates where the default (3e-4 full, 3e-3 LoRA) does not lower the fixed-draw loss by 10 % in
# 16 updates on the tiny random SDXL pipeline (ratio after / before at the rate given, runs/fall_check.py):
# guidance full 1.28 at 3e-4 (its loss starts near 0: the random teacher's cond and uncond nearly agree),
# 0.55 at 1e-4; tcd full 1.16 at 3e-4, 0.69 at 1e-4; reflow (an eps UNet turned into a flow model) full
# 0.96 at 3e-4, 0.89 at 1e-3; LoRA 0.97 at 3e-3, 0.86 at 3e-2.
MATRIX_LR = {
    ("sdxl", "guidance", "full"): 1e-4,
    ("sdxl", "tcd", "full"): 1e-4,
    ("sdxl", "reflow", "full"): 1e-3,
    ("sdxl", "reflow", "lora"): 3e-2,
}


def kill_after_step(monkeypatch, step: int) -> None:
    """Until undone (monkeypatch.undo), training raises KeyboardInterrupt once update `step` is logged."""
    write = training_loop.TrainLog.write

    def die(self, accelerator, logged_step, *args):
        logged = write(self, accelerator, logged_step, *args)
        if logged_step == step:
            raise KeyboardInterrupt
        return logged

    monkeypatch.setattr(training_loop.TrainLog, "write", die)


def check_loss_falls_export_and_resume(
    tmp_path, monkeypatch, family: str, settings: dict, pruning=None
) -> None:
    """The family test of one method x student: the method's loss on the whole store with fixed draws
    falls by 10 % from the student as built from the teacher to the student exported after 16 updates;
    the export samples in the stock pipeline as ours; killed after update 6 (last checkpoint at 4) and
    resumed, the run ends bit-identical to the uninterrupted one."""
    whole = tmp_path / "whole"
    settings = dict(loss="l2", batch_size=6, train_steps=16, checkpoint_every=4) | settings
    config = tiny_train_config(family_capture(family).store, whole, **settings)
    teacher = load_denoiser(
        str(family_capture(family).teacher_dir), "transformer" if family == "sd3" else "unet"
    )
    built = build_student(config.student, teacher, config, get_method(config.method).w_conditioned)
    before = fixed_loss(family, config, built.model, built.pruning)
    distill = train(family, whole, **settings)
    after = fixed_loss(family, config, load_exported_student(whole)[0], distill.get("pruning"))
    assert after < 0.9 * before, (before, after)
    check_stock_pipeline_matches_ours(family, whole, distill)

    kill_after_step(monkeypatch, 6)
    with pytest.raises(KeyboardInterrupt):
        train(family, tmp_path / "killed", **settings)
    monkeypatch.undo()
    train(family, tmp_path / "killed", resume=True, **settings)
    whole, resumed = exported_weights(whole), exported_weights(tmp_path / "killed")
    assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole)


@pytest.mark.slow
@pytest.mark.parametrize(
    "family, method, student",
    # every family x method, the student kind alternating between the families (the full 2 x 6 x 2
    # matrix is beyond CI's test budget; the fast export test covers both kinds per family)
    [(f, m, STUDENTS[(i + j) % 2]) for j, f in enumerate(("sdxl", "sd3")) for i, m in enumerate(METHODS)],
)
def test_every_family_method_and_student(tmp_path, monkeypatch, family, method, student):
    lr = MATRIX_LR.get((family, method, student), 3e-3 if student == "lora" else 3e-4)
    settings = dict(method=method, student=student, lr=lr) | method_flags(family, method, student)
    check_loss_falls_export_and_resume(tmp_path, monkeypatch, family, settings)


def test_blockkd_loss_of_the_sdxl_teacher_itself_is_zero(tmp_path):
    """The SDXL teacher's own UNet (added_cond_kwargs, both CFG halves) reproduces the store's cached
    block features and outputs: blockkd's three terms vanish (BK-SDM's loss is 0 for the teacher), so
    the cached features line up with the student's block hooks. Hence the family test below trains
    pruned students only: a full or LoRA student starts at this loss, with nothing left to fall."""
    config = tiny_train_config(family_capture("sdxl").store, tmp_path / "s", method="blockkd", loss="l2")
    teacher = load_denoiser(str(family_capture("sdxl").teacher_dir), "unet")
    assert fixed_loss("sdxl", config, teacher) < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("prune", ["base", "small"])  # the tiny UNet has no inner stage to remove (tiny)
def test_blockkd_on_an_sdxl_store_with_block_features(tmp_path, monkeypatch, prune):
    """BK-SDM on the SDXL family store (it holds features): the block-pruned students of each level the
    tiny UNet allows; the export is a smaller stock UNet2DConditionModel sampled with CFG."""
    settings = dict(method="blockkd", student="pruned", prune=prune, lr=3e-4)
    check_loss_falls_export_and_resume(tmp_path, monkeypatch, "sdxl", settings)
    distill = json.loads((tmp_path / "whole" / "distill.json").read_text())
    assert distill["pruning"]["level"] == prune and distill["sampling"]["sampler"] == "cfg"
    pruned = diffusers.UNet2DConditionModel.from_pretrained(tmp_path / "whole", subfolder="unet")
    teacher = load_denoiser(str(family_capture("sdxl").teacher_dir), "unet")
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in teacher.parameters())


def test_eval_on_an_sd3_store_runs_the_teacher_on_its_flow_schedule(tmp_path):
    """teacher@K runs the store's FlowMatchEulerDiscreteScheduler (shift 3) with CFG; at K = S that is the
    sampler that made the cache (tests/test_losses_flow.py recomputes it), so the cached reference
    stands for teacher@S, not sampled again; the student (the teacher's transformer, exported
    untrained) samples every K."""
    from shared.store import StoreReader
    from student_train.config import TrainConfig
    from student_train.eval.run import EvalConfig, run
    from student_train.export import export_student
    from tests.family_stores import STEPS

    store = family_capture("sd3").store
    config = TrainConfig(cache=store, out=str(tmp_path / "student"), method="direct", num_student_steps=2)
    transformer = load_denoiser(str(family_capture("sd3").teacher_dir), "transformer")
    export_student(
        build_student("full", transformer, config), config, StoreReader(store), tmp_path / "student", {}
    )
    metrics = run(
        EvalConfig(cache=store, student=str(tmp_path / "student"), out=str(tmp_path / "eval"), unseen_cache=store,
                   steps=(1, STEPS), teacher_spacing="store", judge=False)
    )  # fmt: skip
    by_column = {r["column"]: r for r in metrics["records"] if r["set"] == "unseen"}
    assert f"teacher@{STEPS}" not in by_column and by_column[f"teacher@{STEPS} cache"]["sampler"] == "cache"
    assert by_column["teacher@1"]["sampler"] == "euler" and by_column["teacher@1"]["latent_mse"] > 1e-3
    assert by_column[f"student@{STEPS}"]["latent_mse"] > 0  # the direct student's own 2-step sampler
    assert all(np.isfinite(r["latent_mse"]) for r in by_column.values() if "latent_mse" in r)
