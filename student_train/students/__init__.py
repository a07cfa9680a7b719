"""Students: built from the teacher's denoiser (student.py; pruned ones: pruning.py; from an earlier
student: init.py) and called with replayed conditioning (denoiser.py: load only the denoiser, call it
with the cached kwargs); block_outputs.py names their block outputs as phase one names the teacher's."""

from student_train.students.student import (
    LORA_TARGET_MODULES,
    STUDENTS,
    Origin,
    Student,
    build_full,
    build_lora,
    build_student,
    check_student_settings,
    lora_target_modules,
)

__all__ = [
    "LORA_TARGET_MODULES",
    "STUDENTS",
    "Origin",
    "Student",
    "build_full",
    "build_lora",
    "build_student",
    "check_student_settings",
    "lora_target_modules",
]
