"""A student's block outputs, named as phase one names the teacher's (`features.<module>`).

The store holds the output of teacher modules (`down_blocks.1`, `mid_block`, `up_blocks.0`, ...) at
the feature steps. A student module stands for the teacher module of its name after the pruning
renames (pruning.py; a full or LoRA student: the same name); a teacher module without a counterpart
(the mid block of a small student) is skipped, and so is a student block whose output changed by
construction (tiny's last down block, which lost its downsampler).

    pairs = aligned_blocks(student.model, ["down_blocks.0", "mid_block"], student.pruning)
    with BlockOutputs(student.model, pairs) as outputs:      # {student module: teacher module}
        student.denoise(x_t, t, cond)
    outputs["mid_block"]                                     # keyed by the teacher's name, (B, ...)
"""

import torch

from shared.module_outputs import module_output
from student_train.students.denoiser import unwrap
from student_train.students.pruning import teacher_module_name


def aligned_blocks(model: torch.nn.Module, teacher_modules, pruning: dict | None) -> dict[str, str]:
    """{student module name: teacher module name} for the teacher modules the student has."""
    wanted = set(teacher_modules)
    unaligned = set(pruning["unaligned"]) if pruning else set()
    pairs = {}
    for name, _ in unwrap(model).named_modules():
        teacher_name = teacher_module_name(name, pruning)
        if name and name not in unaligned and teacher_name in wanted:
            pairs[name] = teacher_name
    return pairs


class BlockOutputs(dict):
    """Forward hooks for its `with` block: {teacher module name: the student module's last output}."""

    def __init__(self, model: torch.nn.Module, pairs: dict[str, str]):
        super().__init__()
        self.modules = {teacher: unwrap(model).get_submodule(student) for student, teacher in pairs.items()}
        self.handles = []

    def __enter__(self) -> "BlockOutputs":
        for teacher_name, module in self.modules.items():
            self.handles.append(module.register_forward_hook(self.keep(teacher_name)))
        return self

    def keep(self, teacher_name: str):
        def hook(module, args, output) -> None:
            self[teacher_name] = module_output(module, output)

        return hook

    def __exit__(self, *exc_info) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
