"""The embedded default teacher: a tiny StableDiffusionPipeline trained on coloured digits.

`default_teacher/` is the committed diffusers folder; `python -m teacher_cache.embedded.train_teacher`
(= `make teacher`) rebuilds it from scratch, `python -m teacher_cache.embedded.teacher_table` measures it.
"""

from pathlib import Path

DEFAULT_TEACHER_DIR = Path(__file__).resolve().parent / "default_teacher"
