"""Paired metrics: identical images are perfect, noise is poor, a known error gives a known PSNR."""

import numpy as np
import pytest
import torch

from student_train.eval.image_metrics import mse, psnr, to_unit_float


def test_identical_images_have_zero_mse_and_infinite_psnr():
    images = np.random.default_rng(0).integers(0, 256, size=(3, 8, 8, 3), dtype=np.uint8)
    assert mse(to_unit_float(images), to_unit_float(images)).tolist() == [0.0, 0.0, 0.0]
    assert torch.isinf(psnr(to_unit_float(images), to_unit_float(images))).all()


def test_noise_against_an_image_scores_low_psnr():
    rng = np.random.default_rng(1)
    image = np.full((2, 16, 16, 3), 128, dtype=np.uint8)
    noise = rng.integers(0, 256, size=image.shape, dtype=np.uint8)
    assert (psnr(to_unit_float(image), to_unit_float(noise)) < 12.0).all()  # uniform noise: ~10.8 dB


def test_known_error_gives_known_psnr_per_sample():
    a = torch.zeros(2, 4, 4)
    b = torch.stack([torch.full((4, 4), 0.1), torch.full((4, 4), 0.01)])  # MSE 1e-2 and 1e-4
    assert mse(a, b).tolist() == pytest.approx([1e-2, 1e-4])
    assert psnr(a, b).tolist() == pytest.approx([20.0, 40.0])
    assert psnr(a * 255, b * 255, data_range=255.0).tolist() == pytest.approx([20.0, 40.0])


def test_shapes_must_match():
    with pytest.raises(ValueError, match="different shapes"):
        mse(torch.zeros(2, 3), torch.zeros(2, 4))
