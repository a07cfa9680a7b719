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

from shared.config_flags import option

LOADERS = ("auto", "memory", "stream")  # --loader (student_train/batches.py)
PRUNE_LEVELS = ("base", "small", "tiny")  # --prune (student_train/students/pruning.py)


@dataclass(frozen=True)
class TrainConfig:
    cache: str = option(None, "the store (path or fsspec URL)", required=True)
    out: str = option(None, "output folder: the exported student + logs + checkpoints", required=True)
    method: str = option("direct", "direct | lcm | progressive | blockkd")
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
    batch_size: int = option(16, "samples per micro-batch")
    grad_accum: int = option(1, "micro-batches per optimizer update")
    lr: float = option(1e-4, "LCM: 1e-6 full / 1e-4 LoRA (SD); Direct Distill: 1e-5 full / 1e-4 LoRA")
    lr_schedule: str = option("cosine", "constant | cosine (decays to 0 at --train-steps)")
    lr_warmup_steps: int = option(0, "linear warm-up of the learning rate over N updates")
    weight_decay: float = option(0.0, "AdamW weight decay")
    max_grad_norm: float = option(1.0, "gradient clipping norm")
    loss: str = option("huber", "l2 | huber (pseudo-Huber)")
    huber_c: float = option(0.001, "pseudo-Huber c (LCM scripts: 0.001)")
    ema_decay: float = option(0.95, "full students' EMA (the LCM target)")
    lora_rank: int = option(64, "LoRA rank r (LCM-LoRA: 64)")
    lora_alpha: int = option(64, "LoRA alpha (LCM-LoRA: 64)")
    w_min: float = option(5.0, "lcm: w ~ U[w_min, w_max], Imagen convention (pipeline scale - 1); SD: 5..15")
    w_max: float = option(15.0, "lcm: upper end of the guidance range")
    time_cond_proj_dim: int = option(256, "lcm full students' w-embedding; 0: none")
    timestep_scaling: float = option(10.0, "lcm boundary conditions")
    weighting: str = option("truncated_snr", "progressive: truncated_snr | snr_plus_one")
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
    mixed_precision: str = option("no", "no | fp16 | bf16 (accelerate)")
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
        "one while this one trains (memory independent of the cache size); auto: memory under 2 GiB",
        choices=LOADERS,
    )
    checkpoint_every: int = option(0, "save a resumable checkpoint every N updates; 0: only at the end")
    resume: bool = option(
        False, "continue from the newest checkpoint in OUT/checkpoints (if any) of this same run"
    )
    log_every: int = option(10, "log the loss every N updates (CSV + TensorBoard)")

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def run_digest(self) -> str:
        """What makes two runs the same run (a checkpoint may only resume its own): everything but
        where the output goes, the resume / logging switches and how batches are read (same batches)."""
        ignored = {"out", "resume", "log_every", "checkpoint_every", "threads", "loader"}
        identity = {k: v for k, v in self.to_json().items() if k not in ignored}
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
