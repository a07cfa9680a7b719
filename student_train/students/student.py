"""Students built from the teacher's denoiser: `full` (trainable, plus an EMA copy) and `lora`
(peft adapters on the frozen denoiser, on the target modules of its class: UNet2DConditionModel for
SD / SDXL, SD3Transformer2DModel for SD3). Both are one `Student` and go through one training path;
LoRA only adds the adapter and saves only the adapter's keys (as diffusers' LCM-LoRA script).

    student = build_student("lora", denoiser, config, w_conditioned=False)   # takes `denoiser` over
    output = student.denoise(x_t, timesteps, cond)              # trainable forward
    target = student.target_denoise(x_s, s, cond)               # EMA (full) or the student itself, no grad
"""

import copy
from collections.abc import Callable

import torch
from diffusers import UNet2DConditionModel

from shared.errors import DistillCacheError
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


class Student:
    """The trainable denoiser and, for full students, its EMA copy (the LCM target)."""

    def __init__(self, kind: str, model: torch.nn.Module, ema: torch.nn.Module | None, ema_decay: float):
        self.kind = kind
        self.model = model  # replaced by accelerate's prepared wrapper in the training loop
        self.ema = ema
        self.ema_decay = ema_decay

    @property
    def w_conditioned(self) -> bool:
        return bool(getattr(unwrap(self.model).config, "time_cond_proj_dim", None))

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def denoise(self, x_t, timesteps, cond, guidance_w=None) -> torch.Tensor:
        return call_denoiser(self.model, x_t, timesteps, cond, guidance_w)

    @torch.no_grad()
    def target_denoise(self, x_t, timesteps, cond, guidance_w=None) -> torch.Tensor:
        """The consistency target's network: the EMA copy (full) or the student itself (LoRA)."""
        return call_denoiser(
            self.ema if self.ema is not None else self.model, x_t, timesteps, cond, guidance_w
        )

    @torch.no_grad()
    def update_ema(self) -> None:
        if self.ema is None:
            return
        for ema_param, param in zip(self.ema.parameters(), unwrap(self.model).parameters()):
            ema_param.lerp_(param.detach().to(ema_param.dtype), 1 - self.ema_decay)


def build_full(denoiser: torch.nn.Module, config, w_conditioned: bool) -> Student:
    """The denoiser made trainable, plus its EMA copy; a w-conditioned one (LCM) gets `time_cond_proj_dim`."""
    if w_conditioned and config.time_cond_proj_dim > 0 and isinstance(denoiser, UNet2DConditionModel):
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
    return Student("full", model, ema, config.ema_decay)


def build_lora(denoiser: torch.nn.Module, config, w_conditioned: bool) -> Student:
    """peft adapters (rank, alpha) on the modules `lora_target_modules` names for the denoiser's class,
    added to `denoiser` itself (no copy: an SD1.5 UNet is 3.4 GB); the base stays frozen."""
    from peft import LoraConfig

    targets = lora_target_modules(denoiser)
    model = denoiser.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):  # lora_A's random init: a function of --seed alone
        torch.manual_seed(config.seed)
        model.add_adapter(
            LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, target_modules=targets)
        )
    model.train()
    return Student("lora", model, None, config.ema_decay)


STUDENTS: dict[str, Callable[..., Student]] = {"full": build_full, "lora": build_lora}


def check_student_settings(kind: str, lora_rank: int) -> None:
    if kind not in STUDENTS:
        raise DistillCacheError(f"unknown --student {kind!r}; valid: {', '.join(STUDENTS)}")
    if kind == "lora" and lora_rank <= 0:
        raise DistillCacheError(f"--lora-rank must be > 0, got {lora_rank}")


def build_student(kind: str, denoiser: torch.nn.Module, config, w_conditioned: bool = False) -> Student:
    """The student made from `denoiser`, which it takes over (LoRA adds its adapter in place): pass a
    copy to keep the original."""
    check_student_settings(kind, config.lora_rank)
    student = STUDENTS[kind](denoiser, config, w_conditioned)
    if config.gradient_checkpointing and getattr(student.model, "_supports_gradient_checkpointing", False):
        student.model.enable_gradient_checkpointing()  # diffusers' own: blocks recomputed in backward
    return student
