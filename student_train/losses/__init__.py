"""The methods of phase two, one loss per file, and the registry that names them.

A loss is a small class: hyper-parameters in `__init__`; `__call__(student, batch, random, step)`
returns the per-sample loss (B,). `step` only matters to progressive (its round).

    method = get_method("lcm")
    method.fields(config)                      # the store fields it reads with these settings
    loss = method.build(config, settings, schedule)
"""

from collections.abc import Callable
from dataclasses import dataclass

from shared.errors import DistillCacheError
from shared.schedule import NoiseSchedule
from student_train.losses import blockkd, direct, lcm, progressive
from student_train.losses.distance import Distance
from student_train.sampling import cached_grid, student_timesteps


@dataclass(frozen=True)
class Method:
    name: str
    reads: Callable  # (config) -> the store fields the loss reads (besides the cond.* conditioning)
    w_conditioned: bool  # full students get a w-embedding
    build: Callable  # (config, settings, schedule) -> loss

    def fields(self, config) -> tuple[str, ...]:
        return tuple(self.reads(config))


def build_direct(config, settings: dict, schedule: NoiseSchedule):
    return direct.DirectLoss(
        schedule,
        student_timesteps("direct", config.num_student_steps, settings),
        settings["prediction_type"],
        Distance(config.loss, config.huber_c),
        checkpoint_steps=config.gradient_checkpointing,
    )


def build_lcm(config, settings: dict, schedule: NoiseSchedule):
    return lcm.LcmLoss(
        schedule,
        cached_grid(settings, schedule),
        settings["prediction_type"],
        Distance(config.loss, config.huber_c),
        w_min=config.w_min,
        w_max=config.w_max,
        timestep_scaling=config.timestep_scaling,
    )


def build_progressive(config, settings: dict, schedule: NoiseSchedule):
    return progressive.ProgressiveLoss(
        schedule,
        cached_grid(settings, schedule),
        settings["prediction_type"],
        Distance(config.loss, config.huber_c),
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
        Distance(config.loss, config.huber_c),
        lambda_task=config.lambda_task,
        lambda_out=config.lambda_out,
        lambda_feat=config.lambda_feat,
    )


def always(fields: tuple[str, ...]) -> Callable:
    """`reads` of a method whose fields do not depend on the settings."""
    return lambda config: fields


METHODS = {
    "direct": Method("direct", always(direct.FIELDS), False, build_direct),
    "lcm": Method("lcm", always(lcm.FIELDS), True, build_lcm),
    "progressive": Method("progressive", always(progressive.FIELDS), False, build_progressive),
    "blockkd": Method(
        "blockkd",
        lambda config: blockkd.fields_read(config.lambda_feat),
        False,
        build_blockkd,
    ),
}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise DistillCacheError(f"unknown --method {name!r}; valid: {', '.join(METHODS)}")
    return METHODS[name]
