"""Tiny stores of every family phase one captures, made by phase one itself (teacher_cache.runner) from
tiny random pipelines (tests/tiny_models.py), once per test session:

    capture = family_capture("sd3")          # FamilyCapture(teacher_dir, store), treat as read-only
    reader = StoreReader(capture.store)

Families: "sd" (StableDiffusionPipeline, epsilon, DDIM), "sdxl" (StableDiffusionXLPipeline: two text
encoders, added_cond_kwargs), "sd3" (StableDiffusion3Pipeline without T5: SD3Transformer2DModel,
FlowMatchEulerDiscreteScheduler with shift 3, flow_prediction). 6 prompts x 1 seed, 6 steps, CFG 4,
every field; features (the block outputs blockkd reads, at 4 of the 6 steps) only where a family's
students can be block-pruned UNets (FEATURES: SDXL; SD's blockkd tests use tests/conftest.py's store).
"""

import functools
import tempfile
from dataclasses import dataclass
from pathlib import Path

from teacher_cache.runner import run
from tests.capture_helpers import tiny_capture_config, write_prompts
from tests.tiny_models import save_tiny_pipeline, save_tiny_sd_pipeline, tiny_sd3_pipeline, tiny_sdxl_pipeline

FAMILY_BUILDERS = {
    "sd": lambda folder: save_tiny_sd_pipeline(folder),
    "sdxl": lambda folder: save_tiny_pipeline(tiny_sdxl_pipeline, folder),
    "sd3": lambda folder: save_tiny_pipeline(tiny_sd3_pipeline, folder),
}
PIPELINE_CLASSES = {
    "sd": "StableDiffusionPipeline",
    "sdxl": "StableDiffusionXLPipeline",
    "sd3": "StableDiffusion3Pipeline",
}
PROMPTS = [
    "a red seven on blue",
    "a green two on white",
    "a blue one on yellow",
    "a black nine on red",
    "a white three on green",
    "a yellow five on black",
]
STEPS = 6
GUIDANCE = 4.0
# phase one's --features per family (blockkd on SD3 is refused: no UNet blocks to prune)
FEATURES = {"sdxl": ("down_blocks.*", "mid_block", "up_blocks.*")}


@dataclass(frozen=True)
class FamilyCapture:
    teacher_dir: Path
    store: str


@functools.cache
def family_capture(family: str) -> FamilyCapture:
    """The family's tiny teacher, saved, and its store (captured once per session)."""
    folder = Path(tempfile.mkdtemp(prefix=f"family_{family}_"))
    teacher = FAMILY_BUILDERS[family](folder / "teacher")
    prompts = write_prompts(folder, PROMPTS)
    fields = ("noise", "trajectory", "final_latents", "out", "cond", "noised", "preview")
    features = FEATURES.get(family, ())
    config = tiny_capture_config(
        folder / "store", teacher, prompts, steps=STEPS, guidance=GUIDANCE, batch_size=6,
        fields=fields + (("features",) if features else ()), features=features, val_fraction=0.0,
    )  # fmt: skip
    run(config)
    return FamilyCapture(Path(teacher), config.out)
