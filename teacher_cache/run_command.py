"""`teacher-cache run`: the command line of phase one; every flag is one CaptureConfig field.

    teacher-cache run --out runs/cache                           # embedded teacher, bundled prompts
    teacher-cache run --teacher PATH_OR_ID --prompts prompts.csv --out STORE --steps 50 --guidance 7.5 \\
        --features "down_blocks.*,mid_block,up_blocks.*" --fields noise,cond,final_latents
"""

import argparse
from dataclasses import fields as dataclass_fields

from teacher_cache.config import DTYPES, FEATURE_DTYPES, FIELD_GROUPS, CaptureConfig, config_field_names

HELP = "run a diffusers teacher once over prompts x seeds and store everything it computed"
DEFAULTS = {field.name: field.default for field in dataclass_fields(CaptureConfig)}


def comma_list(text: str) -> tuple[str, ...]:
    """'a, b,c' -> ('a', 'b', 'c'); '' or 'none' -> ()."""
    if text.strip().lower() in ("", "none"):
        return ()
    return tuple(item.strip() for item in text.split(",") if item.strip())


def comma_ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(item) for item in comma_list(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated step indices, got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = DEFAULTS
    parser.add_argument(
        "--out", required=True, help="the store: a folder or an fsspec URL (created or resumed)"
    )
    parser.add_argument(
        "--teacher",
        default=d["teacher"],
        help="diffusers pipeline folder or Hub id (default: the embedded teacher)",
    )
    parser.add_argument("--revision", default=d["revision"], help="Hub revision of the teacher")
    parser.add_argument(
        "--prompts",
        default=d["prompts"],
        help=".txt (one prompt a line) or .csv/.parquet/.jsonl with a 'prompt' column and optional "
        "negative_prompt, seed, guidance_scale (default: the bundled digit prompts)",
    )
    parser.add_argument(
        "--seeds-per-prompt",
        type=int,
        default=d["seeds_per_prompt"],
        help="seeds for rows without a seed (default %(default)s)",
    )
    parser.add_argument(
        "--steps", type=int, default=d["steps"], help="num_inference_steps (default %(default)s)"
    )
    parser.add_argument(
        "--guidance",
        type=float,
        default=d["guidance"],
        help="guidance_scale for rows without one; <= 1 = no CFG (default: the teacher folder's "
        "teacher_eval.json recommended_guidance_scale, else 5.0)",
    )
    parser.add_argument(
        "--negative-prompt", default=d["negative_prompt"], help="for rows without one (default empty)"
    )
    parser.add_argument(
        "--height", type=int, default=d["height"], help="image height in pixels (default: the pipeline's)"
    )
    parser.add_argument(
        "--width", type=int, default=d["width"], help="image width in pixels (default: the pipeline's)"
    )
    parser.add_argument(
        "--fields",
        type=comma_list,
        default=d["fields"],
        help=f"comma-separated groups to keep (default all): {'; '.join(f'{k} = {v}' for k, v in FIELD_GROUPS.items())}",
    )
    parser.add_argument(
        "--features",
        type=comma_list,
        default=d["features"],
        help="comma-separated denoiser module globs whose outputs to keep, e.g. 'down_blocks.*,mid_block,up_blocks.*' "
        "(* stays within one dotted name; default none)",
    )
    parser.add_argument(
        "--feature-steps",
        type=comma_ints,
        default=d["feature_steps"],
        help="comma-separated step indices for features (default: 4 evenly spaced)",
    )
    parser.add_argument(
        "--feature-dtype", choices=FEATURE_DTYPES, default=d["feature_dtype"], help="(default %(default)s)"
    )
    parser.add_argument(
        "--preview-size",
        type=int,
        default=d["preview_size"],
        help="longest side of the stored previews in pixels (default %(default)s)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=d["batch_size"],
        help="prompts per pipeline call (default %(default)s)",
    )
    parser.add_argument(
        "--device",
        default=d["device"],
        help="auto (this rank's accelerator, else cpu), cpu, cuda, cuda:1, ...",
    )
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        default=d["dtype"],
        help="teacher compute dtype (auto: float16 on cuda, float32 on cpu)",
    )
    parser.add_argument(
        "--threads", type=int, default=d["threads"], help="torch CPU threads (default 0 = torch's default)"
    )
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=d["val_fraction"],
        help="share of rows in the val split (default %(default)s)",
    )
    parser.add_argument(
        "--limit", type=int, default=d["limit"], help="keep only the first N jobs (default 0 = all)"
    )
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def config_from_args(args: argparse.Namespace) -> CaptureConfig:
    return CaptureConfig(**{name: getattr(args, name) for name in config_field_names()})


def main(args: argparse.Namespace) -> int:
    from teacher_cache.runner import print_summary, run  # torch and diffusers load only when running

    config = config_from_args(args)
    print_summary(config, run(config))
    return 0
