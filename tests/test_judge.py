"""The committed judge (shared/judge.py, shared/judge_weights/). Run: pytest tests/test_judge.py"""

import numpy as np
import pytest

from shared.digits import all_prompts, make_images
from shared.errors import DistillCacheError
from shared.judge import frechet_distance, load_judge


@pytest.fixture(scope="module")
def judge():
    return load_judge("cpu")


@pytest.fixture(scope="module")
def real_heldout():
    return make_images(400, seed=7, split="heldout")


def test_judge_reads_real_heldout_digits(judge, real_heldout):
    images, prompts = real_heldout
    accuracy = judge.attribute_accuracy(images, prompts)
    assert min(accuracy["digit"], accuracy["fg"], accuracy["bg"]) >= 0.97
    assert judge.adherence(images, prompts) >= 0.95


def test_judge_scores_noise_poorly(judge):
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, size=(200, 32, 32, 3), dtype=np.uint8)
    prompts = [all_prompts()[i] for i in rng.integers(len(all_prompts()), size=200)]
    assert judge.adherence(noise, prompts) < 0.1


def test_float_and_uint8_inputs_and_other_sizes_agree(judge, real_heldout):
    images, _ = real_heldout
    as_uint8 = judge.predict(images[:50])
    as_float = judge.predict(images[:50].astype(np.float32) / 255.0)
    bigger = judge.predict(np.repeat(np.repeat(images[:50], 2, axis=1), 2, axis=2))  # [50, 64, 64, 3]
    for a, b, c in zip(as_uint8, as_float, bigger):
        assert np.array_equal(a, b)
        assert (a == c).mean() >= 0.9


def test_judge_rejects_bad_shapes_and_prompt_counts(judge, real_heldout):
    images, prompts = real_heldout
    with pytest.raises(DistillCacheError, match="N, H, W, 3"):
        judge.predict(images[:, :, :, 0])
    with pytest.raises(DistillCacheError, match="one prompt per image"):
        judge.adherence(images[:3], prompts[:2])


def test_frechet_distance_of_a_shift_is_its_squared_length():
    features = np.random.default_rng(0).normal(size=(500, 8))
    assert frechet_distance(features, features) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(features, features + 3.0) == pytest.approx(8 * 9.0, rel=1e-6)


def test_frechet_distance_matches_the_sqrtm_formula():
    from scipy import linalg

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 12)), rng.normal(size=(400, 12)) @ rng.normal(size=(12, 12)) + 1.0
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    expected = (
        ((a.mean(0) - b.mean(0)) ** 2).sum()
        + np.trace(cov_a + cov_b)
        - 2 * np.trace(linalg.sqrtm(cov_a @ cov_b).real)
    )
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)


def test_fd_to_real_separates_real_digits_from_noise(judge, real_heldout):
    images, _ = real_heldout
    noise = np.random.default_rng(1).integers(0, 256, size=(400, 32, 32, 3), dtype=np.uint8)
    real_fd, noise_fd = judge.fd_to_real(images, n_real=400), judge.fd_to_real(noise, n_real=400)
    assert real_fd < noise_fd / 10


def test_missing_weights_say_how_to_train(tmp_path):
    with pytest.raises(DistillCacheError, match="train_judge"):
        load_judge(path=tmp_path)
