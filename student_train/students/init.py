"""`--init STUDENT_DIR`: start any method from an earlier student folder instead of the teacher's denoiser.

    check_init(config, reader)                                   # before anything is written
    denoiser, origin = load_init(config.init, config.teacher or None, method.w_conditioned)

The folder's distill.json says what it holds: a denoiser (`unet/`, full or pruned: its architecture
and weights) or a LoRA adapter, which is fused onto its base (the teacher's denoiser, or the previous
student of its own chain). The new run's `lineage` is the folder's lineage plus the folder itself,
oldest first, and lands in its distill.json; a pruned architecture keeps its pruning record (blockkd
aligns its blocks by it); a w-conditioned one (`time_cond_proj_dim`, lcm / guidance) keeps its
w-embedding and, under a method that feeds no w, is called at the w it recommends.

Recipes: `--method blockkd --student pruned`, then `--init THAT --method direct --student full`
(pruned, then few-step); `--init <guidance student> --method progressive`.
"""

import json
from pathlib import Path

import torch

from shared.errors import DistillCacheError
from student_train.students.student import Origin


def read_init_distill(init_dir: str) -> dict:
    path = Path(init_dir) / "distill.json"
    if not path.is_file():
        raise DistillCacheError(
            f"--init {init_dir} has no distill.json; give a folder from student-train run --out"
        )
    return json.loads(path.read_text())


def check_init(config, reader) -> None:
    """Refuse an --init that cannot start this run: not a student folder, another teacher, or --student pruned."""
    if not config.init:
        return
    distill = read_init_distill(config.init)
    if config.student == "pruned":
        kind = (distill.get("pruning") or {}).get("level", distill.get("student"))
        raise DistillCacheError(
            f"--init {config.init} already fixes the architecture ({kind}); train it with --student full "
            "(every weight) or --student lora, not --student pruned"
        )
    if distill.get("store", {}).get("fingerprint") != reader.fingerprint:
        raise DistillCacheError(
            f"--init {config.init} was distilled from another teacher than --cache {config.cache} holds; "
            "start from a student of this store's teacher"
        )


def lineage_entry(init_dir: str, distill: dict) -> dict:
    """One run of the chain: where its folder is and what made it."""
    return {
        "dir": str(Path(init_dir).resolve()),
        "method": distill.get("method"),
        "student": distill.get("student"),
        "prune": (distill.get("pruning") or {}).get("level"),
        "store": distill.get("store", {}).get("url"),
        "train_steps": distill.get("train", {}).get("train_steps"),
    }


def load_init(
    init_dir: str, teacher: str | None, method_w_conditioned: bool
) -> tuple[torch.nn.Module, Origin]:
    """The --init folder's denoiser (trainable weights, LoRA fused) and where it came from; `teacher`
    (--teacher) overrides the source of a LoRA chain's base teacher."""
    from student_train.export import load_fused_student

    model, distill = load_fused_student(init_dir, teacher)
    w_embedded = bool(getattr(model.config, "time_cond_proj_dim", None))
    fixed_w = (
        distill.get("sampling", {}).get("guidance_w") if w_embedded and not method_w_conditioned else None
    )
    if w_embedded and not method_w_conditioned and fixed_w is None:
        raise DistillCacheError(
            f"--init {init_dir} is w-conditioned (time_cond_proj_dim) but its distill.json recommends no w"
        )
    origin = Origin(
        pruning=distill.get("pruning"),
        lineage=(*(distill.get("lineage") or []), lineage_entry(init_dir, distill)),
        fixed_w=None if fixed_w is None else float(fixed_w),
    )
    return model.float().requires_grad_(False), origin
