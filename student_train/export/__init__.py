"""The student folder (DESIGN.md): written at the end of training, read back by eval and sample."""

from student_train.export.folder import (
    EXPORTED_STEP_COUNTS,
    LORA_WEIGHT_NAME,
    distill_record,
    export_student,
    load_exported_student,
    load_fused_student,
)

__all__ = [
    "EXPORTED_STEP_COUNTS",
    "LORA_WEIGHT_NAME",
    "distill_record",
    "export_student",
    "load_exported_student",
    "load_fused_student",
]
