"""Cached vs online training (phase two): step time and peak memory, same loss, student and batch.

    make bench BENCH=train                      # = python -m bench train: every variant, table, figures
    python -m bench.bench_train --variant lcm-online --store runs/bench/train_cache   # one measurement

The online variants do what the in-loop recipes do, then call the very same loss object as the
cached ones (student_train.losses): only where the teacher tensors come from differs.

  cache           `teacher-cache run` of the bench store: cost per cached row (the price of the cache,
                  start-up included, so over-stated for a bench store much smaller than a real cache)
  lcm-cached      the lcm loss on batches of the store (noised.*, cond.*; --points as given),
                  streamed as `student-train run --loader stream` reads them (one batch ahead in a
                  reader thread; what --loader auto does for a split over 2 GiB, any real SD cache)
  lcm-preloaded   the same with the split in memory (`--loader memory`; auto's choice for small stores)
  lcm-online      per step, as diffusers' train_lcm_distill_sd_wds.py (bench/online_lcm.py): text-encode
                  the prompts, VAE-encode fresh real images (shared.digits), noise them to a timestep
                  of LCM's solver grid, teacher cond + uncond passes at x_t, laid out as the store's
                  noised fields; the loss (--points noised) then takes its DDIM solver step from them
  direct-cached   the direct loss on (noise, final_latents, cond.*) from the store (and direct-preloaded)
  direct-online   the teacher's S-step CFG sampling of each batch inside the loop, then the same loss

Two teachers: the embedded one (every variant; full students, lcm with LoRA too) and one with SD1.5's
architecture and random weights (bench/sd15_shaped_teacher.py; lcm LoRA cached vs online), whose
UNet / text encoder / VAE proportions are those a user's run has.

Each variant runs in its own subprocess, so `ru_maxrss` is that variant's own peak; the RSS right
after the imports is reported too (peak minus it = what the variant itself added). Step time is the
median over the timed steps, after warm-up steps.
"""

import argparse
import copy
import json
import resource
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

VARIANTS = ("lcm-cached", "lcm-preloaded", "lcm-online", "direct-cached", "direct-preloaded", "direct-online")
CACHE_VARIANT = "cache"
BENCH_STORE = Path("runs/bench/train_cache")
STUDENTS_PER_CACHE = 3  # "three students trained from one cache"


@dataclass(frozen=True)
class BenchSettings:
    """One measurement; the CLI flags of `python -m bench.bench_train` map 1:1 onto the fields."""

    variant: str = "lcm-cached"
    store: str = str(BENCH_STORE)
    student: str = "full"  # full | lora, as student-train run --student
    batch_size: int = 16  # student-train run's default
    warmup_steps: int = 2
    timed_steps: int = 8
    seed: int = 0
    threads: int = 1  # torch CPU threads; one per variant keeps CPU-time figures comparable on shared cores
    teacher: str = ""  # cache variant: the teacher ("" = teacher-cache run's default, the embedded one)
    cache_rows: int = 64  # cache variant: rows of the default prompt list to cache
    cache_steps: int = 0  # cache variant: the teacher's steps; 0 = teacher-cache run's default (50)
    cache_size: int = 0  # cache variant: image side in pixels; 0 = the pipeline's default
    cache_fields: str = ""  # cache variant: comma-separated field groups; "" = all
    gradient_checkpointing: bool = False  # as student-train run --gradient-checkpointing
    points: str = "noised"  # lcm: as student-train run --points (online variants always make noised points)
    base_dtype: str = (
        "fp32"  # as --base-dtype: the LoRA base; online also keeps its teacher in it (weight_dtype)
    )
    mixed_precision: str = "no"  # no | bf16: autocast of the forward passes, as --mixed-precision
    optimizer: str = "adamw"  # as --optimizer (adamw | adamw8bit)
    image_size: int = 0  # online: the images' side in pixels; 0 = the store's (latent side x VAE factor)


def peak_rss_mib() -> float:
    """This process's peak resident set so far (Linux: ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def proc_status_mib(key: str) -> float:
    """VmRSS (resident now) or VmHWM (peak since the last reset_peak_rss) from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def reset_peak_rss() -> None:
    """Linux >= 4.0: VmHWM := VmRSS, the CPU counterpart of torch.cuda.reset_peak_memory_stats."""
    Path("/proc/self/clear_refs").write_text("5")


def tensor_mib(tensors) -> float:
    """MiB of distinct tensor storages."""
    import torch

    seen = {}
    for tensor in tensors:
        if isinstance(tensor, torch.Tensor):
            seen[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
    return sum(seen.values()) / 2**20


def held_mib(*holders) -> float:
    """MiB of the distinct tensors held by modules (parameters + buffers), optimizers (state) and
    dicts of tensors (cached data): what a variant keeps in memory, without the runtime's own share."""
    import torch

    seen, total = set(), 0

    def count(tensor) -> None:
        nonlocal total
        if isinstance(tensor, torch.Tensor) and tensor.untyped_storage().data_ptr() not in seen:
            seen.add(tensor.untyped_storage().data_ptr())
            total += tensor.untyped_storage().nbytes()

    for holder in holders:
        if isinstance(holder, torch.nn.Module):
            for tensor in holder.state_dict(keep_vars=True).values():
                count(tensor)
        elif isinstance(holder, torch.optim.Optimizer):
            for state in holder.state.values():
                for tensor in state.values():
                    count(tensor)
        elif isinstance(holder, dict):
            for tensor in holder.values():
                count(tensor)
    return total / 2**20


# ---------------------------------------------------------------- one variant (in its own process)


def train_config(settings: BenchSettings, method: str):
    from student_train.config import TrainConfig

    return TrainConfig(
        cache=settings.store,
        out="unused",
        method=method,
        student=settings.student,
        batch_size=settings.batch_size,
        gradient_checkpointing=settings.gradient_checkpointing,
        points=settings.points if method == "lcm" and "online" not in settings.variant else "noised",
        base_dtype=settings.base_dtype,
        mixed_precision=settings.mixed_precision,
        optimizer=settings.optimizer,
    )


def store_batches(settings: BenchSettings, config, reader, device, loader: str):
    """Batches exactly as `student-train run --loader LOADER` makes them (student_train.data.batches)."""
    from student_train.data.batches import TrainingData, rows_for_micro_step
    from student_train.losses import get_method

    data = TrainingData(reader, get_method(config.method).fields(config), split="all", loader=loader)
    steps = range(settings.warmup_steps + settings.timed_steps)
    schedule = (rows_for_micro_step(len(data), settings.batch_size, settings.seed, step) for step in steps)
    return data.batches(schedule, device), [{name: held.values for name, held in data.held.items()}]


def online_prompts(step: int, batch_size: int, seed: int) -> list[str]:
    import numpy as np

    from shared.digits import train_prompts

    pool = train_prompts()
    rng = np.random.default_rng([seed, step])
    return [pool[i] for i in rng.integers(len(pool), size=batch_size)]


def empty_prompt_embeds(pipe, batch_size: int, device):
    """The unconditional half: the empty prompt encoded once, [B, L, D]."""
    import torch

    with torch.no_grad():
        return pipe.encode_prompt([""] * batch_size, device, 1, False)[0]


def online_direct_batches(settings: BenchSettings, reader, pipe, device):
    """Per step, the teacher's S-step CFG sampling of the batch from fresh seeded noise (as the cache)."""
    import torch

    from shared.noise import initial_noise
    from student_train.data.batches import Batch
    from student_train.eval.teacher_baseline import sample_with_cfg

    steps, guidance = int(reader.settings["num_inference_steps"]), float(reader.settings["guidance_scale"])
    latent_shape = tuple(reader.settings["latent_shape"])
    uncond = empty_prompt_embeds(pipe, settings.batch_size, device)

    @torch.no_grad()
    def batch_at(step: int):
        prompts = online_prompts(step, settings.batch_size, settings.seed)
        seeds = [step * settings.batch_size + j for j in range(settings.batch_size)]
        noise = initial_noise(seeds, latent_shape, device, torch.float32)  # [B, C, h, w]
        cond = pipe.encode_prompt(prompts, device, 1, False)[0]  # [B, L, D]
        scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
        final = sample_with_cfg(
            pipe.unet,
            scheduler,
            noise,
            {"encoder_hidden_states": cond},
            {"encoder_hidden_states": uncond},
            guidance,
            steps,
        )
        ids = [f"online-{seed}" for seed in seeds]
        return Batch({"noise": noise, "final_latents": final}, {"encoder_hidden_states": cond}, ids)

    return batch_at


def measure(settings: BenchSettings) -> dict:
    """Train `warmup + timed` steps of one variant; returns step times and memory."""
    import torch
    from diffusers import DiffusionPipeline

    from shared.schedule import NoiseSchedule
    from shared.store import StoreReader
    from shared.teacher import resolve_teacher_source
    from student_train.config import WEIGHT_DTYPES
    from student_train.data.randomness import SampleRandom
    from student_train.losses import get_method
    from student_train.students import build_student
    from student_train.students.denoiser import load_denoiser
    from student_train.training.optimizer import build_optimizer

    torch.set_num_threads(settings.threads)
    rss_after_imports = peak_rss_mib()
    method, source = settings.variant.split("-")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    reader = StoreReader(settings.store)
    config = train_config(settings, method)
    schedule = NoiseSchedule.from_scheduler_config(
        reader.settings["scheduler"]["config"], reader.settings["scheduler"]["class"]
    )
    spec = get_method(method)
    loss_fn = spec.build(config, reader.settings, schedule)
    teacher_source = resolve_teacher_source(reader.teacher["source"])
    steps = range(settings.warmup_steps + settings.timed_steps)
    if source in ("cached", "preloaded"):  # the denoiser's weights only, as student-train run
        denoiser = load_denoiser(teacher_source, reader.settings.get("denoiser", "unet"))
        student = build_student(config.student, denoiser.to(device), config, spec.w_conditioned)
        del denoiser
        batches, resident = store_batches(
            settings, config, reader, device, loader="memory" if source == "preloaded" else "stream"
        )
    else:  # the whole teacher pipeline in memory, run in the loop, in the base dtype (the script's weight_dtype)
        pipe = DiffusionPipeline.from_pretrained(
            teacher_source, torch_dtype=WEIGHT_DTYPES[settings.base_dtype]
        ).to(device)
        pipe.set_progress_bar_config(disable=True)
        pipe.unet.requires_grad_(False).eval()
        # The student's UNet is loaded beside the teacher's, as in diffusers' LCM and LCM-LoRA scripts.
        student = build_student(config.student, copy.deepcopy(pipe.unet), config, spec.w_conditioned)
        resident = [module for module in pipe.components.values() if isinstance(module, torch.nn.Module)]
        if method == "lcm":
            from bench.online_lcm import OnlineNoisedPoints
            from student_train.data.batches import rows_for_micro_step

            online = OnlineNoisedPoints(pipe, reader.settings, settings.seed)
            positions = (
                rows_for_micro_step(len(online), settings.batch_size, settings.seed, s) for s in steps
            )
            batches = online.batches(positions, device)
        else:
            batch_at = online_direct_batches(settings, reader, pipe, device)
            batches = (batch_at(step) for step in steps)
    student.model.to(device)
    if student.ema is not None:
        student.ema.to(device)
    optimizer = build_optimizer(config, student.trainable_parameters())
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=settings.mixed_precision == "bf16")

    # The training phase's own peak, as torch.cuda.reset_peak_memory_stats would give it: loading
    # (e.g. float32 weights cast to bf16 one tensor at a time) happens before, on the host.
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    reset_peak_rss()
    rss_before_training = proc_status_mib("VmRSS")
    seconds, cpu_seconds, step_transient, training_peak = [], [], [], 0.0
    for step in steps:
        rss_before_step = proc_status_mib("VmRSS")
        started, cpu_started = time.perf_counter(), time.process_time()
        with autocast:
            batch = next(batches)
            random = SampleRandom(settings.seed, step, batch.sample_ids, device)
            loss = loss_fn(student, batch, random, step).mean()
        loss.backward()
        gradients_mib = tensor_mib(p.grad for p in student.trainable_parameters())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        student.update_ema()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= settings.warmup_steps:
            seconds.append(time.perf_counter() - started)
            cpu_seconds.append(time.process_time() - cpu_started)
            # what the step held above what stays resident between steps (RSS peak since the last
            # reset), minus its gradients: activations, teacher passes (online), temporaries
            step_transient.append(proc_status_mib("VmHWM") - rss_before_step - gradients_mib)
        training_peak = max(training_peak, proc_status_mib("VmHWM"))
        reset_peak_rss()
    batches.close()
    trainable = student.trainable_parameters()
    frozen = [p for p in student.model.parameters() if not p.requires_grad]
    optimizer_state = [t for state in optimizer.state.values() for t in state.values()]
    figures = {
        "variant": settings.variant,
        "student": settings.student,
        "batch_size": settings.batch_size,
        "device": device.type,
        "step_seconds_median": statistics.median(seconds),
        "step_seconds": seconds,
        "step_cpu_seconds_median": statistics.median(cpu_seconds),
        "held_mib": held_mib(student.model, student.ema, optimizer, *resident),
        # cached: the store's fields loaded for training; online: the teacher pipeline's modules
        "source_mib": held_mib(*resident),
        "peak_rss_mib": peak_rss_mib(),
        "rss_after_imports_mib": rss_after_imports,
        "rss_before_training_mib": rss_before_training,
        "training_peak_rss_mib": training_peak,  # whole process, over the training steps only
        # the student's own parts: frozen base, adapter (or full) state, what a step adds on top
        "student_weights_mib": tensor_mib([*frozen, *student.model.buffers()]),
        "adapter_state_mib": tensor_mib(trainable) + gradients_mib + tensor_mib(optimizer_state),
        "adapter_params_mib": tensor_mib(trainable),
        "gradients_mib": gradients_mib,
        "optimizer_state_mib": tensor_mib(optimizer_state),
        "ema_mib": held_mib(student.ema) if student.ema is not None else 0.0,
        "step_transient_mib_median": statistics.median(step_transient),
        "settings": asdict(settings),
        "loss": loss.item(),
    }
    if device.type == "cuda":
        figures["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return figures


def capture_config(settings: BenchSettings):
    """The `teacher-cache run` settings of the cache variant: `cache_rows` rows of the default prompts."""
    from teacher_cache.config import CaptureConfig

    overrides = {"teacher": settings.teacher} if settings.teacher else {}
    if settings.cache_steps:
        overrides["steps"] = settings.cache_steps
    if settings.cache_size:
        overrides["height"] = overrides["width"] = settings.cache_size
    if settings.cache_fields:
        overrides["fields"] = tuple(settings.cache_fields.split(","))
    return CaptureConfig(out=settings.store, limit=settings.cache_rows, progress=False, **overrides)


def time_cache(settings: BenchSettings) -> dict:
    """`teacher-cache run` of `cache_rows` rows of the default prompts into a fresh store."""
    import torch

    from teacher_cache.runner import run

    torch.set_num_threads(settings.threads)
    store = Path(settings.store)
    if store.exists():
        shutil.rmtree(store)
    started, cpu_started = time.perf_counter(), time.process_time()
    summary = run(capture_config(settings))
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    rows = max(summary.written, 1)
    return {
        "variant": CACHE_VARIANT,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "rows": summary.written,
        "step_seconds_median": seconds / rows,  # per row
        "step_cpu_seconds_median": cpu_seconds / rows,
        "peak_rss_mib": peak_rss_mib(),
    }


def bench_store_mismatch(settings: BenchSettings, method: str) -> str | None:
    """Why the store at `settings.store` is not the one the cache variant builds with these settings
    for `method` to train from, or None when it is. Read from the store's own store.json and manifest
    (as `teacher-cache info` shows them) and checked as `student-train run` checks its store: the
    teacher, steps, image size, field groups and number of samples, then the fields the method reads."""
    from shared.errors import DistillCacheError
    from shared.store import StoreReader
    from shared.teacher import teacher_origin
    from student_train.data.batches import check_fields
    from student_train.losses import get_method

    expected = capture_config(settings)
    try:
        reader = StoreReader(settings.store)
    except DistillCacheError as error:
        return str(error)
    recorded = reader.settings
    wanted = {
        "teacher": (
            reader.teacher.get("source"),
            teacher_origin(expected.teacher, expected.revision)["source"],
        ),
        "steps": (recorded.get("num_inference_steps"), expected.steps),
        "field groups": (recorded.get("field_groups"), list(expected.fields)),
        "samples": (len(reader), expected.limit),
    }
    if expected.height:
        wanted["image size"] = (recorded.get("image_size"), [expected.height, expected.width])
    for what, (found, needed) in wanted.items():
        if found != needed:
            return f"{what} {found}, the bench needs {needed}"
    try:
        check_fields(reader, method, get_method(method).fields(train_config(settings, method)))
    except DistillCacheError as error:
        return str(error)
    return None


def ensure_bench_store(settings: BenchSettings, method: str) -> None:
    """The cache variant's store at `settings.store`, for `method`: kept when it is what these settings
    build (bench_store_mismatch), else built again (a line says why); refused when even a fresh build
    is not (e.g. rows lost to NaN)."""
    if Path(settings.store).exists():
        reason = bench_store_mismatch(settings, method)
        if reason is None:
            return
        print(f"bench: {settings.store} is outdated ({reason}): building it again", flush=True)
    run_variant(settings)
    reason = bench_store_mismatch(settings, method)
    if reason is not None:
        raise RuntimeError(f"bench: the store just built at {settings.store} does not fit: {reason}")


# ---------------------------------------------------------------- orchestration (make bench)


def run_variant(settings: BenchSettings) -> dict:
    """One variant in a fresh interpreter: its last stdout line is its figures as JSON."""
    command = [sys.executable, "-m", "bench.bench_train"]
    for name, value in asdict(settings).items():
        flag = f"--{name.replace('_', '-')}"
        command += ([flag] if value else []) if isinstance(value, bool) else [flag, str(value)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"bench variant {settings.variant} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def default_scenario() -> dict:
    """`make cache` + `make train` defaults: rows in the default cache, updates and batch of one run."""
    from shared.digits import train_prompts
    from student_train.config import TrainConfig
    from teacher_cache.config import CaptureConfig

    return {
        "cache_rows": len(train_prompts()) * CaptureConfig(out="").seeds_per_prompt,
        "train_steps": TrainConfig(cache="", out="").train_steps,
    }


def step_cost(run: dict) -> float:
    """Seconds per step: CPU time on CPU (robust to other processes sharing the cores), wall time on CUDA."""
    return run["step_cpu_seconds_median"] if run["device"] == "cpu" else run["step_seconds_median"]


LOADERS = ("cached", "preloaded")
SD15_TEACHER = Path("runs/bench/sd15_teacher")
SD15_STORE = Path("runs/bench/sd15_cache")
# SD1.5-shaped scenario: 256 px (32 x 32 latents), 8 teacher steps (a step of training reads one point
# of the trajectory, so the grid length barely matters), LoRA students at batch 2: each step is
# tens of CPU-seconds and online LoRA peaks at ~10.5 GB on this 24 GB machine. Full SD1.5 students
# (weights, EMA, gradients, Adam: ~17 GB before the teacher) do not fit here.
SD15_CACHE = dict(cache_rows=4, cache_steps=8, cache_size=256, cache_fields="noised,cond")
SD15_TRAIN = dict(student="lora", batch_size=2, warmup_steps=1, timed_steps=3)
SD15_REPEATS = {False: 1, True: 3}  # gradient checkpointing -> cached/online pairs run (medians reported)


def comparison(runs: dict[str, dict], ours: str, online: str) -> dict:
    """runs[online] vs runs[ours]: step speed-up (online / ours) and memory ratios (ours / online)."""
    ours, online = runs[ours], runs[online]

    def added(run: dict) -> float:
        return run["peak_rss_mib"] - run["rss_after_imports_mib"]

    figures = {
        "speedup": step_cost(online) / step_cost(ours),
        "peak_rss_ratio": ours["peak_rss_mib"] / online["peak_rss_mib"],
        "added_rss_ratio": added(ours) / added(online),
        "held_ratio": ours["held_mib"] / online["held_mib"],
    }
    if "peak_cuda_mib" in ours:
        figures["peak_cuda_ratio"] = ours["peak_cuda_mib"] / online["peak_cuda_mib"]
    return figures


def three_students(cache: dict, runs: dict[str, dict], scenario: dict, loader: str) -> dict:
    """Three direct students from one cache (its cost included) vs three online runs, in seconds."""
    cached = scenario["cache_rows"] * step_cost(cache)
    cached += STUDENTS_PER_CACHE * scenario["train_steps"] * step_cost(runs[f"direct-{loader}"])
    online = STUDENTS_PER_CACHE * scenario["train_steps"] * step_cost(runs["direct-online"])
    return {"cached_seconds": cached, "online_seconds": online, "cost_ratio": online / cached}


def print_table(runs: dict[str, dict], summary: dict) -> None:
    print(
        "| variant | step (s) | step CPU (s) | peak RSS (MiB) | RSS added (MiB) | held (MiB) "
        "| of which data / teacher (MiB) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, run in runs.items():
        added = run["peak_rss_mib"] - run["rss_after_imports_mib"]
        print(
            f"| {name} | {run['step_seconds_median']:.3f} | {run['step_cpu_seconds_median']:.3f} | "
            f"{run['peak_rss_mib']:.0f} | {added:.0f} | {run['held_mib']:.1f} | {run['source_mib']:.1f} |"
        )
    for key, figures in summary.items():
        if not isinstance(figures, dict):
            continue
        if "speedup" in figures:
            median = f"median of {len(figures['pairs'])} pairs: " if "pairs" in figures else ""
            print(
                f"{key}: {median}online / ours step {figures['speedup']:.2f}x (target >= 1.5x); ours / online peak "
                f"RSS {figures['peak_rss_ratio']:.2f}, RSS added {figures['added_rss_ratio']:.2f}, held "
                f"tensors {figures['held_ratio']:.2f} (target <= 0.6)"
            )
        elif "cost_ratio" in figures:
            print(
                f"{key}: three students of {summary['scenario']['train_steps']} steps from one cache of "
                f"{summary['scenario']['cache_rows']} rows ({summary['cache_seconds_per_row']:.3f} s/row) = "
                f"{figures['cached_seconds']:.0f} s; three online runs = {figures['online_seconds']:.0f} s: "
                f"{figures['cost_ratio']:.1f}x cheaper (target >= 3x)"
            )


def embedded_scenario(store: Path = BENCH_STORE, cache_rows: int = 64) -> dict:
    """The embedded teacher: every variant with the default (full) student, lcm with LoRA too."""
    cache = run_variant(BenchSettings(variant=CACHE_VARIANT, store=str(store), cache_rows=cache_rows))
    runs = {variant: run_variant(BenchSettings(variant=variant, store=str(store))) for variant in VARIANTS}
    for variant in VARIANTS[:3]:  # the lcm ones
        runs[f"{variant} (lora)"] = run_variant(
            BenchSettings(variant=variant, store=str(store), student="lora")
        )
    scenario = default_scenario()
    summary = {"scenario": scenario, "cache_seconds_per_row": step_cost(cache)}
    for loader in LOADERS:
        summary[f"lcm_full_{loader}"] = comparison(runs, f"lcm-{loader}", "lcm-online")
        summary[f"lcm_lora_{loader}"] = comparison(runs, f"lcm-{loader} (lora)", "lcm-online (lora)")
        summary[f"direct_{loader}"] = comparison(runs, f"direct-{loader}", "direct-online")
        summary[f"direct_three_students_{loader}"] = three_students(cache, runs, scenario, loader)
    print_table(runs, summary)
    return {"cache": cache, "runs": runs, "summary": summary}


def sd15_scenario() -> dict:
    """SD1.5's architecture (random weights, bench/sd15_shaped_teacher.py): lcm LoRA, cached vs online."""
    from bench.sd15_shaped_teacher import save_sd15_shaped_teacher

    teacher = save_sd15_shaped_teacher(SD15_TEACHER)
    cache = run_variant(
        BenchSettings(variant=CACHE_VARIANT, store=str(SD15_STORE), teacher=str(teacher), **SD15_CACHE)
    )
    runs, summary = {}, {"cache_seconds_per_row": step_cost(cache)}
    for checkpointing, repeats in SD15_REPEATS.items():
        label = "lora, SD1.5-shaped" + (", gradient checkpointing" if checkpointing else "")
        pairs = []
        for repeat in range(1, repeats + 1):
            for variant in ("lcm-cached", "lcm-online"):
                runs[f"{variant} ({label}) #{repeat}"] = run_variant(
                    BenchSettings(
                        variant=variant,
                        store=str(SD15_STORE),
                        gradient_checkpointing=checkpointing,
                        **SD15_TRAIN,
                    )
                )
            pairs.append(
                comparison(runs, f"lcm-cached ({label}) #{repeat}", f"lcm-online ({label}) #{repeat}")
            )
        medians = {name: statistics.median(pair[name] for pair in pairs) for name in pairs[0]}
        summary["lcm_lora_sd15" + ("_checkpointing" if checkpointing else "")] = {**medians, "pairs": pairs}
    print_table(runs, summary)
    return {"cache": cache, "runs": runs, "summary": summary}


def main() -> dict:
    """Both scenarios, each variant in its own process."""
    return {"embedded": embedded_scenario(), "sd15_shaped": sd15_scenario()}


def parse_settings(argv: list[str]) -> BenchSettings:
    from shared.config_flags import add_config_flags, config_from_args

    parser = argparse.ArgumentParser(prog="python -m bench.bench_train", description=__doc__.splitlines()[0])
    add_config_flags(parser, BenchSettings)
    settings = config_from_args(BenchSettings, parser.parse_args(argv))
    if settings.variant not in (*VARIANTS, CACHE_VARIANT):
        parser.error(f"--variant {settings.variant!r}: choose from {', '.join((*VARIANTS, CACHE_VARIANT))}")
    return settings


if __name__ == "__main__":
    chosen = parse_settings(sys.argv[1:])
    print(json.dumps(time_cache(chosen) if chosen.variant == CACHE_VARIANT else measure(chosen)))
