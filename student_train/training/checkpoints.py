"""Resumable checkpoints of `student-train run`: OUT/checkpoints/step_N/ (accelerate's state: model,
optimizer, EMA, LR schedule; then run.json, written last by the main process once every process
has saved, so a folder without run.json is incomplete and ignored). The last CHECKPOINTS_KEPT are kept.

run.json records the run's digest (its settings, TrainConfig.run_digest), the step, and how the
global batch was split: `batch_size` x `grad_accum` x `num_processes`. A resume continues the same
data stream at position step x global batch (data_order.py). It may use another number of
processes if the global batch stays the same, e.g. 2 processes x batch 4 -> 1 process x batch 4 x
grad_accum 2. Anything that changes the global batch is refused with one line.

    resume_from = resume_point(config, out)                 # None, or the newest step_N of this run
    check_global_batch(resume_from, config, num_processes)  # after the processes are known
    save_checkpoint(accelerator, config, out, step)
"""

import dataclasses
import json
import shutil
from pathlib import Path

from shared.errors import DistillCacheError
from student_train.config import TrainConfig
from student_train.losses.defaults import resolve_defaults, same_run_digests

CHECKPOINTS_KEPT = 2
RUN_FILE = "run.json"


def checkpoint_dirs(out: Path) -> list[Path]:
    """Complete checkpoints (run.json is written last), oldest first."""
    return sorted(folder for folder in (out / "checkpoints").glob("step_*") if (folder / RUN_FILE).exists())


def read_run(folder: Path) -> dict:
    return json.loads((folder / RUN_FILE).read_text())


def resume_point(config, out: Path) -> Path | None:
    """The checkpoint to continue from: the newest one of this same run, if --resume."""
    existing = checkpoint_dirs(out)
    if existing and not config.resume:
        raise DistillCacheError(
            f"{out} already holds checkpoints of a run: pass --resume to continue it, or choose another --out"
        )
    if not config.resume or not existing:
        return None
    saved = read_run(existing[-1])
    if not is_same_run(saved["run_digest"], config):
        raise DistillCacheError(
            f"{existing[-1]} is a checkpoint of another run ({changed_settings(config, out)}); "
            "resume with the same flags or choose another --out"
        )
    if "global_batch" not in saved:
        raise DistillCacheError(
            f"{existing[-1]} was written by an older student-train, which did not record its global batch; "
            "train again into another --out"
        )
    return existing[-1]


def is_same_run(saved_digest: str, config) -> bool:
    """Whether a recorded run digest is this run's, however its method defaults were spelled (a
    concrete "huber" or null, losses/defaults.py)."""
    return saved_digest in same_run_digests(config)


def changed_settings(config, out: Path) -> str:
    """The settings that differ from the run recorded in OUT/train_config.json, for the refusal."""
    path = out / "train_config.json"
    if not path.is_file():
        return "different settings"
    known = {field.name for field in dataclasses.fields(TrainConfig)}
    recorded = json.loads(path.read_text())
    before = resolve_defaults(TrainConfig(**{k: v for k, v in recorded.items() if k in known})).identity()
    now = resolve_defaults(config).identity()
    changed = [
        f"--{name.replace('_', '-')} {before.get(name)} there, {value} here"
        for name, value in now.items()
        if before.get(name) != value
    ]
    return "; ".join(changed) or f"different settings, see {path}"


def checkpoint_step(folder: Path | None) -> int:
    return 0 if folder is None else int(read_run(folder)["step"])


def global_batch_record(config, num_processes: int) -> dict:
    return {
        "global_batch": config.batch_size * config.grad_accum * num_processes,
        "batch_size": config.batch_size,
        "grad_accum": config.grad_accum,
        "num_processes": num_processes,
    }


def check_global_batch(folder: Path | None, config, num_processes: int) -> None:
    """A resume on another split of the global batch is the same run; another global batch is refused."""
    if folder is None:
        return
    saved, now = read_run(folder), global_batch_record(config, num_processes)
    if saved["global_batch"] != now["global_batch"]:
        raise DistillCacheError(
            f"{folder} was trained with a global batch of {saved['global_batch']} (--batch-size "
            f"{saved['batch_size']} x --grad-accum {saved['grad_accum']} x {saved['num_processes']} processes); "
            f"this launch makes {now['batch_size']} x {now['grad_accum']} x {num_processes} = "
            f"{now['global_batch']}: choose --batch-size and --grad-accum whose product with the number of "
            f"processes is {saved['global_batch']}, or another --out"
        )


def save_checkpoint(accelerator, config, out: Path, step: int) -> None:
    folder = out / "checkpoints" / f"step_{step:07d}"
    accelerator.save_state(str(folder))
    accelerator.wait_for_everyone()  # every process's part (its RNG state) is on disk before run.json
    if accelerator.is_main_process:
        record = {"run_digest": config.run_digest(), "step": step}
        record.update(global_batch_record(config, accelerator.num_processes))
        (folder / RUN_FILE).write_text(json.dumps(record))
        for old in checkpoint_dirs(out)[:-CHECKPOINTS_KEPT]:
            shutil.rmtree(old)
