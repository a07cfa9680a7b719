"""blockkd loss: zero for the teacher itself, a hand-computed value, the task target, features aligned
by name, and refusals (no features, other block shapes)."""

import copy

import pytest
import torch

from shared.errors import DistillCacheError
from shared.schedule import NoiseSchedule
from student_train.data.randomness import SampleRandom
from student_train.losses.blockkd import BlockKdLoss, slice_conditioning, task_target
from student_train.losses.distance import Distance
from student_train.sampling import cached_grid
from student_train.students import build_student
from student_train.students.block_outputs import aligned_blocks
from student_train.students.denoiser import load_denoiser
from student_train.students.student import Origin
from tests.student_store_fixture import (  # noqa: F401 (autouse)
    capture_batch,
    one_torch_thread,
    shared_capture,
    tiny_train_config,
)
from tests.tiny_models import tiny_unet


def schedule_of(capture) -> NoiseSchedule:
    scheduler = capture.settings["scheduler"]
    return NoiseSchedule.from_scheduler_config(scheduler["config"], scheduler["class"])


def blockkd_loss(capture, lambda_task=1.0, lambda_out=1.0, lambda_feat=1.0) -> BlockKdLoss:
    settings = capture.settings
    return BlockKdLoss(
        schedule_of(capture),
        cached_grid(settings, schedule_of(capture)),
        settings["feature_steps"],
        settings["feature_modules"],
        settings["prediction_type"],
        Distance("l2"),
        lambda_task=lambda_task,
        lambda_out=lambda_out,
        lambda_feat=lambda_feat,
    )


def student_of(capture, kind="full", **config):
    teacher = load_denoiser(str(capture.teacher_dir))
    return build_student(kind, teacher, tiny_train_config("unused", "unused", **config))


def test_loss_is_zero_for_the_teacher_itself_without_the_task_term_and_positive_when_perturbed():
    capture = shared_capture(features=True)
    batch = capture_batch(capture)
    loss = blockkd_loss(capture, lambda_task=0.0)
    student = student_of(capture)
    random = SampleRandom(3, 0, batch.sample_ids)
    assert loss(student, batch, random, step=0).max().item() < 1e-10  # outputs and all 5 blocks match
    with torch.no_grad():
        student.model.up_blocks[1].resnets[0].conv2.weight.add_(0.01)  # conv2: no norm after it
    output_only = blockkd_loss(capture, lambda_task=0.0, lambda_feat=0.0)
    assert output_only(student, batch, SampleRandom(3, 0, batch.sample_ids), step=0).min().item() > 1e-6
    assert loss(student, batch, SampleRandom(3, 0, batch.sample_ids), step=0).min().item() > 1e-6


def test_loss_value_by_hand_for_a_pruned_student():
    capture = shared_capture(features=True)
    settings = capture.settings
    batch = capture_batch(capture, [0, 1, 2])
    student = student_of(capture, "pruned", prune="small")
    loss = blockkd_loss(capture, lambda_task=0.3, lambda_out=0.5, lambda_feat=0.7)
    got = loss(student, batch, SampleRandom(5, 1, batch.sample_ids), step=0)

    # By hand: the same draws, the student's blocks through torch's own hooks, one sample at a time.
    j = SampleRandom(5, 1, batch.sample_ids).randint(0, len(settings["feature_steps"]))
    outputs = {}
    for name in ("down_blocks.0", "down_blocks.1", "up_blocks.0", "up_blocks.1"):  # small: no mid block
        student.model.get_submodule(name).register_forward_hook(
            lambda module, args, output, name=name: outputs.__setitem__(
                name, output[0] if isinstance(output, tuple) else output
            )
        )
    alphas_cumprod = schedule_of(capture).alphas_cumprod
    expected = []
    for b in range(3):
        n = settings["feature_steps"][int(j[b])]
        t, s = settings["timesteps"][n], (settings["timesteps"] + [-1])[n + 1]
        x_t, x_s = capture.arrays["trajectory"][b : b + 1, n], capture.arrays["trajectory"][b : b + 1, n + 1]
        with torch.no_grad():
            uncond_out = student.model(
                x_t, t, capture.arrays["uncond.encoder_hidden_states"][b : b + 1]
            ).sample
            cond_out = student.model(x_t, t, capture.arrays["cond.encoder_hidden_states"][b : b + 1]).sample
        guided = uncond_out + 2.0 * (cond_out - uncond_out)
        alpha_t, sigma_t = alphas_cumprod[t].sqrt().item(), (1 - alphas_cumprod[t]).sqrt().item()
        alpha_s = alphas_cumprod[max(s, 0)].sqrt().item()  # the last step ends at alphas_cumprod[0]
        sigma_s = (1 - alpha_s**2) ** 0.5
        # x_t = alpha_t x0 + sigma_t eps, x_s = alpha_s x0 + sigma_s eps, solved for eps
        eps_step = (alpha_s * x_t - alpha_t * x_s) / (alpha_s * sigma_t - alpha_t * sigma_s)
        task = (guided - eps_step).square().mean()
        output_kd = (
            (cond_out - capture.arrays["out_cond"][b, n]).square().mean()
            + (uncond_out - capture.arrays["out_uncond"][b, n]).square().mean()
        ) / 2
        feature_kd = sum(
            (outputs[name] - capture.arrays[f"features.{name}"][b, int(j[b])]).square().mean()
            for name in outputs
        )
        expected.append(0.3 * task + 0.5 * output_kd + 0.7 * feature_kd)
    torch.testing.assert_close(got, torch.stack(expected), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("family", ["ddpm", "flow"])
def test_task_target_is_the_noise_shared_by_two_points_of_one_line(family):
    class_name = "FlowMatchEulerDiscreteScheduler" if family == "flow" else "DDIMScheduler"
    schedule = NoiseSchedule.from_scheduler_config({"num_train_timesteps": 1000}, class_name)
    x0, eps = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t, s = torch.tensor([999.0, 500.0, 20.0]), torch.tensor([979.0, 250.0, 0.0])

    def point(time):
        alpha, sigma = schedule.alpha_sigma(time)
        return alpha.view(-1, 1, 1, 1) * x0 + sigma.view(-1, 1, 1, 1) * eps

    torch.testing.assert_close(task_target(schedule, point(t), t, point(s), s), eps, rtol=1e-3, atol=1e-3)


def test_task_term_is_zero_for_the_teacher_itself_at_every_step():
    """The cached DDIM trajectory: the eps of each step is the teacher's guided output there."""
    capture = shared_capture(features=True)
    schedule, settings = schedule_of(capture), capture.settings
    grid = torch.tensor(cached_grid(settings, schedule))
    trajectory = capture.arrays["trajectory"]
    for n in range(settings["num_inference_steps"]):  # the last step too (to alphas_cumprod[0])
        cond, uncond = capture.arrays["out_cond"][:, n], capture.arrays["out_uncond"][:, n]
        times = grid[n].expand(len(trajectory)), grid[n + 1].expand(len(trajectory))
        eps_step = task_target(schedule, trajectory[:, n], times[0], trajectory[:, n + 1], times[1])
        torch.testing.assert_close(eps_step, uncond + 2.0 * (cond - uncond), rtol=1e-3, atol=1e-3)
    batch = capture_batch(capture)
    task_only = blockkd_loss(capture, lambda_out=0.0, lambda_feat=0.0)
    assert task_only(student_of(capture), batch, SampleRandom(0, 0, batch.sample_ids), step=0).max() < 1e-8


def test_features_are_aligned_by_name():
    three_stage = tiny_unet(
        1,
        block_out_channels=(16, 32, 32),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    )
    teacher_blocks = ["down_blocks.0", "down_blocks.1", "down_blocks.2", "mid_block"] + [
        f"up_blocks.{i}" for i in range(3)
    ]
    tiny = build_student("pruned", copy.deepcopy(three_stage), tiny_train_config("u", "u", prune="tiny"))
    assert (
        aligned_blocks(tiny.model, teacher_blocks, tiny.pruning)
        == {
            "down_blocks.0": "down_blocks.0",  # down_blocks.1 lost its downsampler: its output is not the teacher's
            "up_blocks.0": "up_blocks.1",
            "up_blocks.1": "up_blocks.2",
        }
    )
    small = build_student("pruned", copy.deepcopy(three_stage), tiny_train_config("u", "u", prune="small"))
    pairs = aligned_blocks(small.model, teacher_blocks + ["up_blocks.0.resnets.2"], small.pruning)
    assert pairs == {name: name for name in teacher_blocks if name != "mid_block"} | {
        "up_blocks.0.resnets.1": "up_blocks.0.resnets.2"  # the kept last resnet of an up stage
    }
    full = build_student("full", three_stage, tiny_train_config("u", "u"), origin=Origin())
    assert aligned_blocks(full.model, teacher_blocks, full.pruning) == {name: name for name in teacher_blocks}


def test_block_shapes_that_differ_are_refused():
    capture = shared_capture(features=True)
    wider = tiny_unet(0, block_out_channels=(16, 48))  # 48 channels where the teacher (16, 32) has 32
    student = build_student("full", wider, tiny_train_config("u", "u"))
    with pytest.raises(DistillCacheError) as refused:
        blockkd_loss(capture).check_student(student, capture_batch(capture, [0, 1]))
    # down_blocks.0 (16 channels, halved to 4 x 4) and up_blocks.1 (16, 8 x 8) are the teacher's shapes
    assert str(refused.value) == (
        "student block outputs differ in shape from the cached teacher features: "
        "down_blocks.1 (48, 4, 4) vs down_blocks.1 (32, 4, 4); up_blocks.0 (48, 8, 8) vs up_blocks.0 (32, 8, 8); "
        "mid_block (48, 4, 4) vs mid_block (32, 4, 4); blockkd needs the same block layout "
        "(use --lambda-feat 0 for output distillation only)"
    )


def test_the_shape_check_passes_the_teachers_layout_and_runs_one_row():
    capture = shared_capture(features=True)
    student, calls = student_of(capture), []
    denoise = student.denoise
    student.denoise = lambda x_t, t, cond, *rest: calls.append((x_t, t, cond)) or denoise(x_t, t, cond, *rest)
    batch = capture_batch(capture, [0, 1, 2])
    blockkd_loss(capture).check_student(student, batch)  # the teacher itself: every block's shape matches
    ((x_t, t, cond),) = calls
    assert x_t.shape == (1, *capture.arrays["trajectory"].shape[2:]) and t.shape == (1,)
    assert cond["encoder_hidden_states"].shape[0] == 1


def test_slice_conditioning_keeps_the_first_rows_of_nested_kwargs():
    cond = {
        "encoder_hidden_states": torch.arange(12.0).view(3, 4),
        "added_cond_kwargs": {"time_ids": torch.arange(6.0).view(3, 2)},
    }
    sliced = slice_conditioning(cond, 2)
    assert sliced["encoder_hidden_states"].tolist() == [[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0]]
    assert sliced["added_cond_kwargs"]["time_ids"].tolist() == [[0.0, 1.0], [2.0, 3.0]]


def test_a_student_without_any_cached_block_is_refused():
    capture = shared_capture(features=True)
    grid = [float(t) for t in capture.settings["timesteps"]]
    loss = BlockKdLoss(
        schedule_of(capture), grid, [0], ["conv_norm_out.missing", "mid_block.missing"], "epsilon", Distance()
    )
    with pytest.raises(DistillCacheError) as refused:
        loss.block_pairs(student_of(capture))
    assert str(refused.value) == (
        "none of the store's features (conv_norm_out.missing, mid_block.missing) has a counterpart in the student; "
        "cache block outputs (--features 'down_blocks.*,mid_block,up_blocks.*') or pass --lambda-feat 0"
    )
    without_features = BlockKdLoss(
        schedule_of(capture), grid, [0], ["conv_norm_out.missing"], "epsilon", Distance(), lambda_feat=0.0
    )
    assert without_features.block_pairs(student_of(capture)) == {}  # --lambda-feat 0: nothing to refuse


def test_a_pruned_students_blocks_pair_with_the_teachers_they_came_from():
    three_stage = tiny_unet(
        1,
        block_out_channels=(16, 32, 32),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    )
    teacher_blocks = [
        "down_blocks.0",
        "down_blocks.1",
        "down_blocks.2",
        "mid_block",
        "up_blocks.1",
        "up_blocks.2",
    ]
    loss = BlockKdLoss(
        schedule_of(shared_capture()), [999.0, 0.0], [0], teacher_blocks, "epsilon", Distance()
    )
    tiny = build_student("pruned", three_stage, tiny_train_config("u", "u", prune="tiny"))
    # BK-SDM tiny drops the mid block and one stage: the student's up_blocks.0 is the teacher's up_blocks.1
    assert loss.block_pairs(tiny) == {
        "down_blocks.0": "down_blocks.0",
        "up_blocks.0": "up_blocks.1",
        "up_blocks.1": "up_blocks.2",
    }


@pytest.mark.parametrize(
    "method, given, expected",
    [
        ("blockkd", None, "l2"),
        ("lcm", None, "huber"),
        ("direct", None, "huber"),
        ("blockkd", "huber", "huber"),
    ],
)
def test_the_distance_defaults_to_bk_sdm_squared_error_for_blockkd_only(method, given, expected):
    """BK-SDM's three terms are squared errors; the LCM-LoRA recipe's pseudo-Huber is every other
    method's default; --loss always wins. Checked on a value: l2 of a difference of 2 is 4."""
    from student_train.config import TrainConfig
    from student_train.losses import distance

    chosen = distance(TrainConfig(cache="store", out="out", method=method, loss=given))
    value = chosen(torch.full((1, 3), 2.0), torch.zeros(1, 3)).item()
    assert chosen.kind == expected
    assert value == (4.0 if expected == "l2" else pytest.approx((4 + 1e-6) ** 0.5 - 1e-3))
