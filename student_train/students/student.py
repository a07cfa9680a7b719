"""Students built from the teacher's denoiser (or an earlier student's, `--init`): `full` (trainable,
plus an EMA copy), `lora` (peft adapters on the frozen denoiser, on the target modules of its class:
UNet2DConditionModel for SD / SDXL, SD3Transformer2DModel for SD3) and `pruned` (BK-SDM block removal,
pruning.py, then trained as a full one). All are one `Student` and go through one training path;
LoRA only adds the adapter and saves only the adapter's keys (as diffusers' LCM-LoRA script).

A LoRA student keeps its frozen base in `--base-dtype` (the reference scripts' `weight_dtype`) and
its adapters in float32: inputs are cast to the base dtype on the way in, peft computes the adapter
path in float32 and adds it to the base path, and the output comes back as float32, so the loss
arithmetic is float32 whatever the base. Students without frozen weights (full) train in float32.

    student = build_student("lora", denoiser, config, w_conditioned=False)   # takes `denoiser` over
    output = student.denoise(x_t, timesteps, cond)              # trainable forward, float32 output
    target = student.target_denoise(x_s, s, cond)               # EMA (full) or the student itself, no grad

A student remembers where its starting weights came from: `pruning` (the pruning record when its
architecture is pruned, else None), `lineage` (the earlier runs of an --init chain, oldest first) and
`fixed_w` (the guidance w of a w-conditioned --init that a method without w feeds it).

An SD3 student folds the T5-less padding (shared/padding_attention.py): a call whose context ends in
n >= 2 tokens that are zero in every row of the batch runs on its first L - n + 1 tokens, the last one
counted n times in attention (the same function, ~4x cheaper on 8 + 256 tokens); any other batch, and
every other family, takes the stock path. The exported student keeps the stock processors.
"""

import copy
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from diffusers import UNet2DConditionModel

from shared.errors import DistillCacheError
from shared.padding_attention import fold_trailing_padding, install_repeated_padding
from student_train.config import WEIGHT_DTYPES
from student_train.students.denoiser import call_denoiser, unwrap

# LoRA target modules per denoiser class, as diffusers' own LoRA scripts choose them.
LORA_TARGET_MODULES: dict[str, list[str]] = {
    # examples/consistency_distillation/train_lcm_distill_lora_sd_wds.py and ..._lora_sdxl_wds.py (the
    # same list for SD and SDXL): attention, feed-forward and conv modules of the UNet.
    "UNet2DConditionModel": [
        "to_q",
        "to_k",
        "to_v",
        "to_out.0",
        "proj_in",
        "proj_out",
        "ff.net.0.proj",
        "ff.net.2",
        "conv1",
        "conv2",
        "conv_shortcut",
        "downsamplers.0.conv",
        "upsamplers.0.conv",
        "time_emb_proj",
    ],
    # examples/dreambooth/train_dreambooth_lora_sd3.py (its --lora_layers default): the joint attention
    # projections of both streams (image: to_q/k/v/out.0; text: add_q/k/v_proj, to_add_out).
    "SD3Transformer2DModel": [
        "attn.add_k_proj",
        "attn.add_q_proj",
        "attn.add_v_proj",
        "attn.to_add_out",
        "attn.to_k",
        "attn.to_out.0",
        "attn.to_q",
        "attn.to_v",
    ],
}


def lora_target_modules(denoiser: torch.nn.Module) -> list[str]:
    """The LoRA target modules for the class of `denoiser`; one line naming the supported classes if none."""
    name = type(unwrap(denoiser)).__name__
    if name not in LORA_TARGET_MODULES:
        raise DistillCacheError(
            f"--student lora has no target modules for a {name} denoiser (supported: "
            f"{', '.join(LORA_TARGET_MODULES)}); train --student full"
        )
    return LORA_TARGET_MODULES[name]


@dataclass(frozen=True)
class Origin:
    """Where a student's starting weights came from (the teacher when all fields are empty)."""

    pruning: dict | None = None  # pruning.prune_unet's record when the architecture is pruned
    lineage: tuple[dict, ...] = ()  # the earlier runs of an --init chain, oldest first
    fixed_w: float | None = None  # a w-conditioned --init's guidance w, for methods that feed none


class Student:
    """The trainable denoiser and, for full students, its EMA copy (the LCM target)."""

    def __init__(
        self,
        kind: str,
        model: torch.nn.Module,
        ema: torch.nn.Module | None,
        ema_decay: float,
        origin: Origin = Origin(),
        input_dtype: torch.dtype = torch.float32,
    ):
        self.kind = kind
        self.model = model  # replaced by accelerate's prepared wrapper in the training loop
        self.ema = ema
        self.ema_decay = ema_decay
        self.input_dtype = input_dtype  # the frozen base's dtype: what the denoiser's inputs are cast to
        self.pruning, self.lineage, self.fixed_w = origin.pruning, list(origin.lineage), origin.fixed_w
        self.folds_padding = False  # its attention takes `padding_copies` (install_padding_folding)

    def install_padding_folding(self) -> None:
        """Repeated-padding processors (stock until a call folds) on an SD3 model and its EMA copy."""
        self.folds_padding = install_repeated_padding(unwrap(self.model))
        if self.folds_padding and self.ema is not None:
            install_repeated_padding(self.ema)

    @property
    def w_conditioned(self) -> bool:
        return bool(getattr(unwrap(self.model).config, "time_cond_proj_dim", None))

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def guidance(self, x_t: torch.Tensor, guidance_w: torch.Tensor | None) -> torch.Tensor | None:
        """The w a call feeds: the loss's, else the fixed w of a w-conditioned --init."""
        if guidance_w is None and self.fixed_w is not None:
            return torch.full((x_t.shape[0],), self.fixed_w, device=x_t.device)
        return guidance_w

    def call(self, model, x_t, timesteps, cond, guidance_w) -> torch.Tensor:
        """`model`'s raw output in float32, its inputs cast to the base dtype first."""
        guidance_w = self.guidance(x_t, guidance_w)
        if self.input_dtype != torch.float32:
            x_t, cond = x_t.to(self.input_dtype), cast_floating(cond, self.input_dtype)
        if self.folds_padding and "encoder_hidden_states" in cond:
            context, copies = fold_trailing_padding(cond["encoder_hidden_states"])
            if copies > 1:  # (B, L - n + 1, D), the last token counted n times
                cond = {
                    **cond,
                    "encoder_hidden_states": context,
                    "joint_attention_kwargs": {"padding_copies": copies},
                }
        return call_denoiser(model, x_t, timesteps, cond, guidance_w).float()

    def denoise(self, x_t, timesteps, cond, guidance_w=None) -> torch.Tensor:
        return self.call(self.model, x_t, timesteps, cond, guidance_w)

    @torch.no_grad()
    def target_denoise(self, x_t, timesteps, cond, guidance_w=None) -> torch.Tensor:
        """The consistency target's network: the EMA copy (full) or the student itself (LoRA)."""
        return self.call(self.ema if self.ema is not None else self.model, x_t, timesteps, cond, guidance_w)

    @torch.no_grad()
    def update_ema(self) -> None:
        if self.ema is None:
            return
        for ema_param, param in zip(self.ema.parameters(), unwrap(self.model).parameters()):
            ema_param.lerp_(param.detach().to(ema_param.dtype), 1 - self.ema_decay)


def cast_floating(nested: dict, dtype: torch.dtype) -> dict:
    """The nested conditioning kwargs with every floating tensor cast to `dtype`."""
    return {
        name: cast_floating(value, dtype)
        if isinstance(value, dict)
        else value.to(dtype)
        if isinstance(value, torch.Tensor) and value.is_floating_point()
        else value
        for name, value in nested.items()
    }


def build_full(denoiser: torch.nn.Module, config, w_conditioned: bool, origin: Origin = Origin()) -> Student:
    """The denoiser made trainable, plus its EMA copy; a w-conditioned one (LCM) gets `time_cond_proj_dim`
    (a denoiser that has one, e.g. an --init student, keeps its own)."""
    has_w_embedding = bool(getattr(denoiser.config, "time_cond_proj_dim", None))
    if (
        w_conditioned
        and not has_w_embedding
        and config.time_cond_proj_dim > 0
        and isinstance(denoiser, UNet2DConditionModel)
    ):
        model = UNet2DConditionModel.from_config(
            denoiser.config, time_cond_proj_dim=config.time_cond_proj_dim
        )
        missing, _ = model.load_state_dict(denoiser.state_dict(), strict=False)
        assert all(name.startswith("time_embedding.cond_proj") for name in missing), missing
        # Zero-initialised w projection: the student starts as the teacher (the script leaves it random).
        torch.nn.init.zeros_(model.time_embedding.cond_proj.weight)
    else:
        model = denoiser
    model.requires_grad_(True).train()
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    return Student("full", model, ema, config.ema_decay, origin)


def build_pruned(
    denoiser: torch.nn.Module, config, w_conditioned: bool, origin: Origin = Origin()
) -> Student:
    """The `--prune` level of `denoiser` (a new, smaller UNet holding copies of its weights), trained
    as a full student."""
    from student_train.students.pruning import prune_unet

    model, pruning = prune_unet(denoiser, config.prune)
    student = build_full(model, config, w_conditioned, replace(origin, pruning=pruning))
    student.kind = "pruned"
    return student


def build_lora(denoiser: torch.nn.Module, config, w_conditioned: bool, origin: Origin = Origin()) -> Student:
    """peft adapters (rank, alpha) on the modules `lora_target_modules` names for the denoiser's class,
    added to `denoiser` itself (no copy: an SD1.5 UNet is 3.4 GB); the base stays frozen, in
    --base-dtype, the adapters float32."""
    from peft import LoraConfig

    targets = lora_target_modules(denoiser)
    model = denoiser.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):  # lora_A's random init: a function of --seed alone
        torch.manual_seed(config.seed)
        model.add_adapter(
            LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, target_modules=targets)
        )
    base_dtype = WEIGHT_DTYPES[config.base_dtype]
    for param in model.parameters():
        # peft makes the adapters in the base's dtype: adapters to float32 (the reference scripts'
        # cast_training_params), the frozen base to its dtype, one tensor at a time (no second copy)
        param.data = param.data.to(torch.float32 if param.requires_grad else base_dtype)
    model.train()
    return Student("lora", model, None, config.ema_decay, origin, input_dtype=base_dtype)


STUDENTS: dict[str, Callable[..., Student]] = {"full": build_full, "lora": build_lora, "pruned": build_pruned}
FROZEN_BASE = ("lora",)  # the kinds whose frozen weights --base-dtype casts


def check_student_settings(kind: str, lora_rank: int, base_dtype: str = "fp32") -> None:
    if kind not in STUDENTS:
        raise DistillCacheError(f"unknown --student {kind!r}; valid: {', '.join(STUDENTS)}")
    if kind == "lora" and lora_rank <= 0:
        raise DistillCacheError(f"--lora-rank must be > 0, got {lora_rank}")
    if base_dtype not in WEIGHT_DTYPES:
        raise DistillCacheError(f"unknown --base-dtype {base_dtype!r}; valid: {', '.join(WEIGHT_DTYPES)}")
    if base_dtype != "fp32" and kind not in FROZEN_BASE:
        raise DistillCacheError(
            f"--base-dtype {base_dtype} casts frozen weights, and a {kind} student trains all of its weights "
            "(kept in float32); use --mixed-precision bf16 to compute in bf16, or --student lora"
        )


def build_student(
    kind: str, denoiser: torch.nn.Module, config, w_conditioned: bool = False, origin: Origin = Origin()
) -> Student:
    """The student made from `denoiser`, which it takes over (LoRA adds its adapter in place): pass a
    copy to keep the original. `origin` says where `denoiser` came from (an --init student)."""
    check_student_settings(kind, config.lora_rank, config.base_dtype)
    student = STUDENTS[kind](denoiser, config, w_conditioned, origin)
    student.install_padding_folding()
    if config.gradient_checkpointing and getattr(student.model, "_supports_gradient_checkpointing", False):
        student.model.enable_gradient_checkpointing()  # diffusers' own: blocks recomputed in backward
    return student
