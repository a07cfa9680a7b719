"""Load the teacher: any diffusers pipeline from a local folder or a Hub id, on a device and dtype.

    teacher = load_teacher("path/or/org-name", revision=None, device=torch.device("cpu"), dtype=torch.float32)
    teacher.pipe, teacher.denoiser, teacher.denoiser_name, teacher.fingerprint

The fingerprint (pipeline class, source, revision, weights hash over every torch component) is what
the store checks on append and what sample ids are derived from.
"""

import hashlib
import json
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import diffusers
import torch
import transformers
from diffusers import DiffusionPipeline
from torch import nn

from shared.errors import DistillCacheError
from shared.store import state_dict_digest

DENOISER_NAMES = ("unet", "transformer")
PROJECT_ROOT = Path(__file__).resolve().parent.parent
TEACHER_EVAL_FILE = "teacher_eval.json"


@dataclass(frozen=True)
class Teacher:
    pipe: DiffusionPipeline
    denoiser: nn.Module
    denoiser_name: str  # "unet" | "transformer"
    fingerprint: dict


def recommended_guidance(teacher: str) -> float | None:
    """The guidance scale a local teacher folder recommends in its teacher_eval.json (the embedded
    teacher's guidance sweep writes `recommended_guidance_scale`), or None."""
    path = Path(teacher) / TEACHER_EVAL_FILE
    if not path.is_file():
        return None
    try:
        return float(json.loads(path.read_text())["recommended_guidance_scale"])
    except (ValueError, KeyError, TypeError):
        raise DistillCacheError(
            f"{path} has no numeric recommended_guidance_scale; fix it or pass --guidance"
        ) from None


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """'auto' = float16 on CUDA, float32 elsewhere; else the named torch dtype."""
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def teacher_source(teacher: str) -> str:
    """How the fingerprint names the teacher: a Hub id as given, a folder by its resolved path
    (relative to the project for folders inside it, so the embedded teacher is named the same on
    every checkout)."""
    path = Path(teacher)
    if not path.exists():
        return teacher
    resolved = path.resolve()
    return str(resolved.relative_to(PROJECT_ROOT)) if resolved.is_relative_to(PROJECT_ROOT) else str(resolved)


def weights_hash(pipe: DiffusionPipeline) -> str:
    """One digest over the weights of every torch component (denoiser, text encoders, VAE)."""
    digest = hashlib.sha256()
    for name, component in sorted(pipe.components.items()):
        if isinstance(component, nn.Module):
            digest.update(f"{name}:{state_dict_digest(component)}\n".encode())
    return digest.hexdigest()


@contextmanager
def loading_bars_hidden():
    """No per-component loading bars from diffusers / transformers: the run shows one bar, its own."""
    libraries = [diffusers.utils.logging, transformers.utils.logging]
    enabled = [library.is_progress_bar_enabled() for library in libraries]
    for library in libraries:
        library.disable_progress_bar()
    try:
        yield
    finally:
        for library, was_enabled in zip(libraries, enabled):
            if was_enabled:
                library.enable_progress_bar()


def absent_components(model_index: dict) -> dict[str, None]:
    """Components the folder records as absent ([null, null], e.g. SD3 saved without T5): passed as None,
    as diffusers needs for non-optional ones."""
    return {
        name: None
        for name, value in model_index.items()
        if not name.startswith("_")
        and isinstance(value, (list, tuple))
        and len(value) == 2
        and value[0] is None
    }


def _check_source(teacher: str) -> None:
    path = Path(teacher)
    if path.exists() and not (path / "model_index.json").is_file():
        raise DistillCacheError(
            f"teacher {teacher} is not a diffusers pipeline folder (no model_index.json); "
            f"give --teacher a folder saved with save_pretrained() or a Hub id"
        )
    looks_like_hub_id = teacher.count("/") == 1 and not teacher.startswith((".", "/", "~"))
    if not path.exists() and not looks_like_hub_id:
        raise DistillCacheError(
            f"teacher {teacher} does not exist; give --teacher a diffusers pipeline folder or a Hub id (org/name)"
        )


def load_teacher(teacher: str, revision: str | None, device: torch.device, dtype: torch.dtype) -> Teacher:
    """Load the pipeline onto `device` in `dtype`; raises DistillCacheError if it cannot be loaded."""
    _check_source(teacher)
    try:
        index = DiffusionPipeline.load_config(teacher, revision=revision)  # model_index.json
        with warnings.catch_warnings(), loading_bars_hidden():
            # newer diffusers renamed torch_dtype to dtype; older ones lack dtype
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            pipe = DiffusionPipeline.from_pretrained(
                teacher, revision=revision, torch_dtype=dtype, **absent_components(index)
            )
    except Exception as error:  # any failure to load is the user's to fix: say which teacher and why
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DistillCacheError(f"cannot load teacher {teacher}: {first_line}") from None
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    denoiser_name = next((name for name in DENOISER_NAMES if getattr(pipe, name, None) is not None), None)
    if denoiser_name is None:
        raise DistillCacheError(
            f"teacher {teacher} ({type(pipe).__name__}) has neither a unet nor a transformer to capture"
        )
    fingerprint = {
        "pipeline_class": type(pipe).__name__,
        "source": teacher_source(teacher),
        "revision": revision,
        "weights_hash": weights_hash(pipe),
    }
    return Teacher(pipe, getattr(pipe, denoiser_name), denoiser_name, fingerprint)
