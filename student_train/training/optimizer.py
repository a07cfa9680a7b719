"""The optimizer and the learning-rate schedule of `student-train run`.

--optimizer adamw is torch's AdamW. adamw8bit is bitsandbytes' AdamW8bit (Dettmers et al. 2022,
"8-bit Optimizers via Block-wise Quantization"). Its two moments are kept in 8 bits, with
block-wise scales: 2 bytes per trained parameter instead of 8. This is what the diffusers LCM
scripts' `--use_8bit_adam` selects. bitsandbytes (>= 0.50, the `lowmem` extra) runs it on CUDA and,
through its CPU backend, on the CPU; tensors under 4096 elements keep 32-bit moments, as bitsandbytes
decides.

The schedule is stepped once per optimizer update, by the training loop, not by accelerate, which
would step it once per process. So its state (the number of updates done) means the same thing
whatever the number of processes, and a run may resume on another number (checkpoints.py).

    optimizer = build_optimizer(config, student.trainable_parameters())
    schedule = lr_schedule(config, optimizer)       # LambdaLR of lr_factor; .step() once per update
"""

import math
from functools import partial

import torch

from shared.errors import DistillCacheError

LR_SCHEDULES = ("constant", "cosine")


def check_optimizer_available(name: str) -> None:
    if name == "adamw8bit":
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise DistillCacheError(
                "--optimizer adamw8bit needs bitsandbytes: pip install 'distillcache[lowmem]' "
                "(or use --optimizer adamw)"
            ) from None


def build_optimizer(config, parameters: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if config.optimizer == "adamw8bit":
        check_optimizer_available(config.optimizer)
        import bitsandbytes

        return bitsandbytes.optim.AdamW8bit(parameters, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)


def lr_factor(config, updates: int) -> float:
    """LR multiplier after `updates` optimizer updates: linear warm-up, then constant or cosine to 0."""
    warmup = min(1.0, (updates + 1) / config.lr_warmup_steps) if config.lr_warmup_steps else 1.0
    if config.lr_schedule == "cosine":
        return warmup * 0.5 * (1 + math.cos(math.pi * min(updates / config.train_steps, 1.0)))
    return warmup


def lr_schedule(config, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, partial(lr_factor, config))
