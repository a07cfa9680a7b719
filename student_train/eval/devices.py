"""Where eval and sample run their models: `--device auto` resolved, a model moved and cast.

`auto` is accelerate's device for this process (cuda when visible, else cpu); models are loaded in
float32 and cast only when another dtype is asked for.

    device = resolve_device("auto")
    vae = place(load_denoiser(source, "vae"), device, torch.float16)
"""

import torch


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        from accelerate import PartialState

        return PartialState().device
    return torch.device(name)


def place(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Move a float32 model to the device, and cast it only when another dtype is asked for."""
    module = module.to(device)
    return module if dtype == torch.float32 else module.to(dtype)
