"""The processes of a run launched with `accelerate launch` (or torchrun), for both phases.

On a machine without an accelerator, accelerate joins the processes over gloo only when told to run
on the CPU (`cpu=True`); otherwise each process of `accelerate launch --multi_gpu --num_processes N`
would run alone as rank 0 of 1. `run_on_cpu` says when to tell it.

    state = process_state("auto")           # PartialState: .process_index, .num_processes, .device
    Accelerator(cpu=run_on_cpu(config.cpu))
"""

import torch
from accelerate import PartialState


def accelerator_visible() -> bool:
    return torch.cuda.is_available() or torch.backends.mps.is_available()


def run_on_cpu(forced: bool) -> bool:
    """accelerate's `cpu` argument: forced by the user, or no accelerator to run on."""
    return forced or not accelerator_visible()


def process_state(device: str) -> PartialState:
    """This process's rank and world size from accelerate; runs without an accelerator join over gloo
    (on a CPU machine, launch with `accelerate launch --multi_gpu --num_processes N` or `torchrun`)."""
    return PartialState(cpu=device == "cpu" or (device == "auto" and not accelerator_visible()))
