"""The coloured-digit dataset of the embedded teacher, and its prompt grammar.

Images are scikit-learn's bundled 8x8 `load_digits`, upsampled smoothly (bicubic) to a 24x24 glyph,
placed on a 32x32 RGB canvas with a small random shift, painted in a foreground colour over a
background colour from a fixed palette (fg != bg). Prompts read "a {fg} {digit word} on {bg}":

    >>> from shared.digits import make_images, prompt_for, parse_prompt
    >>> images, prompts = make_images(4, seed=0)       # uint8 [4, 32, 32, 3], list of 4 prompts
    >>> prompt_for(7, "red", "blue")
    'a red seven on blue'
    >>> parse_prompt("a red seven on blue")
    (7, 'red', 'blue')

Two disjoint splits of the sklearn digits: `split="train"` (teacher and judge training) and
`split="heldout"` (the judge's real reference images for FD and its accuracy check). Separately, a
fixed ~10 % of the prompt combinations are `heldout_prompts()`: the teacher sees every combination,
phase-one caches for training use `train_prompts()`, students are evaluated on the held-out ones.
Everything is deterministic for a seed.
"""

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from shared.errors import DistillCacheError

IMAGE_SIZE = 32
GLYPH_SIZE = 24  # the 8x8 digit is upsampled to 24x24, then shifted by up to MAX_SHIFT pixels
MAX_SHIFT = 2
COLOUR_JITTER = 12  # +- per RGB channel, per image, so colours are names rather than exact values

# Well separated: the corners of the RGB cube, pulled slightly inwards.
PALETTE: dict[str, tuple[int, int, int]] = {
    "black": (20, 20, 20),
    "white": (235, 235, 235),
    "red": (220, 30, 30),
    "green": (30, 200, 40),
    "blue": (35, 55, 225),
    "yellow": (235, 220, 35),
    "magenta": (215, 40, 215),
    "cyan": (40, 215, 220),
}
COLOURS: tuple[str, ...] = tuple(PALETTE)
DIGIT_WORDS: tuple[str, ...] = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
)
HELDOUT_FRACTION = 0.1
HELDOUT_SEED = 20240607
SPLITS = ("train", "heldout")


def prompt_for(digit: int, fg: str, bg: str) -> str:
    """'a red seven on blue' for (7, 'red', 'blue')."""
    if not 0 <= int(digit) <= 9 or fg not in PALETTE or bg not in PALETTE or fg == bg:
        raise DistillCacheError(
            f"no prompt for digit={digit!r} fg={fg!r} bg={bg!r}; digits are 0-9, colours are "
            f"{', '.join(COLOURS)} and fg must differ from bg"
        )
    return f"a {fg} {DIGIT_WORDS[int(digit)]} on {bg}"


def parse_prompt(prompt: str) -> tuple[int, str, str]:
    """(digit, fg, bg) of a prompt of the grammar 'a {fg} {digit word} on {bg}'."""
    words = prompt.strip().lower().split()
    if (
        len(words) != 5
        or words[0] != "a"
        or words[3] != "on"
        or words[1] not in PALETTE
        or words[2] not in DIGIT_WORDS
        or words[4] not in PALETTE
        or words[1] == words[4]
    ):
        raise DistillCacheError(
            f"prompt {prompt!r} is outside the digit grammar; write 'a {{fg}} {{digit}} on {{bg}}' "
            f"with digit in {'/'.join(DIGIT_WORDS)}, two different colours from {', '.join(COLOURS)}"
        )
    return DIGIT_WORDS.index(words[2]), words[1], words[4]


def all_prompts() -> list[str]:
    """Every digit x (fg, bg) pair with fg != bg: 10 * 8 * 7 = 560 prompts, digit-major order."""
    return [prompt_for(d, fg, bg) for d in range(10) for fg in COLOURS for bg in COLOURS if fg != bg]


@lru_cache(maxsize=1)
def _heldout_set() -> frozenset[str]:
    prompts = all_prompts()
    order = np.random.default_rng(HELDOUT_SEED).permutation(len(prompts))
    heldout = frozenset(prompts[i] for i in order[: round(HELDOUT_FRACTION * len(prompts))])
    rest = [parse_prompt(p) for p in prompts if p not in heldout]
    # Every digit and every colour (as fg and as bg) must still be seen in the training prompts.
    assert {d for d, _, _ in rest} == set(range(10))
    assert {fg for _, fg, _ in rest} == {bg for _, _, bg in rest} == set(COLOURS)
    return heldout


def heldout_prompts() -> list[str]:
    """A fixed ~10 % of `all_prompts()` (56 of 560), for students' unseen-prompt evaluation."""
    return [p for p in all_prompts() if p in _heldout_set()]


def train_prompts() -> list[str]:
    """`all_prompts()` minus `heldout_prompts()`, same order."""
    return [p for p in all_prompts() if p not in _heldout_set()]


@lru_cache(maxsize=2)
def _digit_glyphs(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Smooth 24x24 glyphs in [0, 1] of one split of sklearn's digits: (glyphs [M, 24, 24], labels [M])."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    index = np.arange(len(digits.target))
    keep = index % 5 == 4 if split == "heldout" else index % 5 != 4  # 359 held out, 1438 train
    small = torch.from_numpy(digits.images[keep] / 16.0).float()[:, None]  # [M, 1, 8, 8]
    glyphs = F.interpolate(small, size=(GLYPH_SIZE, GLYPH_SIZE), mode="bicubic", align_corners=False)
    return glyphs[:, 0].clamp(0, 1).numpy(), digits.target[keep].copy()


def make_images(
    n: int, seed: int, split: str = "train", prompts: Sequence[str] | None = None
) -> tuple[np.ndarray, list[str]]:
    """n coloured digits and their prompts, deterministic for (n, seed, split, prompts).

    Prompts are drawn uniformly from `all_prompts()`, or cycled through `prompts` when given.
    Returns (images uint8 [n, 32, 32, 3], prompts list of n str).
    """
    if split not in SPLITS:
        raise DistillCacheError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    if prompts is None:
        pool = all_prompts()
        chosen = [pool[i] for i in rng.integers(len(pool), size=n)]
    else:
        chosen = [prompts[i % len(prompts)] for i in range(n)]
    glyphs, labels = _digit_glyphs(split)
    by_digit = [np.flatnonzero(labels == d) for d in range(10)]
    palette = np.array([PALETTE[c] for c in COLOURS], dtype=np.float32)  # [8, 3]

    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    border = (IMAGE_SIZE - GLYPH_SIZE) // 2
    for i, prompt in enumerate(chosen):
        digit, fg, bg = parse_prompt(prompt)
        glyph = glyphs[rng.choice(by_digit[digit])]  # [24, 24]
        dy, dx = rng.integers(-MAX_SHIFT, MAX_SHIFT + 1, size=2)
        mask = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
        mask[border + dy : border + dy + GLYPH_SIZE, border + dx : border + dx + GLYPH_SIZE] = glyph
        jitter = rng.uniform(-COLOUR_JITTER, COLOUR_JITTER, size=(2, 3))
        fg_rgb = palette[COLOURS.index(fg)] + jitter[0]
        bg_rgb = palette[COLOURS.index(bg)] + jitter[1]
        image = mask[..., None] * fg_rgb + (1.0 - mask[..., None]) * bg_rgb  # [32, 32, 3]
        images[i] = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return images, chosen
