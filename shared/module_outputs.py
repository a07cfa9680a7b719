"""What a module's output is, as the store keeps it: the one rule phase one's feature hooks and phase
two's block-output hooks share (`features.<module>` = `module_output(module, module(...))`, cond half).

    module_output(down_block, down_block(...))    # (hidden_states, residuals): hidden_states
    module_output(joint_block, joint_block(...))  # (encoder_hidden_states, hidden_states): hidden_states

The rule, per block type: the image-token stream (the latents' stream), never the text stream.
- a tensor: itself; an output with `.sample` (a denoiser, a Transformer2DModel): `.sample`;
- a tuple: element 0 (UNet down blocks return (hidden_states, residuals); diffusers' attention with a
  joint processor returns (hidden_states, encoder_hidden_states));
- except the blocks of `TEXT_STREAM_FIRST`, which return (encoder_hidden_states, hidden_states):
  element 1. SD3's last JointTransformerBlock (context_pre_only) returns (None, hidden_states).
"""

import torch

from shared.errors import DistillCacheError

FEATURE_PREFIX = "features."  # store field of a module's output: features.<module name>

# diffusers blocks whose forward returns (encoder_hidden_states, hidden_states): the image stream is
# element 1 (read in diffusers 0.42: models/attention.py, models/transformers/transformer_flux.py).
TEXT_STREAM_FIRST = frozenset({"JointTransformerBlock", "FluxTransformerBlock", "FluxSingleTransformerBlock"})


def first_tensor(output) -> torch.Tensor:
    """The main tensor of a module's output: itself, element 0 of a tuple, or `.sample`."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output:
        return first_tensor(output[0])
    if hasattr(output, "sample"):
        return output.sample
    raise DistillCacheError(f"cannot find a tensor in a module output of type {type(output).__name__}")


def module_output(module: torch.nn.Module, output) -> torch.Tensor:
    """The image-token stream of `module`'s output (the rule in the module docstring)."""
    if any(cls.__name__ in TEXT_STREAM_FIRST for cls in type(module).__mro__):
        return first_tensor(output[1])
    return first_tensor(output)
