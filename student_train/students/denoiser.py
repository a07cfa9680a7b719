"""The teacher's denoiser, alone: load its weights and call it with replayed conditioning.

Phase two loads only the denoiser (`unet/` or `transformer/` of the teacher the store's `teacher`
record names, checked against the fingerprint's `denoiser_hash`) — never the text encoders, the VAE
or the pipeline. `load_denoiser` lives in shared/teacher.py (phase one computes the same digest) and
is re-exported here. Conditioning comes from the store (`cond.encoder_hidden_states`,
`cond.added_cond_kwargs.text_embeds`, ...), nested back into the kwargs the pipeline passed:

    model = load_denoiser(reader.teacher["source"], "unet", expected_digest=reader.fingerprint["denoiser_hash"])
    output = call_denoiser(model, x_t, timesteps, cond, guidance_w=None)   # (B, C, H, W)
"""

import torch
from diffusers import UNet2DConditionModel

from shared.teacher import load_denoiser

__all__ = [
    "call_denoiser",
    "concat_halves",
    "guidance_scale_embedding",
    "load_denoiser",
    "nest_conditioning",
    "unwrap",
]


def guidance_scale_embedding(w: torch.Tensor, embedding_dim: int) -> torch.Tensor:
    """Sinusoidal embedding of the guidance w (B,) -> (B, embedding_dim), as diffusers' LCM pipelines
    compute it (`get_guidance_scale_embedding`, after VDM): the `timestep_cond` of a w-conditioned UNet."""
    w = w.float() * 1000.0
    half_dim = embedding_dim // 2
    frequencies = torch.exp(
        torch.arange(half_dim, dtype=torch.float32, device=w.device)
        * -(torch.log(torch.tensor(10000.0)) / (half_dim - 1))
    )
    angles = w[:, None] * frequencies[None, :]  # (B, half_dim)
    embedding = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if embedding_dim % 2 == 1:
        embedding = torch.nn.functional.pad(embedding, (0, 1))
    return embedding


def nest_conditioning(flat: dict[str, torch.Tensor]) -> dict:
    """{"encoder_hidden_states": t, "added_cond_kwargs.text_embeds": u} -> the kwargs dict, nested."""
    kwargs: dict = {}
    for name, value in flat.items():
        *parents, leaf = name.split(".")
        node = kwargs
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return kwargs


def concat_halves(first: dict, second: dict) -> dict:
    """Nested kwargs of two halves joined along the batch axis, `first` first (CFG in diffusers'
    order: uncond, cond)."""
    return {
        key: concat_halves(value, second[key]) if isinstance(value, dict) else torch.cat([value, second[key]])
        for key, value in first.items()
    }


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DDP / compile wrapper (its `.config` is what we need)."""
    while hasattr(model, "module"):
        model = model.module
    return getattr(model, "_orig_mod", model)


def call_denoiser(
    model: torch.nn.Module,
    x_t: torch.Tensor,
    timesteps: torch.Tensor,
    cond: dict,
    guidance_w: torch.Tensor | None = None,
) -> torch.Tensor:
    """Raw model output (eps / v / x0 / velocity) for x_t (B, C, H, W) at timesteps (B,).

    `cond` holds the nested conditioning kwargs; a w-conditioned UNet (`time_cond_proj_dim`) gets
    `timestep_cond` = the embedding of guidance_w (B,) in the Imagen convention (pipeline scale - 1).
    """
    config = unwrap(model).config
    kwargs = dict(cond)
    embedding_dim = getattr(config, "time_cond_proj_dim", None)
    if embedding_dim:
        assert guidance_w is not None, "a w-conditioned denoiser needs guidance_w"
        kwargs["timestep_cond"] = guidance_scale_embedding(guidance_w, embedding_dim).to(x_t.dtype)
    if "encoder_hidden_states" in kwargs:
        kwargs["encoder_hidden_states"] = kwargs["encoder_hidden_states"].to(x_t.dtype)
    if isinstance(unwrap(model), UNet2DConditionModel):
        return model(x_t, timesteps, **kwargs, return_dict=False)[0]
    return model(hidden_states=x_t, timestep=timesteps, **kwargs, return_dict=False)[0]  # transformers
