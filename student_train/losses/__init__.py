"""The methods of phase two, one loss per file, and the registry that names them.

A loss is a small class: hyper-parameters in `__init__`; `__call__(student, batch, random, step)`
returns the per-sample loss (B,). `step` only matters to progressive (its round).

    method = get_method("lcm")
    config = resolve_defaults(config)          # --loss / --points / --w-* left to the method, concrete
    method.fields(config)                      # the store fields it reads with these settings
    loss = method.build(config, settings, schedule)
"""

from collections.abc import Callable
from dataclasses import dataclass

from shared.errors import DistillCacheError
from shared.schedule import NoiseSchedule
from student_train.data.points import POINT_FIELDS
from student_train.losses import blockkd, direct, guidance, lcm, progressive, reflow, tcd
from student_train.losses.defaults import (  # noqa: F401 (resolve_defaults, w_range: re-exported)
    distance,
    points_kind,
    resolve_defaults,
    w_range,
)
from student_train.sampling import cached_grid, student_scheduler, student_timesteps
from student_train.sampling.schedulers import is_flow_scheduler


@dataclass(frozen=True)
class Method:
    name: str
    reads: Callable  # (config) -> the store fields the loss reads (besides the cond.* conditioning)
    w_conditioned: bool  # full students get a w-embedding
    build: Callable  # (config, settings, schedule) -> loss

    def fields(self, config) -> tuple[str, ...]:
        return tuple(self.reads(config))


def point_fields(config) -> tuple[str, ...]:
    """The store fields a method reading `--points` needs with these settings (besides cond.*)."""
    return POINT_FIELDS[points_kind(config)]


def build_direct(config, settings: dict, schedule: NoiseSchedule):
    return direct.DirectLoss(
        schedule,
        student_timesteps("direct", config.num_student_steps, settings),
        settings["prediction_type"],
        distance(config),
        checkpoint_steps=config.gradient_checkpointing,
    )


def build_lcm(config, settings: dict, schedule: NoiseSchedule):
    return lcm.LcmLoss(
        schedule,
        cached_grid(settings, schedule),
        settings["prediction_type"],
        distance(config),
        *w_range(config),
        timestep_scaling=config.timestep_scaling,
        points=points_kind(config),
    )


def build_tcd(config, settings: dict, schedule: NoiseSchedule):
    return tcd.TcdLoss(
        schedule,
        cached_grid(settings, schedule),
        settings["prediction_type"],
        distance(config),
        *w_range(config),
        points=points_kind(config),
    )


def has_w_input(config, settings: dict) -> bool:
    """Whether the student can take w: a full (or pruned) UNet gets diffusers' guidance embedding
    (`time_cond_proj_dim`); a LoRA adapter and SD3's transformer have none."""
    return config.student != "lora" and settings.get("denoiser", "unet") == "unet"


def build_guidance(config, settings: dict, schedule: NoiseSchedule):
    w_min, w_max = w_range(config)
    if not has_w_input(config, settings) and w_min != w_max:
        which = "a LoRA student" if config.student == "lora" else f"this store's {settings['denoiser']}"
        raise DistillCacheError(
            f"{which} has no w input, so it learns one w: give --w-min = --w-max (e.g. "
            f"{float(settings['guidance_scale']) - 1:g}, the store's guidance - 1)"
            + (", or use --student full" if config.student == "lora" else "")
        )
    return guidance.GuidanceLoss(
        schedule,
        cached_grid(settings, schedule),
        settings["prediction_type"],
        distance(config),
        w_min,
        w_max,
        points=points_kind(config),
    )


def build_reflow(config, settings: dict, schedule: NoiseSchedule):
    """The student is a flow model on the teacher's train-time count, whatever the teacher's family."""
    flow = schedule if schedule.family == "flow" else NoiseSchedule("flow", schedule.num_train_timesteps)
    steps = config.num_student_steps if config.reflow_t_schedule == "steps" else 1
    exported = student_scheduler("reflow", settings["scheduler"], len(settings["timesteps"]))
    return reflow.ReflowLoss(
        flow,
        distance(config),
        config.reflow_t_schedule,
        reflow.sampler_times(exported, steps, flow.num_train_timesteps),
    )


def build_progressive(config, settings: dict, schedule: NoiseSchedule):
    return progressive.ProgressiveLoss(
        schedule,
        cached_grid(settings, schedule),
        settings["prediction_type"],
        distance(config),
        num_student_steps=config.num_student_steps,
        total_train_steps=config.train_steps,
        weighting=config.weighting,
    )


def build_blockkd(config, settings: dict, schedule: NoiseSchedule):
    return blockkd.BlockKdLoss(
        schedule,
        cached_grid(settings, schedule),
        [int(step) for step in settings.get("feature_steps") or []],
        list(settings.get("feature_modules") or []),
        settings["prediction_type"],
        distance(config),
        lambda_task=config.lambda_task,
        lambda_out=config.lambda_out,
        lambda_feat=config.lambda_feat,
    )


def always(fields: tuple[str, ...]) -> Callable:
    """`reads` of a method whose fields do not depend on the settings."""
    return lambda config: fields


METHODS = {
    "direct": Method("direct", always(direct.FIELDS), False, build_direct),
    "lcm": Method("lcm", point_fields, True, build_lcm),
    "progressive": Method("progressive", always(progressive.FIELDS), False, build_progressive),
    "guidance": Method("guidance", point_fields, True, build_guidance),
    "tcd": Method("tcd", point_fields, True, build_tcd),
    "reflow": Method("reflow", always(reflow.FIELDS), False, build_reflow),
    "blockkd": Method(
        "blockkd",
        lambda config: blockkd.fields_read(config.lambda_feat),
        False,
        build_blockkd,
    ),
}


def check_family(config, settings: dict) -> None:
    """The methods a store's family cannot serve, refused in one line before anything is read
    (docs/families.md). Every other method x family follows the same path (shared.schedule)."""
    denoiser = settings.get("denoiser", "unet")
    if config.method == "blockkd" and denoiser != "unet":
        raise DistillCacheError(
            f"--method blockkd distils a UNet's blocks (BK-SDM); this store's denoiser is a {denoiser}: "
            "use another --method (direct, lcm, progressive, guidance, tcd, reflow)"
        )
    if config.method == "tcd" and is_flow_scheduler(settings["scheduler"]["class"]) and config.tcd_gamma != 0:
        raise DistillCacheError(
            f"--tcd-gamma {config.tcd_gamma:g} on a flow-matching store: diffusers has no flow TCD scheduler, and "
            "FlowMatchEulerDiscreteScheduler samples TCD at gamma 0 only: pass --tcd-gamma 0 (or --method lcm: gamma 1)"
        )


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise DistillCacheError(f"unknown --method {name!r}; valid: {', '.join(METHODS)}")
    return METHODS[name]
