"""A sample's noise and trajectory depend on its (prompt, seed) only, not on the batch it ran in."""

import torch

from shared.noise import initial_noise
from shared.store import StoreReader
from teacher_cache.runner import run
from tests.capture_helpers import rows_by_sample_id, tiny_capture_config, write_prompts
from tests.tiny_models import save_tiny_sd_pipeline

PROMPTS = ["a red one on blue", "a blue two on red", "a green three on black", "a white four on cyan"]


def test_noise_of_a_seed_is_the_same_alone_and_in_a_batch():
    batch = initial_noise([11, 22, 33], (4, 8, 8), "cpu", torch.float32)  # (3, 4, 8, 8)
    alone = initial_noise([22], (4, 8, 8), "cpu", torch.float32)
    assert torch.equal(batch[1], alone[0]) and not torch.equal(batch[0], batch[1])


def test_same_prompt_and_seed_give_same_noise_and_trajectory_at_batch_size_1_and_4(tmp_path):
    teacher = save_tiny_sd_pipeline(tmp_path / "sd")
    prompts = write_prompts(tmp_path, PROMPTS)
    stores = {}
    for batch_size in (1, 4):
        config = tiny_capture_config(
            tmp_path / f"store_bs{batch_size}", teacher, prompts, batch_size=batch_size
        )
        run(config)
        stores[batch_size] = StoreReader(config.out)
    noise = {size: rows_by_sample_id(reader, "noise") for size, reader in stores.items()}
    trajectory = {size: rows_by_sample_id(reader, "trajectory") for size, reader in stores.items()}
    assert len(noise[1]) == len(PROMPTS) and noise[1].keys() == noise[4].keys()
    for sample_id in noise[1]:
        assert torch.equal(noise[1][sample_id], noise[4][sample_id])
        torch.testing.assert_close(trajectory[1][sample_id], trajectory[4][sample_id], rtol=1e-5, atol=1e-5)
