"""`CaptureConfig`: every setting of `teacher-cache run`, one frozen dataclass.

The command line maps 1:1 onto its fields (`run_command.py`), each flag's help in its `option`
(`--no-progress` switches `progress` off); `run(config)` (`runner.py`) is the only consumer. The
settings that define the data (steps, guidance, fields, features, dtypes ...) are written into the
store's store.json by the runner; the ones that only shape one run (batch size, device, which
prompt file, rank) are not, so a store can be resumed or extended with others.
"""

from dataclasses import dataclass
from pathlib import Path

from shared.config_flags import check_finite_numbers, comma_separated, option
from shared.errors import DistillCacheError

PACKAGE_DIR = Path(__file__).resolve().parent
EMBEDDED_TEACHER = PACKAGE_DIR / "embedded" / "default_teacher"
BUNDLED_PROMPTS = PACKAGE_DIR / "prompts"
DEFAULT_TRAIN_PROMPTS = BUNDLED_PROMPTS / "default_train.txt"
DEFAULT_UNSEEN_PROMPTS = BUNDLED_PROMPTS / "default_unseen.txt"

# What can be kept (`--fields`): a group name stands for one or more store fields.
FIELD_GROUPS: dict[str, str] = {
    "noise": "initial noise, passed to the pipeline as latents=",
    "trajectory": "latents entering step 0 and after every step",
    "final_latents": "the teacher's output latents",
    "out": "denoiser output at every step: out_cond (and out_uncond under CFG)",
    "cond": "denoiser conditioning at step 0: cond.* (and uncond.* under CFG)",
    "features": "outputs of the --features modules (cond half) at the --feature-steps",
    "preview": "small decoded image, uint8",
    "noised": "clean latents (--images, or the teacher's final latents) noised to --noised-points-per-sample "
    "timesteps of the LCM solver grid, with the teacher's outputs there: noised.x_t, noised.timestep, "
    "noised.next_timestep, noised.out_cond (and noised.out_uncond under CFG)",
}
# The groups only a full pipeline call produces (noised and cond do not need one when x0 comes from images).
PIPELINE_FIELD_GROUPS = ("noise", "trajectory", "final_latents", "out", "features", "preview")
BUILTIN_DIGITS = "digits"  # --images digits: the embedded teacher's coloured digits (shared/digits.py)
ALL_FIELD_GROUPS: tuple[str, ...] = tuple(FIELD_GROUPS)
DTYPES = ("auto", "float32", "float16", "bfloat16")
FEATURE_DTYPES = ("float16", "bfloat16", "float32")
DEFAULT_FEATURE_STEP_COUNT = 4
FALLBACK_GUIDANCE = 5.0  # when --guidance is not given and the teacher recommends none


@dataclass(frozen=True)
class CaptureConfig:
    """Settings of one `teacher-cache run`; defaults: the embedded teacher on the bundled prompts."""

    out: str = option(None, "the store: a folder or an fsspec URL (created or resumed)", required=True)
    teacher: str = option(
        str(EMBEDDED_TEACHER), "diffusers pipeline folder or Hub id", default_text="the embedded teacher"
    )
    revision: str | None = option(None, "Hub revision of the teacher (branch, tag or commit)")
    prompts: str = option(
        str(DEFAULT_TRAIN_PROMPTS),
        ".txt (one prompt a line) or .csv/.parquet/.jsonl with a 'prompt' column and optional "
        "negative_prompt, seed, guidance_scale",
        default_text="the bundled digit prompts",
    )
    seeds_per_prompt: int = option(4, "seeds for rows without a seed")
    steps: int = option(50, "num_inference_steps")
    guidance: float | None = option(
        None,
        "guidance_scale for rows without one; <= 1 = no CFG",
        default_text=f"the teacher folder's teacher_eval.json recommended_guidance_scale, else {FALLBACK_GUIDANCE}",
    )
    negative_prompt: str = option("", "for rows without one")
    height: int | None = option(None, "image height in pixels", default_text="the pipeline's")
    width: int | None = option(None, "image width in pixels", default_text="the pipeline's")
    fields: tuple[str, ...] = option(
        ALL_FIELD_GROUPS,
        f"comma-separated groups to keep: {'; '.join(f'{k} = {v}' for k, v in FIELD_GROUPS.items())}",
        default_text="all",
    )
    features: tuple[str, ...] = option(
        (),
        "comma-separated denoiser module globs whose outputs to keep, e.g. "
        "'down_blocks.*,mid_block,up_blocks.*' (* stays within one dotted name)",
    )
    feature_steps: tuple[int, ...] | None = option(
        None,
        "comma-separated step indices for features",
        type=comma_separated(int, "step indices"),
        default_text=f"{DEFAULT_FEATURE_STEP_COUNT} evenly spaced",
    )
    feature_dtype: str = option("float16", "dtype the features are stored in", choices=FEATURE_DTYPES)
    preview_size: int = option(32, "longest side of the stored previews in pixels (never upscaled)")
    noised_points_per_sample: int = option(
        4,
        "noised group: points per sample, each at its own timestep of the LCM solver grid of --steps "
        "points (2 teacher passes per point under CFG)",
    )
    images: str = option(
        "",
        "noised group: where the clean latents x0 come from: a folder of images with metadata.jsonl or "
        "metadata.csv (file_name, text; one row per image, its caption the prompt; --prompts is not read), "
        f"or '{BUILTIN_DIGITS}' (the embedded teacher's coloured digits, one per prompt and seed of "
        "--prompts); images are VAE-encoded by the teacher",
        default_text="the teacher's own final latents (no dataset; adds the full --steps CFG run per sample)",
    )
    batch_size: int = option(8, "prompts per pipeline call (the denoiser sees twice as many under CFG)")
    device: str = option("auto", "auto (this rank's accelerator, else cpu), cpu, cuda, cuda:1, ...")
    dtype: str = option(
        "auto", "teacher compute dtype (auto: float16 on cuda, float32 on cpu)", choices=DTYPES
    )
    threads: int = option(0, "torch CPU threads (0 = torch's default; 1 is fastest on a busy shared CPU)")
    val_fraction: float = option(
        0.05, "share of rows in the val split (the rows whose sample_id hashes below it)"
    )
    limit: int = option(0, "keep only the first N jobs (0 = all); for quick tries")
    progress: bool = option(True, "no progress bar", flag="--no-progress")  # tqdm progress bar
    compact_after: int = option(
        256,
        "at the end of the run, fold the store's manifest files into one (teacher-cache compact) when "
        "it has at least this many; 0: never",
    )

    @property
    def resolved_feature_steps(self) -> tuple[int, ...]:
        """The steps at which features are kept: as given, or 4 evenly spaced over [0, steps)."""
        if not self.features:
            return ()
        if self.feature_steps is not None:
            return tuple(self.feature_steps)
        return evenly_spaced_steps(self.steps, DEFAULT_FEATURE_STEP_COUNT)


def evenly_spaced_steps(steps: int, count: int) -> tuple[int, ...]:
    """`count` step indices spread over [0, steps), first and last included: (0, 16, 33, 49) for 50."""
    if steps <= count:
        return tuple(range(steps))
    return tuple(sorted({round(i * (steps - 1) / (count - 1)) for i in range(count)}))


def check_config(config: CaptureConfig) -> None:
    """Raise DistillCacheError for settings that cannot work; touches no file and no model."""
    check_finite_numbers(config)
    if config.steps <= 0:
        raise DistillCacheError(f"--steps must be a positive number of inference steps, not {config.steps}")
    if config.seeds_per_prompt <= 0:
        raise DistillCacheError(f"--seeds-per-prompt must be at least 1, not {config.seeds_per_prompt}")
    if config.batch_size <= 0:
        raise DistillCacheError(f"--batch-size must be at least 1, not {config.batch_size}")
    if config.threads < 0:
        raise DistillCacheError(
            f"--threads must be 0 (torch's default) or a positive count, not {config.threads}"
        )
    if config.compact_after < 0:
        raise DistillCacheError(
            f"--compact-after must be 0 (never) or a number of files, not {config.compact_after}"
        )
    if config.limit < 0:
        raise DistillCacheError(f"--limit must be 0 (all jobs) or a positive count, not {config.limit}")
    if not 0.0 <= config.val_fraction < 1.0:
        raise DistillCacheError(f"--val-fraction must be in [0, 1), not {config.val_fraction}")
    if config.preview_size < 0:
        raise DistillCacheError(f"--preview-size must be >= 0 pixels, not {config.preview_size}")
    for size_name in ("height", "width"):
        size = getattr(config, size_name)
        if size is not None and size <= 0:
            raise DistillCacheError(f"--{size_name} must be a positive number of pixels, not {size}")
    unknown = [name for name in config.fields if name not in FIELD_GROUPS]
    if unknown or not config.fields:
        raise DistillCacheError(
            f"--fields {','.join(config.fields)!r}: unknown or empty; choose from {', '.join(FIELD_GROUPS)}"
        )
    if config.dtype not in DTYPES:
        raise DistillCacheError(f"--dtype {config.dtype!r} is not one of {', '.join(DTYPES)}")
    if config.feature_dtype not in FEATURE_DTYPES:
        raise DistillCacheError(
            f"--feature-dtype {config.feature_dtype!r} is not one of {', '.join(FEATURE_DTYPES)}"
        )
    if config.noised_points_per_sample <= 0:
        raise DistillCacheError(
            f"--noised-points-per-sample must be at least 1, not {config.noised_points_per_sample}"
        )
    if config.images and "noised" not in config.fields:
        raise DistillCacheError(
            f"--images {config.images} gives the noised points' clean latents; add noised to --fields "
            f"(e.g. --fields noised,cond) or drop --images"
        )
    bad_steps = [step for step in config.resolved_feature_steps if not 0 <= step < config.steps]
    if bad_steps:
        raise DistillCacheError(
            f"--feature-steps {bad_steps} outside [0, {config.steps}); give step indices below --steps"
        )
