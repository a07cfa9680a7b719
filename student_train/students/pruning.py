"""Block-pruned students (BK-SDM, Kim et al. 2023; Nota-NetsPresso/BK-SDM src/kd_train_text_to_image.py
`copy_weight_from_teacher`, src/unet_config/bk_*): a smaller `UNet2DConditionModel` whose every layer
is copied from the teacher.

    base   one resnet (+ attention) pair fewer in every down stage and in every up stage:
           layers_per_block L -> L - 1; a down stage keeps its first L - 1 pairs, an up stage (L + 1
           pairs) drops its second-to-last (the last one takes the skip from the stage above, whose
           channels differ)
    small  base, and no mid block (mid_block_type None)
    tiny   small, and no innermost stage (its down and up blocks): the up stages move up by one

The result is a stock diffusers config, so the export loads with
`UNet2DConditionModel.from_pretrained(DIR, subfolder="unet")`. The name mapping lives here alone,
as prefix renames (student prefix -> teacher prefix) applied to parameter keys and module names:

    student, pruning = prune_unet(teacher_unet, "small")     # pruning: the record distill.json keeps
    teacher_module_name("up_blocks.0.resnets.1", pruning)    # -> "up_blocks.0.resnets.2"

For SD1.x the renames are BK-SDM's `connect_info` (tested). A level that cannot be built from a
teacher is refused with the reason (no silent fallback), e.g. the innermost stage of a 2-stage UNet
that holds its only cross-attention.
"""

import copy

import torch
from diffusers import UNet2DConditionModel

from shared.errors import DistillCacheError
from student_train.config import PRUNE_LEVELS

# Blocks with a `resnets` list and (CrossAttn) an `attentions` list of the same length: the pairs BK-SDM removes.
DOWN_TYPES = ("DownBlock2D", "CrossAttnDownBlock2D")
UP_TYPES = ("UpBlock2D", "CrossAttnUpBlock2D")
# Per-stage config lists in down order; tiny drops their innermost entry.
STAGE_KEYS = (
    "block_out_channels",
    "down_block_types",
    "layers_per_block",
    "transformer_layers_per_block",
    "attention_head_dim",
    "num_attention_heads",
    "cross_attention_dim",
    "only_cross_attention",
)


def per_stage(value, stages: int) -> list:
    """A config entry that is one value or one per stage -> one per stage (diffusers' broadcast)."""
    return list(value) if isinstance(value, (list, tuple)) else [value] * stages


def has_cross_attention(block_types) -> bool:
    return any(block_type and "CrossAttn" in block_type for block_type in block_types)


def refuse(level: str, reason: str) -> None:
    raise DistillCacheError(f"--prune {level} cannot be built from this teacher: {reason}")


def check_prunable(config: dict, level: str) -> None:
    """Raise DistillCacheError with the reason when `level` cannot be built from a teacher `config`."""
    if level not in PRUNE_LEVELS:
        raise DistillCacheError(f"unknown --prune {level!r}; valid: {', '.join(PRUNE_LEVELS)}")
    down, up = list(config["down_block_types"]), list(config["up_block_types"])
    stages = len(down)
    odd = [t for t in down if t not in DOWN_TYPES] + [t for t in up if t not in UP_TYPES]
    if odd:
        refuse(
            level, f"block types {', '.join(odd)}; BK-SDM pruning knows {', '.join(DOWN_TYPES + UP_TYPES)}"
        )
    for key in ("transformer_layers_per_block", "reverse_transformer_layers_per_block"):
        if any(isinstance(item, (list, tuple)) for item in per_stage(config.get(key), stages)):
            refuse(level, f"per-layer {key} lists are not supported")
    layers = per_stage(config["layers_per_block"], stages)
    if min(layers) < 2:
        refuse(
            level,
            f"layers_per_block {config['layers_per_block']}: a stage with one resnet has none to remove",
        )
    if level == "base":
        return
    if config.get("mid_block_type") is None:
        refuse(level, "the teacher has no mid block to remove (use --prune base)")
    if not has_cross_attention(down + up):
        refuse(
            level,
            f"its mid block ({config['mid_block_type']}) holds its only cross-attention (use --prune base)",
        )
    if level == "small":
        return
    channels = list(config["block_out_channels"])
    if stages < 2:
        refuse(level, "a 1-stage UNet has no inner stage to remove")
    if not has_cross_attention(down[:-1] + up[1:]):
        refuse(
            level,
            f"the innermost stage of this {stages}-stage UNet ({down[-1]} / {up[0]}) and the mid block hold "
            "its only cross-attention, so the student would ignore the prompt (use --prune small)",
        )
    if channels[-1] != channels[-2]:
        refuse(
            level,
            f"block_out_channels {channels}: the innermost two stages differ in width, so the next stage's "
            "up block cannot take the removed one's place",
        )


def pruned_config(config: dict, level: str) -> dict:
    """The stock diffusers config of the `level` student of a teacher UNet `config`."""
    check_prunable(config, level)
    stages = len(config["down_block_types"])
    pruned = {key: value for key, value in dict(config).items() if not key.startswith("_")}
    layers = per_stage(config["layers_per_block"], stages)
    pruned["layers_per_block"] = (
        layers[0] - 1 if isinstance(config["layers_per_block"], int) else [n - 1 for n in layers]
    )
    if level in ("small", "tiny"):
        pruned["mid_block_type"] = None
    if level == "tiny":
        for key in STAGE_KEYS:
            if isinstance(pruned.get(key), (list, tuple)):
                pruned[key] = list(pruned[key])[:-1]
        pruned["up_block_types"] = list(config["up_block_types"])[1:]
        if isinstance(pruned.get("reverse_transformer_layers_per_block"), (list, tuple)):
            pruned["reverse_transformer_layers_per_block"] = list(
                pruned["reverse_transformer_layers_per_block"]
            )[1:]
    return pruned


def renames(config: dict, level: str) -> list[tuple[str, str]]:
    """(student prefix, teacher prefix) pairs, most specific first; every other name is the same in both.

    Up stage j of the student is the teacher's up stage j + shift (shift 1 for tiny, else 0); its last
    resnet / attention (index U - 2 of U - 1 kept) is the teacher's last (index U - 1 of U)."""
    check_prunable(config, level)
    stages = len(config["down_block_types"])
    up_layers = [n + 1 for n in reversed(per_stage(config["layers_per_block"], stages))]  # teacher, up order
    shift = 1 if level == "tiny" else 0
    pairs = []
    for j in range(stages - shift):
        teacher_j, last = j + shift, up_layers[j + shift] - 1
        for part in ("resnets", "attentions"):
            pairs.append((f"up_blocks.{j}.{part}.{last - 1}.", f"up_blocks.{teacher_j}.{part}.{last}."))
        if shift:
            pairs.append((f"up_blocks.{j}.", f"up_blocks.{teacher_j}."))
    return pairs


def unaligned_blocks(config: dict, level: str) -> list[str]:
    """Student blocks whose output is not the output of the teacher block of the same (renamed) name:
    tiny's last down block loses its downsampler (its output is the teacher's before downsampling)."""
    return [f"down_blocks.{len(config['down_block_types']) - 2}"] if level == "tiny" else []


def teacher_module_name(name: str, pruning: dict | None) -> str:
    """The teacher's name for a student parameter or module (`pruning` None: the same name)."""
    if pruning is None:
        return name
    dotted = name + "."
    for student_prefix, teacher_prefix in pruning["renames"]:
        if dotted.startswith(student_prefix):
            return (teacher_prefix + dotted[len(student_prefix) :])[:-1]
    return name


def copy_teacher_weights(student: torch.nn.Module, teacher: torch.nn.Module, pruning: dict) -> None:
    """Every student tensor <- the teacher tensor of its mapped name (shapes and head counts checked)."""
    teacher_state = teacher.state_dict()
    student_state = student.state_dict()
    for key, tensor in student_state.items():
        source = teacher_state.get(teacher_module_name(key, pruning))
        if source is None or source.shape != tensor.shape:
            raise DistillCacheError(
                f"--prune {pruning['level']}: no teacher tensor of shape {tuple(tensor.shape)} for {key}; "
                "this UNet's layout is not one BK-SDM pruning supports"
            )
    teacher_modules = dict(teacher.named_modules())
    for name, module in student.named_modules():
        heads = getattr(module, "heads", None)
        if heads is not None and teacher_modules[teacher_module_name(name, pruning)].heads != heads:
            raise DistillCacheError(
                f"--prune {pruning['level']}: {name} would change its attention head count"
            )
    with torch.no_grad():
        for key, tensor in student_state.items():
            tensor.copy_(teacher_state[teacher_module_name(key, pruning)])


def prune_unet(teacher: torch.nn.Module, level: str) -> tuple[UNet2DConditionModel, dict]:
    """The `level` student of `teacher` (a UNet2DConditionModel, left untouched), initialised from its
    weights, and the pruning record {level, renames, unaligned} that distill.json keeps."""
    if not isinstance(teacher, UNet2DConditionModel):
        raise DistillCacheError(
            f"--student pruned removes blocks of a UNet2DConditionModel (BK-SDM); this store's denoiser is "
            f"{type(teacher).__name__}: use --student full or lora"
        )
    config = dict(teacher.config)
    pruning = {
        "level": level,
        "renames": [list(pair) for pair in renames(config, level)],
        "unaligned": unaligned_blocks(config, level),
    }
    student = UNet2DConditionModel.from_config(copy.deepcopy(pruned_config(config, level)))
    copy_teacher_weights(student, teacher, pruning)
    parameter = next(teacher.parameters())
    if student.dtype != parameter.dtype:
        student = student.to(dtype=parameter.dtype)
    return student.to(parameter.device), pruning
