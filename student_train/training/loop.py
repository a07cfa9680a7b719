"""The training loop of `student-train run`: store -> student -> loss -> exported student folder.

    train(TrainConfig(cache="runs/cache", out="runs/student", method="lcm", student="lora"))

Read top to bottom: validate every input (nothing is written before), open the cached fields (in
memory or streamed batch by batch, batches.py) and load the teacher's denoiser weights only (no text
encoder, no VAE, no teacher forward pass), build the student and the method's loss, then an
accelerate loop (mixed precision, gradient accumulation, DDP when launched with `accelerate
launch`) that logs to CSV + TensorBoard under a tqdm bar and saves a resumable checkpoint every N
updates. Data order and every random draw are functions of
(seed, step, sample id), so a run killed and resumed with `--resume` ends with the same weights as
an uninterrupted one.

OUT/ holds the student folder (export.py) plus train_config.json, logs/ and checkpoints/.
"""

import csv
import itertools
import json
import math
import shutil
import time
from functools import partial
from pathlib import Path

import torch
from tqdm.auto import tqdm

from shared.errors import DistillCacheError
from shared.schedule import NoiseSchedule
from student_train.config import TrainConfig
from student_train.data.batches import TrainingData, check_fields, rows_for_micro_step
from student_train.data.randomness import SampleRandom
from student_train.export import export_student
from student_train.losses import get_method
from student_train.students import Origin, build_student, check_student_settings
from student_train.students.denoiser import load_denoiser
from student_train.students.init import check_init, load_init

MIXED_PRECISION = ("no", "fp16", "bf16")
LR_SCHEDULES = ("constant", "cosine")
CHECKPOINTS_KEPT = 2


def open_store(url: str):
    from shared.store import StoreReader

    if "://" not in url and not Path(url).exists():
        raise DistillCacheError(
            f"no store at {url!r}; build one with `teacher-cache run --out {url}` (make cache)"
        )
    return StoreReader(url)


def validate_settings(config: TrainConfig) -> None:
    """Checks that need nothing but the config."""
    get_method(config.method)
    check_student_settings(config.student, config.lora_rank)
    if config.mixed_precision not in MIXED_PRECISION:
        raise DistillCacheError(
            f"unknown --mixed-precision {config.mixed_precision!r}; valid: {', '.join(MIXED_PRECISION)}"
        )
    if config.lr_schedule not in LR_SCHEDULES:
        raise DistillCacheError(
            f"unknown --lr-schedule {config.lr_schedule!r}; valid: {', '.join(LR_SCHEDULES)}"
        )
    if config.mixed_precision == "fp16" and (config.cpu or not torch.cuda.is_available()):
        raise DistillCacheError("--mixed-precision fp16 needs a GPU; use bf16 or no on CPU")
    for name in ("train_steps", "batch_size", "grad_accum", "num_student_steps", "log_every"):
        if getattr(config, name) <= 0:
            raise DistillCacheError(f"--{name.replace('_', '-')} must be > 0, got {getattr(config, name)}")
    if config.w_min > config.w_max:
        raise DistillCacheError(f"--w-min {config.w_min} is above --w-max {config.w_max}")


def lr_factor(config: TrainConfig, num_processes: int, n: int) -> float:
    """LR multiplier after n scheduler steps (accelerate steps the schedule once per process)."""
    update = n / num_processes
    warmup = min(1.0, (update + 1) / config.lr_warmup_steps) if config.lr_warmup_steps else 1.0
    if config.lr_schedule == "cosine":
        return warmup * 0.5 * (1 + math.cos(math.pi * min(update / config.train_steps, 1.0)))
    return warmup


def micro_step_schedule(config: TrainConfig, start_step: int, num_processes: int, rank: int) -> list[int]:
    """This process's micro-batches from `start_step` on, in loop order, as global micro-batch indices
    (grad_accum per update, interleaved across processes): what picks each one's rows and draws."""
    return [
        (step * config.grad_accum + micro) * num_processes + rank
        for step in range(start_step, config.train_steps)
        for micro in range(config.grad_accum)
    ]


def checkpoint_dirs(out: Path) -> list[Path]:
    """Complete checkpoints (run.json is written last), oldest first."""
    return sorted(folder for folder in (out / "checkpoints").glob("step_*") if (folder / "run.json").exists())


def resume_point(config: TrainConfig, out: Path) -> Path | None:
    """The checkpoint to continue from: the newest one of this same run, if --resume."""
    existing = checkpoint_dirs(out)
    if existing and not config.resume:
        raise DistillCacheError(
            f"{out} already holds checkpoints of a run: pass --resume to continue it, or choose another --out"
        )
    if not config.resume or not existing:
        return None
    saved = json.loads((existing[-1] / "run.json").read_text())
    if saved["run_digest"] != config.run_digest():
        raise DistillCacheError(
            f"{existing[-1]} is a checkpoint of another run (different settings, see {out}/train_config.json); "
            "resume with the same flags or choose another --out"
        )
    return existing[-1]


def save_checkpoint(accelerator, config: TrainConfig, out: Path, step: int) -> None:
    folder = out / "checkpoints" / f"step_{step:07d}"
    accelerator.save_state(str(folder))
    if accelerator.is_main_process:
        (folder / "run.json").write_text(json.dumps({"run_digest": config.run_digest(), "step": step}))
        for old in checkpoint_dirs(out)[:-CHECKPOINTS_KEPT]:
            shutil.rmtree(old)


class TrainLog:
    """Append-only CSV (OUT/logs/train_log.csv) next to accelerate's TensorBoard tracker."""

    COLUMNS = ("step", "loss", "lr", "seconds")

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled
        if enabled and not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(",".join(self.COLUMNS) + "\n")

    def write(self, accelerator, step: int, loss: float, lr: float, seconds: float) -> None:
        accelerator.log({"loss": loss, "lr": lr}, step=step)
        if self.enabled:
            with self.path.open("a", newline="") as handle:
                csv.writer(handle).writerow([step, f"{loss:.6g}", f"{lr:.6g}", f"{seconds:.1f}"])


def train(config: TrainConfig) -> Path:
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    out = Path(config.out)

    # 1. Validate every input before writing anything.
    validate_settings(config)
    method = get_method(config.method)
    reader = open_store(config.cache)
    check_fields(reader, method.name, method.fields(config))
    settings = reader.settings
    check_init(config, reader)
    resume_from = resume_point(config, out)
    schedule = NoiseSchedule.from_scheduler_config(
        settings["scheduler"]["config"], settings["scheduler"]["class"]
    )
    loss_fn = method.build(config, settings, schedule)

    # 2. The cached fields and the teacher's denoiser weights (or an --init student's): nothing else.
    data = TrainingData(reader, method.fields(config), config.split, config.max_samples, config.loader)
    source = config.teacher or reader.teacher["source"]
    if config.init:
        denoiser, origin = load_init(config.init, config.teacher or None, method.w_conditioned)
    else:
        denoiser = load_denoiser(
            source,
            settings.get("denoiser", "unet"),
            None if config.teacher else reader.teacher["revision"],
            expected_digest=reader.fingerprint["denoiser_hash"],
        )
        origin = Origin()
    student = build_student(config.student, denoiser, config, method.w_conditioned, origin)
    del denoiser
    check_student = getattr(loss_fn, "check_student", None)  # a loss that needs a shape check (blockkd)
    if check_student is not None:
        check_student(student, data.batch(torch.arange(1), next(student.model.parameters()).device))

    # 3. accelerate: device, mixed precision, accumulation, DDP, TensorBoard.
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.grad_accum,
        cpu=config.cpu,
        log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
    )
    if accelerator.device.type == "cpu" and config.threads > 0:
        torch.set_num_threads(config.threads)  # the process's setting: run() is the entry point
    optimizer = torch.optim.AdamW(
        student.trainable_parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, partial(lr_factor, config, accelerator.num_processes)
    )
    student.model, optimizer, lr_schedule = accelerator.prepare(student.model, optimizer, lr_schedule)
    if student.ema is not None:
        student.ema.to(accelerator.device)
        accelerator.register_for_checkpointing(student.ema)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(config.to_json(), indent=2))
    accelerator.init_trackers("tensorboard")
    start_step = 0
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        start_step = json.loads((resume_from / "run.json").read_text())["step"]
    log = TrainLog(out / "logs" / "train_log.csv", accelerator.is_main_process)
    if accelerator.is_main_process:
        where = "in memory" if data.in_memory else "streamed"
        kind = config.student + (f" {config.prune}" if config.student == "pruned" else "")
        start = f"--init {config.init}" if config.init else f"denoiser of {source}"
        print(
            f"student-train: {config.method}/{kind} from {config.cache}: {len(data)} {config.split} rows "
            f"({data.nbytes / 2**20:.0f} MiB, {where}), {start}; {config.train_steps} updates of "
            f"{config.batch_size} x {config.grad_accum} x {accelerator.num_processes} on {accelerator.device}"
            + (f", resumed at {start_step}" if start_step else "")
            + f" -> {out}",
            flush=True,
        )

    # 4. The loop: one optimizer update per step, grad_accum micro-batches each.
    started, window = time.time(), []
    progress = tqdm(
        range(start_step, config.train_steps),
        initial=start_step,
        total=config.train_steps,
        desc=f"{config.method}/{config.student}",
        disable=not accelerator.is_local_main_process,
    )
    micro_steps = micro_step_schedule(
        config, start_step, accelerator.num_processes, accelerator.process_index
    )
    batches = data.batches(
        (rows_for_micro_step(len(data), config.batch_size, config.seed, m) for m in micro_steps),
        accelerator.device,
    )
    micro_batches = zip(micro_steps, batches)
    for step in progress:
        for micro_step, batch in itertools.islice(micro_batches, config.grad_accum):
            random = SampleRandom(config.seed, micro_step, batch.sample_ids, accelerator.device)
            with accelerator.accumulate(student.model), accelerator.autocast():
                loss = loss_fn(student, batch, random, step).mean()
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(student.trainable_parameters(), config.max_grad_norm)
                optimizer.step()
                lr_schedule.step()
                optimizer.zero_grad(set_to_none=True)
            window.append(loss.detach().float().item())
        student.update_ema()
        done = step + 1
        if done % config.log_every == 0 or done == config.train_steps:
            mean_loss = sum(window) / len(window)
            log.write(accelerator, done, mean_loss, lr_schedule.get_last_lr()[0], time.time() - started)
            progress.set_postfix(loss=f"{mean_loss:.4g}")
            window = []
        if (config.checkpoint_every and done % config.checkpoint_every == 0) or done == config.train_steps:
            save_checkpoint(accelerator, config, out, done)
    batches.close()  # stops the reader thread

    # 5. Export the student folder.
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if accelerator.is_main_process:
        summary = {
            "train_steps": config.train_steps,
            "resumed_from_step": start_step,
            "seconds": time.time() - started,
        }
        export_student(student, config, reader, out, summary)
    return out
