"""TrainConfig: every setting of `student-train run`, one frozen dataclass. CLI flags map 1:1 onto its
fields (`--lora-rank` -> lora_rank); the resolved settings are written beside the outputs
(OUT/train_config.json) and into the exported student's distill.json.

The defaults are the run `make train` does on the embedded teacher (chosen by experiment, see
README "students"); the reference recipes' values for Stable Diffusion are in the field comments.
"""

import dataclasses
import hashlib
import json
from dataclasses import dataclass

import torch

from shared.config_flags import option

LOADERS = ("auto", "memory", "stream")  # --loader (student_train/data/batches.py)
POINTS = ("noised", "trajectory", "mix")  # --points (student_train/data/points.py)
REFLOW_T_SCHEDULES = ("uniform", "t0", "steps")  # --reflow-t-schedule (student_train/losses/reflow.py)
MIXED_PRECISION = ("no", "fp16", "bf16")  # --mixed-precision (accelerate's names)
WEIGHT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}  # --base/save-dtype
OPTIMIZERS = ("adamw", "adamw8bit")  # --optimizer (training/optimizer.py)
PRUNE_LEVELS = ("base", "small", "tiny")  # --prune (student_train/students/pruning.py)


@dataclass(frozen=True)
class TrainConfig:
    cache: str = option(None, "the store (path or fsspec URL)", required=True)
    out: str = option(None, "output folder: the exported student + logs + checkpoints", required=True)
    method: str = option(
        "direct", "direct | lcm | progressive | guidance | tcd | reflow | blockkd (docs/methods.md)"
    )
    student: str = option("full", "full | lora | pruned (BK-SDM block removal, see --prune)")
    prune: str = option(
        "small",
        "pruned students: base (one resnet+attention pair fewer per stage) | small (also no mid block) | "
        "tiny (also no innermost stage)",
        choices=PRUNE_LEVELS,
    )
    init: str = option(
        "",
        "start from an earlier student folder (student-train run --out): its architecture and weights, a LoRA "
        "folder fused onto its base; any method and student kind (not pruned); distill.json records the chain",
    )
    teacher: str = option(
        "",
        "the teacher's folder or Hub id, e.g. your own copy (its denoiser's digest must match the store's)",
        default_text="the source the store records",
    )
    num_student_steps: int = option(
        4, "K: the student's sampling steps (direct trains them; recommended for all)"
    )
    train_steps: int = option(1000, "optimizer updates")
    batch_size: int = option(16, "samples per micro-batch, in each process")
    grad_accum: int = option(1, "micro-batches per optimizer update")
    lr: float = option(1e-4, "LCM: 1e-6 full / 1e-4 LoRA (SD); Direct Distill: 1e-5 full / 1e-4 LoRA")
    lr_schedule: str = option("cosine", "constant | cosine (decays to 0 at --train-steps)")
    lr_warmup_steps: int = option(0, "linear warm-up of the learning rate over N updates")
    weight_decay: float = option(0.0, "AdamW weight decay")
    max_grad_norm: float = option(1.0, "gradient clipping norm")
    loss: str | None = option(None, "l2 | huber (pseudo-Huber); default huber, l2 for blockkd (BK-SDM)")
    huber_c: float = option(0.001, "pseudo-Huber c (LCM scripts: 0.001)")
    ema_decay: float = option(0.95, "full students' EMA (the LCM target)")
    lora_rank: int = option(64, "LoRA rank r (LCM-LoRA: 64)")
    lora_alpha: int = option(64, "LoRA alpha (LCM-LoRA: 64)")
    w_min: float | None = option(
        None,
        "lcm, tcd, guidance: w ~ U[w_min, w_max], Imagen convention (pipeline scale - 1)",
        default_text="lcm / tcd 5 (the SD LCM script), guidance 0 (Meng et al.)",
    )
    w_max: float | None = option(
        None, "lcm, tcd, guidance: upper end of the w range", default_text="lcm / tcd 15, guidance 4"
    )
    time_cond_proj_dim: int = option(256, "lcm / tcd / guidance full students' w-embedding; 0: none")
    timestep_scaling: float = option(10.0, "lcm boundary conditions")
    points: str | None = option(
        None,
        "lcm, tcd, guidance: where the points with the teacher's cached outputs come from: noised (clean "
        "latents noised to LCM's solver grid, the store's noised group: what the LCM scripts train on and "
        "few-step sampling visits), trajectory (the teacher's cached CFG trajectories), mix (a coin per sample)",
        choices=POINTS,
        default_text="noised for lcm and tcd, trajectory for guidance",
    )
    weighting: str = option("truncated_snr", "progressive: truncated_snr | snr_plus_one")
    tcd_gamma: float = option(
        0.3, "tcd: the gamma (eta of TCDScheduler.step) the exported student samples with (TCD: 0.3)"
    )
    reflow_t_schedule: str = option(
        "uniform",
        "reflow: where on each noise -> teacher-output line it trains: uniform (reflow), t0 (the noise end "
        "only: one-step distillation), steps (the K points of the exported sampler at --num-student-steps)",
        choices=REFLOW_T_SCHEDULES,
    )
    lambda_task: float = option(
        1.0, "blockkd: weight of the task term (guided student eps vs the eps of the teacher's cached step)"
    )
    lambda_out: float = option(1.0, "blockkd: weight of output distillation (cached cond / uncond outputs)")
    lambda_feat: float = option(1.0, "blockkd: weight of feature distillation (cached block outputs)")
    gradient_checkpointing: bool = option(
        False,
        "recompute activations in the backward pass (the denoiser's own gradient checkpointing; "
        "direct also recomputes each of its K steps): less memory, ~1 more forward per step",
    )
    mixed_precision: str = option(
        "no",
        "accelerate's autocast of the forward passes (fp16 only where accelerate has it: a GPU); weights, "
        "optimizer state and the loss arithmetic stay float32",
        choices=MIXED_PRECISION,
    )
    base_dtype: str = option(
        "fp32",
        "LoRA students: dtype of the frozen base weights (the reference scripts' weight_dtype); the "
        "adapters train in float32. Full students train every weight: fp32 only",
        choices=tuple(WEIGHT_DTYPES),
    )
    save_dtype: str = option("fp32", "dtype of the exported weights", choices=tuple(WEIGHT_DTYPES))
    optimizer: str = option(
        "adamw",
        "adamw: torch AdamW; adamw8bit: bitsandbytes' AdamW8bit (8-bit moments, CPU and CUDA; "
        "pip install 'distillcache[lowmem]')",
        choices=OPTIMIZERS,
    )
    cpu: bool = option(False, "force CPU even when a GPU is visible")
    threads: int = option(
        1, "torch CPU threads when training on CPU; 0: torch's default (1 is fastest for small denoisers)"
    )
    seed: int = option(0, "seed of the data order and of every per-sample draw")
    split: str = option("train", 'manifest split to train on ("all": every row)')
    max_samples: int = option(0, "0: every row of the split")
    loader: str = option(
        "auto",
        "memory: read the split's fields into RAM once; stream: read each batch from the store, the next "
        "one while this one trains (memory independent of the cache size); auto: memory when the split "
        "is no bigger than the teacher's weights (which a run with the teacher in its loop holds and "
        "this one does not), else stream",
        choices=LOADERS,
    )
    cache_dir: str = option(
        "auto",
        "a remote --cache (s3://, ...): keep a local copy of each shard read in this folder, so that later "
        "epochs (and later runs) read local disk (shared/store/read_cache.py); auto: "
        "$XDG_CACHE_HOME/distillcache/shards (~/.cache/...) when the store, uncompressed, takes at most half "
        "the free space there, else no copies; none: read the store every time",
    )
    read_ahead: int = option(
        4,
        "stream loader: micro-batches read ahead, in parallel, while the current one trains (hides an "
        "object store's latency)",
    )
    verify_reads: bool = option(
        True,
        "do not check each row's CRC-32C as it is read (for a store `teacher-cache verify` passed already; "
        "see `make bench BENCH=store` for what the check costs)",
        flag="--no-verify-reads",
    )
    checkpoint_every: int = option(0, "save a resumable checkpoint every N updates; 0: only at the end")
    resume: bool = option(
        False, "continue from the newest checkpoint in OUT/checkpoints (if any) of this same run"
    )
    log_every: int = option(10, "log the loss every N updates (CSV + TensorBoard)")

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def identity(self) -> dict:
        """What makes two runs the same run (a checkpoint may only resume its own): everything but
        where the output goes, the resume / logging switches, how batches are read (same batches) and
        how the global batch is split into micro-batches (batch_size x grad_accum x processes: the
        global batch itself is checked on resume, training/checkpoints.py). --loss, --points and
        --w-min / --w-max left to the method are resolved before (losses/defaults.py)."""
        ignored = {
            "out",
            "resume",
            "log_every",
            "checkpoint_every",
            "threads",
            "loader",
            "batch_size",
            "grad_accum",
            "verify_reads",
            "cache_dir",
            "read_ahead",
        }
        return {k: v for k, v in self.to_json().items() if k not in ignored}

    def run_digest(self) -> str:
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:16]
