"""The coloured-digit dataset and prompt grammar (shared/digits.py). Run: pytest tests/test_digits.py"""

import numpy as np
import pytest

from shared.digits import (
    COLOUR_JITTER,
    COLOURS,
    DIGIT_WORDS,
    PALETTE,
    _digit_glyphs,
    all_prompts,
    heldout_prompts,
    make_images,
    parse_prompt,
    prompt_for,
    train_prompts,
)
from shared.errors import DistillCacheError


def test_make_images_is_deterministic_for_a_seed():
    images_a, prompts_a = make_images(64, seed=3)
    images_b, prompts_b = make_images(64, seed=3)
    images_c, prompts_c = make_images(64, seed=4)
    assert images_a.shape == (64, 32, 32, 3) and images_a.dtype == np.uint8
    assert np.array_equal(images_a, images_b) and prompts_a == prompts_b
    assert not np.array_equal(images_a, images_c) and prompts_a != prompts_c


def test_images_are_painted_in_their_prompt_colours():
    images, prompts = make_images(200, seed=0)
    for image, prompt in zip(images, prompts):
        digit, fg, bg = parse_prompt(prompt)
        corner = image[0, 0].astype(int)  # the glyph never reaches the corner
        assert np.abs(corner - PALETTE[bg]).max() <= COLOUR_JITTER + 1
        # The most foreground-like pixel is close to the foreground colour.
        distance_to_fg = np.abs(image.astype(int) - PALETTE[fg]).max(axis=-1)
        assert distance_to_fg.min() <= COLOUR_JITTER + 40


def test_make_images_cycles_given_prompts_and_splits_differ():
    wanted = ["a red seven on blue", "a white zero on black"]
    images, prompts = make_images(5, seed=0, split="heldout", prompts=wanted)
    assert prompts == wanted * 2 + wanted[:1]
    train_images, _ = make_images(5, seed=0, split="train", prompts=wanted)
    assert not np.array_equal(images, train_images)
    train_glyphs, heldout_glyphs = _digit_glyphs("train")[0], _digit_glyphs("heldout")[0]
    assert len(train_glyphs) + len(heldout_glyphs) == 1797 and 0.15 < len(heldout_glyphs) / 1797 < 0.25
    with pytest.raises(DistillCacheError, match="split"):
        make_images(2, seed=0, split="val")


def test_prompt_grammar_round_trips():
    assert prompt_for(7, "red", "blue") == "a red seven on blue"
    assert parse_prompt("a red seven on blue") == (7, "red", "blue")
    assert parse_prompt("  A Red  Seven on BLUE ") == (7, "red", "blue")
    for prompt in all_prompts():
        assert prompt_for(*parse_prompt(prompt)) == prompt


@pytest.mark.parametrize(
    "prompt",
    ["a red seven on red", "a purple seven on blue", "a red eleven on blue", "red seven on blue", ""],
)
def test_parse_prompt_rejects_prompts_outside_the_grammar(prompt):
    with pytest.raises(DistillCacheError, match="grammar"):
        parse_prompt(prompt)


def test_prompt_for_rejects_same_colours():
    with pytest.raises(DistillCacheError):
        prompt_for(3, "red", "red")


def test_heldout_prompts_are_a_fixed_tenth_and_leave_every_word_in_training():
    prompts = all_prompts()
    assert len(prompts) == len(set(prompts)) == 10 * len(COLOURS) * (len(COLOURS) - 1)
    heldout, train = heldout_prompts(), train_prompts()
    assert heldout == heldout_prompts()
    assert set(heldout).isdisjoint(train) and sorted(heldout + train) == sorted(prompts)
    assert 0.08 <= len(heldout) / len(prompts) <= 0.12
    parsed = [parse_prompt(p) for p in train]
    assert {d for d, _, _ in parsed} == set(range(len(DIGIT_WORDS)))
    assert {fg for _, fg, _ in parsed} == {bg for _, _, bg in parsed} == set(COLOURS)
