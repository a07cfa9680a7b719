"""Select denoiser submodules by glob for feature capture: `down_blocks.*`, `mid_block`, `up_blocks.1`.

A `*` matches within one dotted name segment (`down_blocks.*` is `down_blocks.0`, not
`down_blocks.0.resnets.0`); `**` matches across segments. Every glob must match some module.
"""

import re
from collections.abc import Sequence

from torch import nn

from shared.errors import DistillCacheError


def glob_to_regex(glob: str) -> re.Pattern:
    parts = re.split(r"(\*\*|\*)", glob)
    pattern = "".join({"**": ".*", "*": r"[^.]*"}.get(part, re.escape(part)) for part in parts)
    return re.compile(pattern + r"\Z")


def match_feature_modules(denoiser: nn.Module, globs: Sequence[str]) -> dict[str, nn.Module]:
    """{module name: module} for every named submodule matching one of `globs`, in model order."""
    named = [(name, module) for name, module in denoiser.named_modules() if name]
    chosen: dict[str, nn.Module] = {}
    for glob in globs:
        regex = glob_to_regex(glob)
        matches = [(name, module) for name, module in named if regex.match(name)]
        if not matches:
            top_level = ", ".join(name for name, _ in denoiser.named_children())
            raise DistillCacheError(
                f"--features glob {glob!r} matches no module of {type(denoiser).__name__} "
                f"(its top-level modules: {top_level}); fix the glob or leave --features empty"
            )
        chosen.update(matches)
    order = {name: index for index, (name, _) in enumerate(named)}
    return dict(sorted(chosen.items(), key=lambda item: order[item[0]]))
