"""The embedded teachers, tiny pipelines trained on coloured digits (shared/digits.py):

    default_teacher/   StableDiffusionPipeline (UNet, eps-prediction, DDIM): `make teacher`
    flow_teacher/      StableDiffusion3Pipeline without T5 (MMDiT, rectified flow): `make teacher FAMILY=sd3`

Both are committed diffusers folders; `python -m teacher_cache.embedded.train_teacher [--family sd3]`
rebuilds one from scratch, `python -m teacher_cache.embedded.teacher_table [--teacher DIR]` measures it.
"""

from pathlib import Path

DEFAULT_TEACHER_DIR = Path(__file__).resolve().parent / "default_teacher"
FLOW_TEACHER_DIR = Path(__file__).resolve().parent / "flow_teacher"
