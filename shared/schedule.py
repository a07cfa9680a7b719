"""Noise-schedule math shared by both phases: x_t = alpha_t * x0 + sigma_t * eps.

One form for the DDPM family (alpha_t = sqrt(alphas_cumprod[t]), sigma_t = sqrt(1 - alphas_cumprod[t]),
Ho et al. 2020; the alphas come from diffusers' own beta schedules) and for flow matching
(alpha = 1 - s, sigma = s with s = t / num_train_timesteps, Lipman et al. 2023 / SD3). Every loss and
sampler is written once against `alpha_sigma`, `to_x0_eps` and `ddim_step`:

    schedule = NoiseSchedule.from_scheduler_config(settings["scheduler"]["config"], settings["scheduler"]["class"])
    x0, eps = schedule.to_x0_eps(model_output, x_t, t, "epsilon")   # any prediction type
    x_s = schedule.ddim_step(x0, eps, s)                             # deterministic DDIM (Song et al. 2021)

Timesteps are the values passed to the denoiser. A DDPM timestep below 0 means "after the last
step" and gets the scheduler's final alpha (1 with `set_alpha_to_one`, else alphas_cumprod[0]), as
diffusers' DDIMScheduler does; `end_timestep` is that point for the family.
"""

from dataclasses import dataclass

import torch

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample", "flow_prediction")


def expand_like(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1) so that it broadcasts against `like` (B, ...)."""
    return values.reshape(values.shape[0], *([1] * (like.dim() - 1))).to(like.dtype)


@dataclass(frozen=True)
class NoiseSchedule:
    family: str  # "ddpm" | "flow"
    num_train_timesteps: int
    alphas_cumprod: torch.Tensor | None = None  # (num_train_timesteps,) float64, ddpm only
    final_alpha_cumprod: float = 1.0  # alpha_cumprod used for timesteps < 0, ddpm only

    @classmethod
    def from_scheduler_config(cls, config: dict, class_name: str = "") -> "NoiseSchedule":
        """Build from a diffusers scheduler config (any DDPM-family scheduler, or FlowMatch*)."""
        num_train_timesteps = int(config.get("num_train_timesteps", 1000))
        if class_name.startswith("FlowMatch") or config.get("use_flow_sigmas", False):
            return cls("flow", num_train_timesteps)
        from diffusers import DDIMScheduler  # the betas -> alphas_cumprod code of diffusers itself

        ddim = DDIMScheduler.from_config({k: v for k, v in config.items() if not k.startswith("_")})
        return cls(
            "ddpm",
            num_train_timesteps,
            ddim.alphas_cumprod.to(torch.float64),
            float(ddim.final_alpha_cumprod),
        )

    @property
    def end_timestep(self) -> float:
        """The timestep after the last sampling step: alpha = final alpha (ddpm) or 1 (flow)."""
        return -1.0 if self.family == "ddpm" else 0.0

    def alpha_sigma(self, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,) timesteps -> alpha_t (B,), sigma_t (B,), float32 on the timesteps' device."""
        timesteps = torch.as_tensor(timesteps)
        if self.family == "flow":
            s = timesteps.to(torch.float64) / self.num_train_timesteps
            return (1 - s).float(), s.float()
        index = timesteps.round().long().clamp(0, self.num_train_timesteps - 1)
        alphas_cumprod = self.alphas_cumprod.to(timesteps.device)[index.to(timesteps.device)]
        alphas_cumprod = torch.where(
            timesteps < 0, torch.full_like(alphas_cumprod, self.final_alpha_cumprod), alphas_cumprod
        )
        return alphas_cumprod.sqrt().float(), (1 - alphas_cumprod).sqrt().float()

    def to_x0_eps(
        self, model_output: torch.Tensor, x_t: torch.Tensor, timesteps: torch.Tensor, prediction_type: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Any model output (B, C, H, W) at x_t -> (x0_hat, eps_hat), both (B, C, H, W)."""
        alpha, sigma = (expand_like(v.to(x_t.device), x_t) for v in self.alpha_sigma(timesteps))
        if prediction_type == "epsilon":
            eps = model_output
            return (x_t - sigma * eps) / alpha, eps
        if prediction_type == "v_prediction":  # v = alpha eps - sigma x0 (Salimans & Ho 2022)
            return alpha * x_t - sigma * model_output, sigma * x_t + alpha * model_output
        if prediction_type == "sample":
            x0 = model_output
            return x0, (x_t - alpha * x0) / sigma
        if (
            prediction_type == "flow_prediction"
        ):  # velocity = eps - x0, as diffusers' FlowMatch schedulers step
            return x_t - sigma * model_output, x_t + alpha * model_output
        raise ValueError(f"unknown prediction_type {prediction_type!r}; valid: {', '.join(PREDICTION_TYPES)}")

    def ddim_step(self, x0: torch.Tensor, eps: torch.Tensor, timesteps_next: torch.Tensor) -> torch.Tensor:
        """Deterministic DDIM step to s: x_s = alpha_s x0 + sigma_s eps. (B, C, H, W)."""
        alpha, sigma = (expand_like(v.to(x0.device), x0) for v in self.alpha_sigma(timesteps_next))
        return alpha * x0 + sigma * eps

    def snr(self, timesteps: torch.Tensor) -> torch.Tensor:
        """Signal-to-noise ratio alpha_t^2 / sigma_t^2, (B,)."""
        alpha, sigma = self.alpha_sigma(timesteps)
        return alpha**2 / sigma**2


def solver_grid(num_train_timesteps: int, num_steps: int) -> tuple[list[int], list[int]]:
    """LCM's DDIM solver grid (diffusers' `DDIMSolver` in train_lcm_distill_sd_wds.py, the grid
    `LCMScheduler(original_inference_steps=num_steps)` samples on): the timesteps k - 1, 2k - 1, ...,
    num_steps * k - 1 with skip k = num_train_timesteps // num_steps, and each one's solver end point
    max(t - k, 0), as the script clamps it. 50 of 1000: (19, 39, ..., 999), ends (0, 19, ..., 979)."""
    skip = num_train_timesteps // num_steps
    timesteps = [(index + 1) * skip - 1 for index in range(num_steps)]
    return timesteps, [max(t - skip, 0) for t in timesteps]
