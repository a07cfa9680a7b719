"""`student-train eval`: the student at 1, 2, 4 steps next to the teacher at the same steps.

    student-train eval --cache runs/cache --student runs/student --out runs/eval [--steps 1,2,4]

Evaluates on the store's `val` split (never trained on) and on every row of the unseen-prompt
store (`--unseen-cache`, default `<cache>_unseen` when it exists); writes metrics.json and grid.png.
"""

import argparse

from student_train.evaluation import EvalConfig, parse_steps, run

HELP = "evaluate a student on the val split and unseen prompts: metrics.json + grid.png"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = EvalConfig(cache="", student="", out="")
    parser.add_argument("--cache", required=True, help="the teacher store the student was trained from")
    parser.add_argument("--student", required=True, help="the student folder (student-train run --out)")
    parser.add_argument("--out", required=True, help="folder for metrics.json and grid.png")
    parser.add_argument(
        "--unseen-cache",
        default=defaults.unseen_cache,
        help="store of prompts absent from --cache; 'auto' = <cache>_unseen if it exists, 'none' = skip",
    )
    parser.add_argument(
        "--steps",
        default=",".join(map(str, defaults.steps)),
        help="student / teacher step counts, e.g. 1,2,4",
    )
    parser.add_argument(
        "--teacher",
        default=defaults.teacher,
        help="teacher folder or Hub id; default: the one the store names",
    )
    parser.add_argument(
        "--teacher-spacing",
        default=defaults.teacher_spacing,
        help="teacher@K's DDIM timesteps: trailing (every K starts at t = T-1) or store (the teacher's own)",
    )
    parser.add_argument(
        "--limit", type=int, default=defaults.limit, help="at most N rows per eval set (0 = all)"
    )
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument(
        "--grid-prompts", type=int, default=defaults.grid_prompts, help="grid rows taken from each eval set"
    )
    parser.add_argument(
        "--judge",
        action=argparse.BooleanOptionalAction,
        default=defaults.judge,
        help="adherence and FD with the digit judge (skipped anyway for prompts outside the digit grammar)",
    )
    parser.add_argument("--device", default=defaults.device, help="auto = cuda if available, else cpu")
    parser.add_argument("--dtype", default=defaults.dtype, help="auto = float16 on cuda, float32 on cpu")


def main(args: argparse.Namespace) -> int:
    config = EvalConfig(
        cache=args.cache,
        student=args.student,
        out=args.out,
        unseen_cache=args.unseen_cache,
        steps=parse_steps(args.steps),
        teacher=args.teacher,
        teacher_spacing=args.teacher_spacing,
        limit=args.limit,
        batch_size=args.batch_size,
        grid_prompts=args.grid_prompts,
        judge=args.judge,
        device=args.device,
        dtype=args.dtype,
    )
    run(config)
    return 0
