"""What a module's output is, as the store keeps it: the one rule phase one's feature hooks and phase
two's block-output hooks share (`features.<module>` = `first_tensor(module(...))`, cond half).

    first_tensor(down_block(...))   # a down block returns (hidden_states, residuals): hidden_states
"""

import torch

from shared.errors import DistillCacheError

FEATURE_PREFIX = "features."  # store field of a module's output: features.<module name>


def first_tensor(output) -> torch.Tensor:
    """The main tensor of a module's output: itself, element 0 of a tuple, or `.sample`."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return first_tensor(output[0])
    if hasattr(output, "sample"):
        return output.sample
    raise DistillCacheError(f"cannot find a tensor in a module output of type {type(output).__name__}")
