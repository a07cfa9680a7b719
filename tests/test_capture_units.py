"""Small pure pieces of phase one: module globs, feature steps, previews, CLI lists, rank slices."""

import pytest
import torch
from torch import nn

from shared.config_flags import comma_list
from shared.errors import DistillCacheError
from teacher_cache.config import CaptureConfig, evenly_spaced_steps
from teacher_cache.feature_modules import match_feature_modules
from teacher_cache.preview import preview_shape, to_previews
from teacher_cache.runner import slice_for_rank, with_resolved_guidance


def blocks() -> nn.Module:
    model = nn.Module()
    model.down_blocks = nn.ModuleList([nn.Sequential(nn.Identity(), nn.Identity()) for _ in range(2)])
    model.mid_block = nn.Identity()
    return model


def test_a_star_stays_within_one_name_segment_and_two_stars_cross_them():
    assert list(match_feature_modules(blocks(), ["down_blocks.*"])) == ["down_blocks.0", "down_blocks.1"]
    assert list(match_feature_modules(blocks(), ["down_blocks.**"])) == [
        "down_blocks.0",
        "down_blocks.0.0",
        "down_blocks.0.1",
        "down_blocks.1",
        "down_blocks.1.0",
        "down_blocks.1.1",
    ]
    with pytest.raises(DistillCacheError, match="matches no module.*down_blocks, mid_block"):
        match_feature_modules(blocks(), ["mid_block", "up_blocks.*"])


def test_default_feature_steps_are_evenly_spaced_with_both_ends():
    assert evenly_spaced_steps(50, 4) == (0, 16, 33, 49)
    assert evenly_spaced_steps(3, 4) == (0, 1, 2)


def test_previews_are_downscaled_uint8_images_never_upscaled():
    assert preview_shape(1024, 768, 64) == (64, 48) and preview_shape(32, 32, 64) == (32, 32)
    images = torch.rand(2, 3, 32, 16)  # (B, 3, H, W) in [0, 1]
    previews = to_previews(images, 16)
    assert previews.shape == (2, 16, 8, 3) and previews.dtype == torch.uint8


def test_cli_lists_and_rank_slices():
    assert comma_list(" a, b ,c") == ("a", "b", "c") and comma_list("none") == () == comma_list("")
    jobs = list(range(7))
    slices = [slice_for_rank(jobs, rank, 3) for rank in range(3)]
    assert sorted(sum(slices, [])) == jobs and all(
        set(a).isdisjoint(b) for a in slices for b in slices if a is not b
    )


def test_default_guidance_is_the_teacher_folders_recommendation(tmp_path):
    (tmp_path / "teacher_eval.json").write_text('{"recommended_guidance_scale": 3.0}')
    assert with_resolved_guidance(CaptureConfig(out="x", teacher=str(tmp_path))).guidance == 3.0
    assert with_resolved_guidance(CaptureConfig(out="x", teacher=str(tmp_path), guidance=7.5)).guidance == 7.5
    assert with_resolved_guidance(CaptureConfig(out="x", teacher=str(tmp_path / "none"))).guidance == 5.0
