"""The settings a run leaves to its method: `--loss`, `--points`, `--w-min` / `--w-max` given as None.

    config = resolve_defaults(config)   # once, before the run is recorded: the concrete values
    same_run_digests(config)            # every digest a checkpoint of this same run may carry

`student-train run` resolves them once (training/loop.py), so OUT/train_config.json, distill.json and
each checkpoint's run digest record the value the run used ("noised", "huber", 5.0), never null. A flag
given as its method's default is then the same run as the flag omitted, and a checkpoint recorded
either way (concrete, or null as student-train wrote between the defaults' introduction and this
module) resumes: `same_run_digests` holds the digest of every such spelling. So does a checkpoint of a
method that does not read --points or the w range, recorded with the values every method once
recorded for them (EARLIER_DEFAULTS).
"""

import dataclasses
import itertools

from student_train.losses.distance import Distance

# w ~ U[w_min, w_max] (Imagen convention) of the w-conditioned methods when --w-min / --w-max are not
# given: the SD LCM script's 5..15 (Luo et al.), Meng et al.'s 0..4 for guidance distillation.
DEFAULT_W_RANGE = {"lcm": (5.0, 15.0), "tcd": (5.0, 15.0), "guidance": (0.0, 4.0)}

# Where the methods that read the teacher's cached outputs take their points when --points is not
# given: lcm and tcd from noised points (docs/training.md "the lcm recipe"; tcd: docs/methods.md),
# guidance from the cached trajectories (where its stock sampler steps; measured there).
DEFAULT_POINTS = {"lcm": "noised", "tcd": "noised", "guidance": "trajectory"}

# The distance when --loss is not given: pseudo-Huber (the LCM-LoRA recipe) for every method but
# blockkd, whose reference (BK-SDM) uses the squared error for its three terms.
DEFAULT_LOSS = {"blockkd": "l2"}

# The settings whose None means "the method's default".
LEFT_TO_THE_METHOD = ("loss", "points", "w_min", "w_max")

# What student-train recorded for every method before these settings were left to the method (the
# noised-points round: --points noised, --w-min 5, --w-max 15 whatever the method). A method that does
# not read a setting (direct, progressive, reflow, blockkd: --points and the w range) ran the same
# under that value as under None, so its old checkpoints resume.
EARLIER_DEFAULTS = {"points": "noised", "w_min": 5.0, "w_max": 15.0}


def w_range(config) -> tuple[float, float]:
    """(w_min, w_max) of this run: the flags, else the method's default range."""
    default_min, default_max = DEFAULT_W_RANGE.get(config.method, DEFAULT_W_RANGE["lcm"])
    return (
        default_min if config.w_min is None else config.w_min,
        default_max if config.w_max is None else config.w_max,
    )


def loss_kind(config) -> str:
    """This run's --loss: the flag, else the method's default."""
    return config.loss or DEFAULT_LOSS.get(config.method, "huber")


def distance(config) -> Distance:
    """This run's distance: --loss, else the method's default, with --huber-c."""
    return Distance(loss_kind(config), config.huber_c)


def points_kind(config) -> str:
    """This run's --points: the flag, else the method's default."""
    return config.points or DEFAULT_POINTS[config.method]


def concrete_values(config) -> dict:
    """The value each setting left to the method takes in this run. A method that does not read a
    setting (direct's --points, progressive's --w-min) keeps it as given."""
    values = {"loss": loss_kind(config)}
    if config.method in DEFAULT_POINTS:
        values["points"] = points_kind(config)
    if config.method in DEFAULT_W_RANGE:
        values["w_min"], values["w_max"] = (float(end) for end in w_range(config))  # 5 and 5.0: one run
    return values


def resolve_defaults(config):
    """The config with the method's defaults written in (a frozen TrainConfig: a new one)."""
    return dataclasses.replace(config, **concrete_values(config))


def subsets(names: list[str]):
    return itertools.chain.from_iterable(
        itertools.combinations(names, size) for size in range(len(names) + 1)
    )


def same_run_spellings(config) -> list:
    """This run's settings spelled every way that means the same run: the concrete values, and None in
    any subset of the settings whose value is the method's default; a setting the method does not read,
    left None, also as its earlier default (2^k configs, k <= 4)."""
    resolved = resolve_defaults(config)
    defaults = concrete_values(dataclasses.replace(config, **dict.fromkeys(LEFT_TO_THE_METHOD)))
    optional = [name for name, value in defaults.items() if getattr(resolved, name) == value]
    unread = [name for name in EARLIER_DEFAULTS if name not in defaults and getattr(config, name) is None]
    return [
        dataclasses.replace(
            resolved, **dict.fromkeys(nulls), **{name: EARLIER_DEFAULTS[name] for name in earlier}
        )
        for nulls in subsets(optional)
        for earlier in subsets(unread)
    ]


def same_run_digests(config) -> set[str]:
    """The run digest (TrainConfig.run_digest) of every spelling of this run."""
    return {spelling.run_digest() for spelling in same_run_spellings(config)}
