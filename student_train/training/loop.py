"""The training loop of `student-train run`: store -> student -> loss -> exported student folder.

    train(TrainConfig(cache="runs/cache", out="runs/student", method="lcm", student="lora"))

Read top to bottom: validate every input (nothing is written before), open the cached fields (in
memory or streamed batch by batch, batches.py) and load the teacher's denoiser weights only (no text
encoder, no VAE, no teacher forward pass), build the student and the method's loss, then an
accelerate loop (mixed precision, gradient accumulation, DDP when launched with `accelerate
launch`) that logs to CSV + TensorBoard under a tqdm bar and saves a resumable checkpoint every N
updates. The data order is one stream of samples cut into global batches (data_order.py): each
process reads only its own share, and the update is the same however the global batch is split
into processes and micro-batches. Every random draw is a function of (seed, epoch, sample id), so a
run killed and resumed with `--resume` ends with the same weights as an uninterrupted one.

    accelerate launch --multi_gpu --num_processes 2 -m student_train run ...   # DDP (gloo on CPU)

OUT/ holds the student folder (export.py) plus train_config.json, logs/ and checkpoints/.
"""

import csv
import json
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from shared.config_flags import check_finite_numbers
from shared.errors import DistillCacheError
from shared.output_folder import check_output_folder
from shared.processes import run_on_cpu
from shared.schedule import NoiseSchedule
from student_train.config import MIXED_PRECISION, OPTIMIZERS, WEIGHT_DTYPES, TrainConfig
from student_train.data.batches import TrainingData, check_fields, select_rows
from student_train.data.randomness import SampleRandom
from student_train.export import export_student
from student_train.losses import check_family, get_method, resolve_defaults, w_range
from student_train.students import Origin, build_student, check_student_settings
from student_train.students.denoiser import load_denoiser
from student_train.students.init import check_init, load_init
from student_train.training.checkpoints import (
    check_global_batch,
    checkpoint_step,
    resume_point,
    save_checkpoint,
)
from student_train.training.data_order import DataOrder
from student_train.training.optimizer import (
    LR_SCHEDULES,
    build_optimizer,
    check_optimizer_available,
    lr_schedule,
)


def open_store(url: str, verify: bool = True, cache_dir: str = ""):
    from shared.store import StoreReader

    if "://" not in url and not Path(url).exists():
        raise DistillCacheError(
            f"no store at {url!r}; build one with `teacher-cache run --out {url}` (make cache)"
        )
    return StoreReader(url, verify=verify, cache_dir=cache_dir or None)


def validate_settings(config: TrainConfig) -> None:
    """Checks that need nothing but the config (and that --out is a folder we may write)."""
    check_finite_numbers(config)
    check_output_folder(config.out, "--out")
    get_method(config.method)
    check_student_settings(config.student, config.lora_rank, config.base_dtype)
    for flag, value, valid in (
        ("--mixed-precision", config.mixed_precision, MIXED_PRECISION),
        ("--lr-schedule", config.lr_schedule, LR_SCHEDULES),
        ("--save-dtype", config.save_dtype, tuple(WEIGHT_DTYPES)),
        ("--optimizer", config.optimizer, OPTIMIZERS),
    ):
        if value not in valid:
            raise DistillCacheError(f"unknown {flag} {value!r}; valid: {', '.join(valid)}")
    if config.mixed_precision == "fp16" and run_on_cpu(config.cpu):
        # accelerate has no fp16 autocast on the CPU (it would silently train in float32)
        raise DistillCacheError("--mixed-precision fp16 needs a GPU; use bf16 or no on CPU")
    check_optimizer_available(config.optimizer)
    for name in ("train_steps", "batch_size", "grad_accum", "num_student_steps", "log_every", "read_ahead"):
        if getattr(config, name) <= 0:
            raise DistillCacheError(f"--{name.replace('_', '-')} must be > 0, got {getattr(config, name)}")
    w_min, w_max = w_range(config)
    if w_min > w_max:
        raise DistillCacheError(f"--w-min {w_min:g} is above --w-max {w_max:g}")


class TrainLog:
    """Append-only CSV (OUT/logs/train_log.csv) next to accelerate's TensorBoard tracker."""

    COLUMNS = ("step", "loss", "lr", "seconds")

    def __init__(self, path: Path, enabled: bool, start_step: int = 0):
        """A resumed run (start_step > 0) keeps the rows up to its checkpoint and drops later ones, which
        the interrupted run logged after it and which the resumed run logs again."""
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        kept = []
        if path.exists() and start_step:
            with path.open(newline="") as handle:
                kept = [row for row in csv.DictReader(handle) if int(row["step"]) <= start_step]
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.COLUMNS)
            writer.writeheader()
            writer.writerows(kept)

    def write(self, accelerator, step: int, losses: list[float], lr: float, seconds: float) -> float:
        """Log the mean of `losses` over every process (one collective: all processes call it)."""
        local_mean = torch.tensor(sum(losses) / len(losses), device=accelerator.device)
        loss = accelerator.reduce(local_mean, reduction="mean").item()
        accelerator.log({"loss": loss, "lr": lr}, step=step)
        if self.enabled:
            with self.path.open("a", newline="") as handle:
                csv.writer(handle).writerow([step, f"{loss:.6g}", f"{lr:.6g}", f"{seconds:.1f}"])
        return loss


def train(config: TrainConfig, data=None) -> Path:
    """Train and export; `data` replaces the store's batches with another source of the same shape
    (len, batches(schedule, device), placement, nbytes), e.g. bench/online_lcm.py's teacher in the loop."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    out = Path(config.out)

    # 1. Validate every input before writing anything; the settings left to the method take its
    # defaults here, once, so that train_config.json, distill.json and the checkpoints record them.
    validate_settings(config)
    method = get_method(config.method)
    config = resolve_defaults(config)
    reader = open_store(config.cache, config.verify_reads, config.cache_dir)
    settings = reader.settings
    check_family(config, settings)
    if data is None:
        check_fields(reader, method.name, method.fields(config))
    check_init(config, reader)
    resume_from = resume_point(config, out)
    start_step = checkpoint_step(resume_from)
    schedule = NoiseSchedule.from_scheduler_config(
        settings["scheduler"]["config"], settings["scheduler"]["class"]
    )
    loss_fn = method.build(config, settings, schedule)

    # 2. accelerate: the processes (DDP when launched; gloo on CPU), device, mixed precision, accumulation.
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.grad_accum,
        cpu=run_on_cpu(config.cpu),
        log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
    )
    check_global_batch(resume_from, config, accelerator.num_processes)
    if accelerator.device.type == "cpu" and config.threads > 0:
        torch.set_num_threads(config.threads)  # the process's setting: run() is the entry point

    # 3. This process's share of the cached fields, and the teacher's denoiser weights (or an --init
    # student's): nothing else.
    order = DataOrder(
        len(data) if data is not None else len(select_rows(reader, config.split, config.max_samples)),
        config.seed,
        config.batch_size,
        config.grad_accum,
        accelerator.num_processes,
        accelerator.process_index,
    )
    if data is None:
        data = TrainingData(
            reader,
            method.fields(config),
            config.split,
            config.max_samples,
            config.loader,
            needed=order.rows_read(start_step, config.train_steps),
        )
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
        first_positions = next(
            iter(order.schedule(start_step, config.train_steps))
        )  # rows this process reads
        check_student(
            student, data.batch(order.rows(first_positions)[:1], next(student.model.parameters()).device)
        )

    # 4. Optimizer, LR schedule (stepped once per update), DDP wrapper, checkpointed state.
    optimizer = build_optimizer(config, student.trainable_parameters())
    lr_steps = lr_schedule(config, optimizer)
    student.model, optimizer = accelerator.prepare(student.model, optimizer)
    if student.ema is not None:
        student.ema.to(accelerator.device)
        accelerator.register_for_checkpointing(student.ema)
    accelerator.register_for_checkpointing(lr_steps)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(config.to_json(), indent=2))
    accelerator.init_trackers("tensorboard")
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
    log = TrainLog(out / "logs" / "train_log.csv", accelerator.is_main_process, start_step)
    if accelerator.is_main_process:
        kind = config.student + (f" {config.prune}" if config.student == "pruned" else "")
        start = f"--init {config.init}" if config.init else f"denoiser of {source}"
        print(
            f"student-train: {config.method}/{kind} from {config.cache}: {len(data)} {config.split} rows "
            f"({data.nbytes / 2**20:.0f} MiB read by each process; {data.placement}), {start}; "
            f"{config.train_steps} updates of {config.batch_size} x {config.grad_accum} x "
            f"{accelerator.num_processes} processes on {accelerator.device}"
            + (f", resumed at {start_step}" if start_step else "")
            + f" -> {out}",
            flush=True,
        )
        if reader.cache_note:  # --cache-dir auto: whether a remote store's shards are copied locally
            print(f"student-train: {reader.cache_note}", flush=True)

    # 5. The loop: one optimizer update per step, grad_accum micro-batches each.
    started, window = time.time(), []
    progress = tqdm(
        range(start_step, config.train_steps),
        initial=start_step,
        total=config.train_steps,
        desc=f"{config.method}/{config.student}",
        disable=not accelerator.is_local_main_process,
    )
    micro_positions = list(order.schedule(start_step, config.train_steps))
    batches = data.batches(
        (order.rows(positions) for positions in micro_positions), accelerator.device, config.read_ahead
    )
    micro_batches = zip(micro_positions, batches)
    for step in progress:
        for _ in range(config.grad_accum):
            positions, batch = next(micro_batches)
            random = SampleRandom(config.seed, order.epochs(positions), batch.sample_ids, accelerator.device)
            with accelerator.accumulate(student.model), accelerator.autocast():
                # The mean over this micro-batch; accelerate divides by grad_accum, DDP averages the
                # processes: the mean over the global batch (equal micro-batches, data_order.py).
                loss = loss_fn(student, batch, random, step).mean()
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(student.trainable_parameters(), config.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            window.append(loss.detach().float().item())
        if not accelerator.optimizer_step_was_skipped:  # fp16: the scaler skips steps with inf gradients
            lr_steps.step()
        student.update_ema()
        done = step + 1
        if done % config.log_every == 0 or done == config.train_steps:
            mean_loss = log.write(accelerator, done, window, lr_steps.get_last_lr()[0], time.time() - started)
            progress.set_postfix(loss=f"{mean_loss:.4g}")
            window = []
        if (config.checkpoint_every and done % config.checkpoint_every == 0) or done == config.train_steps:
            save_checkpoint(accelerator, config, out, done)
    batches.close()  # stops the reader thread

    # 6. Export the student folder.
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if accelerator.is_main_process:
        summary = {
            "train_steps": config.train_steps,
            "resumed_from_step": start_step,
            "seconds": time.time() - started,
            "num_processes": accelerator.num_processes,
            "global_batch": order.global_batch,
        }
        export_student(student, config, reader, out, summary)
    return out
