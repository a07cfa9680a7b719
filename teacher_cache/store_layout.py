"""What one captured batch becomes in the store: field arrays, their specs, and the store settings.

Field names and meanings are fixed in docs/contracts.md ("What phase one stores").
"""

import torch

from shared.module_outputs import FEATURE_PREFIX
from shared.noise import init_noise_sigma
from shared.schedule import solver_grid
from shared.store import FieldSpec
from teacher_cache.capture import StepRecord
from teacher_cache.config import BUILTIN_DIGITS, CaptureConfig

SCHEDULER_CONFIG_VERSION_KEYS = ("_class_name", "_diffusers_version")


def batch_arrays(
    record: StepRecord, noise: torch.Tensor, previews: torch.Tensor | None, groups: tuple[str, ...]
) -> dict[str, torch.Tensor]:
    """{field name: (B, *per-sample shape)} for the kept field groups, on the CPU."""
    arrays: dict[str, torch.Tensor] = {}
    if "noise" in groups:
        arrays["noise"] = noise  # (B, C, H, W)
    if "trajectory" in groups:
        arrays["trajectory"] = record.trajectory  # (B, S + 1, C, H, W)
    if "final_latents" in groups:
        arrays["final_latents"] = record.trajectory[:, -1]  # (B, C, H, W)
    if "out" in groups:
        arrays["out_cond"] = record.out_cond  # (B, S, C, H, W)
        if record.out_uncond is not None:
            arrays["out_uncond"] = record.out_uncond
    if "cond" in groups:
        arrays.update({f"cond.{name}": tensor for name, tensor in record.cond.items()})
        arrays.update({f"uncond.{name}": tensor for name, tensor in record.uncond.items()})
    if "features" in groups:
        arrays.update(
            {FEATURE_PREFIX + name: tensor for name, tensor in record.features.items()}
        )  # (B, F, ...)
    if "preview" in groups and previews is not None:
        arrays["preview"] = previews  # (B, h, w, 3) uint8
    return {name: tensor.detach().cpu().contiguous() for name, tensor in arrays.items()}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def field_specs(arrays: dict[str, torch.Tensor]) -> dict[str, FieldSpec]:
    """The per-sample dtype and shape of every field, from one captured batch."""
    return {
        name: FieldSpec(dtype_name(array.dtype), tuple(array.shape[1:])) for name, array in arrays.items()
    }


def scheduler_settings(scheduler) -> dict:
    """{"class": name, "config": JSON config}, without the version keys (a diffusers upgrade keeps appends)."""
    config = {
        key: value for key, value in scheduler.config.items() if key not in SCHEDULER_CONFIG_VERSION_KEYS
    }
    return {"class": type(scheduler).__name__, "config": _json_safe(config)}


def _json_safe(value):
    if isinstance(value, dict):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    if hasattr(value, "tolist"):  # numpy / torch scalars and arrays
        return value.tolist()
    return value


def prediction_type(scheduler) -> str:
    """epsilon | v_prediction | sample, or flow_prediction for flow-matching schedulers (velocity)."""
    if "FlowMatch" in type(scheduler).__name__ or scheduler.config.get("use_flow_sigmas", False):
        return "flow_prediction"
    return scheduler.config.get("prediction_type", "epsilon")


def noised_settings(config: CaptureConfig, num_train_timesteps: int) -> dict:
    """What defines a store's noised points (absent without the noised group)."""
    if "noised" not in config.fields:
        return {}
    x0 = "teacher" if not config.images else "digits" if config.images == BUILTIN_DIGITS else "images"
    return {
        "noised_points_per_sample": config.noised_points_per_sample,
        "noised_x0": x0,  # teacher (final latents) | images (--images folder) | digits (built-in)
        "noised_grid": solver_grid(num_train_timesteps, config.steps)[
            0
        ],  # the timesteps points are drawn from
    }


def module_nbytes(module: torch.nn.Module) -> int:
    return sum(tensor.numel() * tensor.element_size() for tensor in module.state_dict().values())


def teacher_nbytes(pipe) -> int:
    """Bytes of the weights of every torch component (denoiser, text encoders, VAE): what a training
    run with the teacher in its loop holds besides its student (phase two's --loader auto budget)."""
    return sum(module_nbytes(c) for c in pipe.components.values() if isinstance(c, torch.nn.Module))


def store_settings(
    config: CaptureConfig,
    *,
    pipe,
    denoiser_name: str,
    record: StepRecord,
    latent_shape: tuple[int, ...],
    image_size: tuple[int, int],
    cfg: bool,
    compute_dtype: torch.dtype,
) -> dict:
    """The capture settings written in store.json (validated equal when a store is appended to)."""
    num_train_timesteps = int(pipe.scheduler.config.get("num_train_timesteps", 1000))
    return {
        "num_inference_steps": config.steps,
        "guidance_scale": config.guidance,
        "cfg": cfg,
        "timesteps": record.timesteps,
        "scheduler": scheduler_settings(pipe.scheduler),
        "prediction_type": prediction_type(pipe.scheduler),
        "init_noise_sigma": init_noise_sigma(pipe.scheduler),
        "latent_shape": list(latent_shape),
        "image_size": list(image_size),
        "dtype": dtype_name(compute_dtype),
        "feature_steps": list(config.resolved_feature_steps) if record.features else [],
        "feature_modules": list(record.features),
        "feature_dtype": config.feature_dtype,
        "conditioning": list(record.cond),
        "denoiser": denoiser_name,
        "field_groups": list(config.fields),
        "preview_size": config.preview_size if "preview" in config.fields else 0,
        "val_fraction": config.val_fraction,
        "teacher_nbytes": teacher_nbytes(pipe),
        **noised_settings(config, num_train_timesteps),
    }
