"""The students `student-train compare` trains: each method's default recipe, plus the 1-step recipe.

A recipe is `student-train run` flags (TrainConfig fields) and an update budget: 600 updates each
(25-55 min each on one CPU thread for the embedded teacher's 2016-row cache, docs/methods.md); pass
`--train-steps N` to give every recipe the same N. Chosen on the embedded teacher (docs/methods.md
"compare"): batch 16, cosine lr, 1 CPU thread.

    for recipe in select_recipes(("direct", "reflow")):
        TrainConfig(cache=..., out=..., **recipe.flags, train_steps=recipe.train_steps)
"""

from dataclasses import dataclass

from shared.errors import DistillCacheError


@dataclass(frozen=True)
class Recipe:
    name: str
    what: str  # one line for the table
    flags: dict  # TrainConfig fields besides cache / out / train_steps
    train_steps: int  # the default budget (optimizer updates of batch 16)
    eval_at_teacher_steps: bool = False  # also evaluate at the store's own step count (guidance)


RECIPES = {
    recipe.name: recipe
    for recipe in (
        Recipe("direct", "direct, full, K = 4 (make train)", {"method": "direct"}, 600),
        Recipe("direct-1", "direct, full, K = 1", {"method": "direct", "num_student_steps": 1}, 600),
        Recipe(
            "lcm",
            "lcm, LoRA r 64, w in [2, 6]",
            {"method": "lcm", "student": "lora", "w_min": 2.0, "w_max": 6.0},
            600,
        ),
        Recipe(
            "tcd",
            "tcd, LoRA r 64, w in [2, 6], gamma 0.3",
            {"method": "tcd", "student": "lora", "w_min": 2.0, "w_max": 6.0},
            600,
        ),
        Recipe("progressive", "progressive, full, K = 4", {"method": "progressive"}, 600),
        Recipe(
            "guidance",
            "guidance (Meng stage 1), full, w in [0, 4]",
            {"method": "guidance"},
            600,
            eval_at_teacher_steps=True,
        ),
        Recipe("reflow", "reflow, full, uniform t", {"method": "reflow"}, 600),
    )
}


def select_recipes(names: tuple[str, ...]) -> list[Recipe]:
    """The recipes named (all when empty), in the table's order; unknown names are refused."""
    unknown = [name for name in names if name not in RECIPES]
    if unknown:
        raise DistillCacheError(f"unknown --recipes {', '.join(unknown)}; valid: {', '.join(RECIPES)}")
    return [recipe for name, recipe in RECIPES.items() if not names or name in names]
