"""Generic capture of one diffusers pipeline call: hooks on the denoiser and the step-end callback.

    with CaptureHooks(denoiser, feature_modules, feature_steps, feature_dtype) as hooks:
        hooks.start(batch_size, cfg)
        pipe(..., latents=noise, callback_on_step_end=hooks.on_step_end)
        record = hooks.finish(initial_latents)        # a StepRecord of stacked tensors

        hooks.start(batch_size, cfg, first_call_only=True)     # conditioning only: the pipeline is
        record = hooks.run_to_first_call(lambda: pipe(...), pipe.scheduler)   # stopped before the denoiser

Nothing here knows a model family. The pipeline is observed, never forked:
- a forward hook with kwargs on `pipe.unet` / `pipe.transformer` sees the exact arguments of every
  denoiser call and its output; under CFG its batch is [uncond; cond] (diffusers' `chunk(2)` order);
- forward hooks on the chosen submodules keep their output (cond half) at the feature steps;
- `callback_on_step_end` keeps the latents after every step and advances the step counter;
- the step-0 call's arguments are kept whole (`StepRecord.first_call`), so the denoiser can be called
  again on other latents and timesteps with exactly the conditioning the pipeline passed (noised points);
- with `first_call_only`, a forward pre-hook records that call and stops the pipeline before the
  denoiser runs: the conditioning of a batch for the price of its text encoding.
Outside start() ... finish() the hooks do nothing, so the denoiser can be called directly.
Tensors stay on the teacher's device until the batch ends (no per-step host sync).
"""

import inspect
from dataclasses import dataclass, field

import torch
from torch import nn

from shared.errors import DistillCacheError
from shared.module_outputs import first_tensor, module_output

TIMESTEP_ARGUMENT = "timestep"


class FirstCallSeen(Exception):
    """Raised by the pre-hook to stop a first_call_only pipeline call before its denoiser runs."""


@dataclass
class StepRecord:
    """What one pipeline call computed, for a batch of B samples; S steps, latents (C, H, W)."""

    timesteps: list[float]  # S values passed to the denoiser
    trajectory: torch.Tensor | None  # (B, S + 1, C, H, W); [:, 0] = latents entering step 0
    out_cond: torch.Tensor | None  # (B, S, C, H, W) raw denoiser output, cond half
    out_uncond: torch.Tensor | None  # (B, S, C, H, W) uncond half; None without CFG
    cond: dict[str, torch.Tensor]  # kwarg name -> (B, ...) at step 0, cond half
    uncond: dict[str, torch.Tensor]  # same names, uncond half; empty without CFG
    first_call: dict  # every argument of the step-0 denoiser call, by parameter name (batch 2B under CFG)
    features: dict[str, torch.Tensor] = field(default_factory=dict)  # module -> (B, F, ...)
    # trajectory / out_cond are None for a first_call_only record (the pipeline was stopped)


def flat_tensor_kwargs(arguments: dict, prefix: str = "") -> dict[str, torch.Tensor]:
    """Tensors among the arguments, nested dicts flattened with dots: 'added_cond_kwargs.time_ids'."""
    flat: dict[str, torch.Tensor] = {}
    for name, value in arguments.items():
        if isinstance(value, torch.Tensor):
            flat[prefix + name] = value
        elif isinstance(value, dict):
            flat.update(flat_tensor_kwargs(value, prefix=f"{prefix}{name}."))
    return flat


def forward_parameter_names(module: nn.Module) -> list[str]:
    """Names of the module's forward parameters, in order (without self)."""
    return [name for name in inspect.signature(type(module).forward).parameters if name != "self"]


def check_first_order(scheduler) -> None:
    """Refuse a scheduler whose steps take several denoiser calls (Heun, KDPM2: `order` 2): each loop
    iteration of the pipeline is then half a step, its timesteps repeat, and the cached grid would not
    be the sampler's grid that phase two assumes."""
    order = int(getattr(scheduler, "order", 1))
    if order > 1:
        raise DistillCacheError(
            f"the teacher's scheduler {type(scheduler).__name__} is of order {order} (several denoiser calls "
            "per step); capture needs a first-order one: save the pipeline with pipe.scheduler = "
            "DDIMScheduler.from_config(pipe.scheduler.config) (or Euler / FlowMatchEuler) and capture that"
        )


class CaptureHooks:
    """Installs the hooks for its `with` block; records one pipeline call between start() and finish()."""

    def __init__(
        self,
        denoiser: nn.Module,
        feature_modules: dict[str, nn.Module] | None = None,
        feature_steps: tuple[int, ...] = (),
        feature_dtype: torch.dtype = torch.float16,
    ):
        self.denoiser = denoiser
        self.parameter_names = forward_parameter_names(denoiser)
        self.latent_argument = self.parameter_names[0]  # `sample` (UNet) / `hidden_states` (transformer)
        self.feature_modules = feature_modules or {}
        self.feature_steps = tuple(feature_steps)
        self.feature_dtype = feature_dtype
        self._handles: list = []
        self.batch_size = 0
        self.active = False  # between start() and finish(): record what the pipeline does
        self.first_call_only = False

    def __enter__(self) -> "CaptureHooks":
        self._handles.append(self.denoiser.register_forward_pre_hook(self._before_denoiser, with_kwargs=True))
        self._handles.append(self.denoiser.register_forward_hook(self._on_denoiser, with_kwargs=True))
        for name, module in self.feature_modules.items():
            self._handles.append(module.register_forward_hook(self._feature_hook(name)))
        return self

    def __exit__(self, *exc_info) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def start(self, batch_size: int, cfg: bool, first_call_only: bool = False) -> None:
        """Get ready for one pipeline call on `batch_size` prompts (the denoiser sees 2x under CFG);
        `first_call_only`: stop it at its first denoiser call (then use run_to_first_call)."""
        self.batch_size, self.cfg = batch_size, cfg
        self.active, self.first_call_only = True, first_call_only
        self.first_call: dict = {}
        self.step, self.calls_this_step = 0, 0
        self.timesteps: list[torch.Tensor] = []
        self.latents_after_step: list[torch.Tensor] = []  # S x (B, C, H, W)
        self.outputs: list[tuple[torch.Tensor, torch.Tensor | None]] = []  # S x (cond, uncond)
        self.cond: dict[str, torch.Tensor] = {}
        self.uncond: dict[str, torch.Tensor] = {}
        self.feature_outputs: dict[str, list[torch.Tensor]] = {name: [] for name in self.feature_modules}

    def _halves(self, tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(cond, uncond) halves of a denoiser-batch tensor: [uncond; cond] under CFG."""
        if not self.cfg:
            return tensor, None
        return tensor[self.batch_size :], tensor[: self.batch_size]

    def _denoiser_batch(self) -> int:
        return 2 * self.batch_size if self.cfg else self.batch_size

    def _before_denoiser(self, module, args, kwargs) -> None:
        """first_call_only: keep the call's arguments and conditioning, then stop the pipeline."""
        if self.active and self.first_call_only:
            self.first_call = dict(zip(self.parameter_names, args)) | kwargs
            self._record_conditioning(self.first_call)
            raise FirstCallSeen

    def run_to_first_call(self, call_pipeline, scheduler) -> StepRecord:
        """Run `call_pipeline()` up to its first denoiser call (started with first_call_only) and return
        that call's conditioning; timesteps: those the pipeline set on its `scheduler` before the call."""
        try:
            call_pipeline()
        except FirstCallSeen:
            pass
        self.active = False
        if not self.first_call:
            raise DistillCacheError("the pipeline never called its denoiser; check --steps")
        return StepRecord(
            timesteps=[float(t) for t in torch.as_tensor(scheduler.timesteps).float().cpu()],
            trajectory=None,
            out_cond=None,
            out_uncond=None,
            cond=self.cond,
            uncond=self.uncond,
            first_call=self.first_call,
        )

    def _on_denoiser(self, module, args, kwargs, output) -> None:
        if not self.active:
            return
        self.calls_this_step += 1
        if self.calls_this_step > 1:
            raise DistillCacheError(
                f"the pipeline called {type(module).__name__} twice in step {self.step}; capture supports "
                f"pipelines with one denoiser call per step (no skip-layer guidance, no 2nd-order schedulers)"
            )
        arguments = dict(zip(self.parameter_names, args)) | kwargs
        out = first_tensor(output)  # (B or 2B, C, H, W)
        if out.shape[0] != self._denoiser_batch():
            raise DistillCacheError(
                f"the denoiser saw a batch of {out.shape[0]} for {self.batch_size} prompts "
                f"({'with' if self.cfg else 'without'} CFG); expected {self._denoiser_batch()}"
            )
        timestep = arguments.get(TIMESTEP_ARGUMENT)
        self.timesteps.append(torch.as_tensor(timestep).detach().flatten()[0].clone())
        cond_out, uncond_out = self._halves(out.detach())
        self.outputs.append((cond_out.clone(), None if uncond_out is None else uncond_out.clone()))
        if self.step == 0:
            self.first_call = arguments
            self._record_conditioning(arguments)

    def _record_conditioning(self, arguments: dict) -> None:
        """Both halves of every batched tensor kwarg except the latents and the timestep."""
        skip = {self.latent_argument, TIMESTEP_ARGUMENT}
        tensors = flat_tensor_kwargs({k: v for k, v in arguments.items() if k not in skip})
        for name, tensor in tensors.items():
            if tensor.ndim == 0 or tensor.shape[0] != self._denoiser_batch():
                continue  # not per-sample (e.g. shared position ids): not part of a row
            cond, uncond = self._halves(tensor.detach())
            self.cond[name] = cond.clone()
            if uncond is not None:
                self.uncond[name] = uncond.clone()

    def _feature_hook(self, name: str):
        def on_feature(module, args, output) -> None:
            if self.active and self.step in self.feature_steps and self.calls_this_step == 0:
                cond, _ = self._halves(module_output(module, output).detach())
                self.feature_outputs[name].append(cond.to(self.feature_dtype, copy=True))

        return on_feature

    def on_step_end(self, pipe, step: int, timestep, callback_kwargs: dict) -> dict:
        """`callback_on_step_end`: keep the latents after this step; change nothing."""
        if self.calls_this_step != 1:
            raise DistillCacheError(f"step {step} made {self.calls_this_step} denoiser calls; expected one")
        self.latents_after_step.append(callback_kwargs["latents"].detach().clone())
        self.step, self.calls_this_step = self.step + 1, 0
        return {}

    def finish(self, initial_latents: torch.Tensor) -> StepRecord:
        """Stack what was recorded; `initial_latents` (B, C, H, W) are the latents entering step 0."""
        self.active = False
        if not self.latents_after_step:
            raise DistillCacheError("the pipeline ran no denoising step; check --steps")
        trajectory = torch.stack([initial_latents, *self.latents_after_step], dim=1)  # (B, S+1, C, H, W)
        out_cond = torch.stack([cond for cond, _ in self.outputs], dim=1)  # (B, S, C, H, W)
        out_uncond = torch.stack([uncond for _, uncond in self.outputs], dim=1) if self.cfg else None
        for name, outputs in self.feature_outputs.items():
            if len(outputs) != len(self.feature_steps):
                raise DistillCacheError(
                    f"features of {name} were seen at {len(outputs)} of the {len(self.feature_steps)} "
                    f"--feature-steps {list(self.feature_steps)}; give steps below the pipeline's step count"
                )
        features = {name: torch.stack(outputs, dim=1) for name, outputs in self.feature_outputs.items()}
        return StepRecord(
            timesteps=[float(t) for t in torch.stack(self.timesteps).float().cpu()],
            trajectory=trajectory,
            out_cond=out_cond,
            out_uncond=out_uncond,
            cond=self.cond,
            uncond=self.uncond,
            first_call=self.first_call,
            features=features,
        )
