"""Load the teacher: any diffusers pipeline from a local folder, a Hub id or the embedded package, on a
device and dtype; or its denoiser alone, checked against the digest a store records.

    teacher = load_teacher("path/or/org-name", revision=None, device=torch.device("cpu"), dtype=torch.float32)
    teacher.pipe, teacher.denoiser, teacher.denoiser_name
    teacher.fingerprint     # identity: {pipeline_class, weights_hash, denoiser_hash} (store.json "fingerprint")
    teacher.origin          # where from: {"source": "embedded:default_teacher" | hub id | absolute path, "revision"}
    unet = load_denoiser(reader.teacher["source"], "unet", reader.teacher["revision"],
                         expected_digest=reader.fingerprint["denoiser_hash"])

A source resolves from any working directory and any machine with the package installed:
`embedded:<name>` is a folder of the installed `teacher_cache.embedded` package, an absolute path is
itself, anything else is a Hub id. `denoiser_hash` is the state_dict_digest of the denoiser loaded
the way phase two loads it (float32, `load_denoiser`), so a capture in float16 records the same
digest as one in float32 and phase two can check it without loading anything else.
"""

import hashlib
import importlib
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

from shared.errors import DistillCacheError, first_line
from shared.store import state_dict_digest
from shared.store.schema import check_name

DENOISER_NAMES = ("unet", "transformer")
TEACHER_EVAL_FILE = "teacher_eval.json"
EMBEDDED_PREFIX = "embedded:"
EMBEDDED_PACKAGE = "teacher_cache.embedded"
REPO_ROOT = Path(__file__).resolve().parents[1]  # the checkout this module runs from


@dataclass(frozen=True)
class Teacher:
    pipe: DiffusionPipeline
    denoiser: nn.Module
    denoiser_name: str  # "unet" | "transformer"
    fingerprint: dict  # identity: pipeline_class, weights_hash, denoiser_hash
    origin: dict  # where to load it from: {"source", "revision"} (the store's "teacher" record)


def embedded_teachers_dir() -> Path:
    """The folder of the installed embedded-teacher package (each subfolder one teacher)."""
    return Path(importlib.import_module(EMBEDDED_PACKAGE).__file__).resolve().parent


def resolve_teacher_source(source: str) -> str:
    """A recorded or given source as from_pretrained takes it: `embedded:<name>` -> that folder of the
    installed package; a path or Hub id unchanged. Raises DistillCacheError for an unknown embedded name."""
    if not source.startswith(EMBEDDED_PREFIX):
        return source
    name = source[len(EMBEDDED_PREFIX) :]
    check_name(name, "embedded teacher")
    folder = embedded_teachers_dir() / name
    if not (folder / "model_index.json").is_file():
        raise DistillCacheError(
            f"teacher {source}: the installed distillcache has no embedded teacher {name!r} (looked in {folder}); "
            "install the distillcache version that made the store, or pass --teacher PATH_OR_ID"
        )
    return str(folder)


def teacher_origin(teacher: str, revision: str | None) -> dict:
    """How a store records where the teacher came from, so that it resolves anywhere: a folder of the
    embedded package as `embedded:<name>`, another folder by its absolute path, a Hub id as given."""
    if teacher.startswith(EMBEDDED_PREFIX):
        return {"source": teacher, "revision": revision}
    path = Path(teacher)
    if not path.exists():
        return {"source": teacher, "revision": revision}
    resolved = path.resolve()
    if resolved.parent == embedded_teachers_dir():
        return {"source": EMBEDDED_PREFIX + resolved.name, "revision": revision}
    return {"source": str(resolved), "revision": revision}


def portable_path(value: str) -> str:
    """A path as a committed record (teacher_training.json, teacher_eval.json) holds it, the same on
    every machine, never absolute: a folder of the embedded package -> `embedded:<name>`; a folder in
    the repository -> relative to its root; a folder elsewhere -> its name only (where it lay is the
    machine's, not the recipe's); "", an `embedded:` name, a Hub id or a path that does not exist ->
    as given if relative, else its name."""
    if not value:
        return value
    source = teacher_origin(value, None)["source"]  # embedded:<name> | absolute path | as given
    path = Path(source)
    if not path.is_absolute():
        return source
    return path.relative_to(REPO_ROOT).as_posix() if path.is_relative_to(REPO_ROOT) else path.name


def recommended_guidance(teacher: str) -> float | None:
    """The guidance scale a local teacher folder recommends in its teacher_eval.json (the embedded
    teacher's guidance sweep writes `recommended_guidance_scale`), or None."""
    path = Path(resolve_teacher_source(teacher)) / TEACHER_EVAL_FILE
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


def weights_hash(pipe: DiffusionPipeline) -> str:
    """One digest over the weights of every torch component (denoiser, text encoders, VAE), as loaded."""
    digest = hashlib.sha256()
    for name, component in sorted(pipe.components.items()):
        if isinstance(component, nn.Module):
            digest.update(f"{name}:{state_dict_digest(component)}\n".encode())
    return digest.hexdigest()


def denoiser_hash(denoiser: nn.Module, source: str, denoiser_name: str, revision: str | None) -> str:
    """state_dict_digest of the denoiser in float32, as `load_denoiser` loads it: the loaded one when it
    is float32 already, else a float32 load of its folder (a float16 cast has lost the digits)."""
    if all(
        value.dtype == torch.float32 for value in denoiser.state_dict().values() if value.is_floating_point()
    ):
        return state_dict_digest(denoiser)
    return state_dict_digest(load_denoiser(source, denoiser_name, revision, what="teacher denoiser"))


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


def check_source(teacher: str) -> None:
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
    origin = teacher_origin(teacher, revision)
    teacher = resolve_teacher_source(teacher)
    check_source(teacher)
    try:
        index = DiffusionPipeline.load_config(teacher, revision=revision)  # model_index.json
        with warnings.catch_warnings(), loading_bars_hidden():
            # newer diffusers renamed torch_dtype to dtype; older ones lack dtype
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            pipe = DiffusionPipeline.from_pretrained(
                teacher, revision=revision, torch_dtype=dtype, **absent_components(index)
            )
    except Exception as error:  # any failure to load is the user's to fix: say which teacher and why
        raise DistillCacheError(f"cannot load teacher {teacher}: {first_line(error)}") from None
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    denoiser_name = next((name for name in DENOISER_NAMES if getattr(pipe, name, None) is not None), None)
    if denoiser_name is None:
        raise DistillCacheError(
            f"teacher {teacher} ({type(pipe).__name__}) has neither a unet nor a transformer to capture"
        )
    denoiser = getattr(pipe, denoiser_name)
    fingerprint = {
        "pipeline_class": type(pipe).__name__,
        "weights_hash": weights_hash(pipe),
        "denoiser_hash": denoiser_hash(denoiser, teacher, denoiser_name, revision),
    }
    return Teacher(pipe, denoiser, denoiser_name, fingerprint, origin)


def load_denoiser(
    source: str,
    subfolder: str = "unet",
    revision: str | None = None,
    expected_digest: str | None = None,
    what: str = "teacher denoiser",
) -> nn.Module:
    """Load only `source/subfolder` (a folder, `embedded:<name>` or a Hub id) with the class its config
    names, in float32, frozen, in eval mode. With `expected_digest`, a model whose state_dict_digest
    differs is refused: it is not the teacher the store was made with. `what` names it in errors."""
    source = resolve_teacher_source(source)
    config_path = Path(source) / subfolder / "config.json"
    if Path(source).exists() and not config_path.exists():
        raise DistillCacheError(
            f"{config_path} not found: the {what}'s folder {source} has no {subfolder}/; "
            "pass the folder that holds it (--teacher for the teacher, --student for a student)"
        )
    try:
        if config_path.exists():
            class_name = json.loads(config_path.read_text())["_class_name"]
            model_class = getattr(diffusers, class_name)
        else:  # a Hub id: AutoModel reads the class from the subfolder's config
            model_class = diffusers.AutoModel
        with warnings.catch_warnings(), loading_bars_hidden():
            warnings.filterwarnings("ignore", category=FutureWarning)
            model = model_class.from_pretrained(source, subfolder=subfolder, revision=revision)
    except Exception as error:  # a missing, partial or damaged folder: name the model and the reason
        raise DistillCacheError(f"cannot load the {what} from {source!r} ({first_line(error)})") from None
    model = model.float().eval().requires_grad_(False)
    if expected_digest is not None:
        actual = state_dict_digest(model)
        if actual != expected_digest:
            raise DistillCacheError(
                f"the {what} at {source!r} has weights digest {actual[:16]}..., but the store was made by "
                f"{expected_digest[:16]}...: it is another model; pass --teacher with the store's own teacher"
            )
    return model
