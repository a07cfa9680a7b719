"""The method registry (student_train.losses): each method's store fields and w input, the flags that
reach each loss, and the one-line refusals of a method a store's family cannot serve (blockkd on a
transformer, tcd at gamma != 0 on a flow store), of an unknown method and of a w range a LoRA
student cannot learn."""

import pytest
import torch

from shared.errors import DistillCacheError
from shared.schedule import NoiseSchedule
from student_train.data.points import NOISED_FIELDS, TRAJECTORY_FIELDS
from student_train.data.randomness import SampleRandom
from student_train.losses import METHODS, check_family, get_method, has_w_input, resolve_defaults
from student_train.students import build_student
from student_train.students.denoiser import load_denoiser
from tests.student_store_fixture import capture_batch, shared_capture, tiny_train_config

FLOW_SCHEDULER = {"class": "FlowMatchEulerDiscreteScheduler", "config": {"num_train_timesteps": 1000}}


def config(**flags):
    return tiny_train_config("unused", "unused", **flags)


def schedule_of(settings) -> NoiseSchedule:
    return NoiseSchedule.from_scheduler_config(
        settings["scheduler"]["config"], settings["scheduler"]["class"]
    )


def built(method, settings=None, **flags):
    settings = settings or shared_capture().settings  # DDIM, 10 steps at guidance 2.0
    run = resolve_defaults(config(method=method, **flags))
    return get_method(method).build(run, settings, schedule_of(settings))


def test_the_methods_their_w_input_and_an_unknown_one():
    assert list(METHODS) == ["direct", "lcm", "progressive", "guidance", "tcd", "reflow", "blockkd"]
    assert {name for name, method in METHODS.items() if method.w_conditioned} == {"lcm", "guidance", "tcd"}
    assert all(method.name == name for name, method in METHODS.items())
    with pytest.raises(DistillCacheError) as refused:
        get_method("consistency")
    assert str(refused.value) == (
        "unknown --method 'consistency'; valid: direct, lcm, progressive, guidance, tcd, reflow, blockkd"
    )


@pytest.mark.parametrize(
    "method, flags, fields",
    [
        ("direct", {}, ("noise", "final_latents")),
        ("reflow", {}, ("noise", "final_latents")),
        ("progressive", {}, ("trajectory",)),
        ("lcm", {}, NOISED_FIELDS),  # lcm's default points: noised
        ("tcd", dict(points="trajectory"), TRAJECTORY_FIELDS),
        ("guidance", {}, TRAJECTORY_FIELDS),  # guidance's default: the trajectories
        ("guidance", dict(points="mix"), TRAJECTORY_FIELDS + NOISED_FIELDS),
        ("blockkd", dict(lambda_feat=0.0), ("trajectory", "out_cond", "out_uncond", "uncond.*")),
        (
            "blockkd",
            dict(lambda_feat=0.5),
            ("trajectory", "out_cond", "out_uncond", "uncond.*", "features.*"),
        ),
    ],
)
def test_the_fields_each_method_reads(method, flags, fields):
    assert get_method(method).fields(config(method=method, **flags)) == tuple(fields)


def test_which_students_have_a_w_input():
    unet, transformer = {"denoiser": "unet"}, {"denoiser": "transformer"}
    assert has_w_input(config(student="full"), unet) and has_w_input(config(student="pruned"), {})
    assert not has_w_input(config(student="lora"), unet) and not has_w_input(
        config(student="full"), transformer
    )


def test_a_lora_guidance_student_needs_one_w_said_in_one_line():
    with pytest.raises(DistillCacheError) as refused:
        built("guidance", student="lora", w_min=0.5, w_max=2.0)
    assert str(refused.value) == (
        "a LoRA student has no w input, so it learns one w: give --w-min = --w-max (e.g. 1, the store's "
        "guidance - 1), or use --student full"
    )
    assert built("guidance", student="lora", w_min=1.0, w_max=1.0).w_min == 1.0


def test_a_transformer_guidance_student_needs_one_w_said_in_one_line():
    transformer = {**shared_capture().settings, "denoiser": "transformer"}
    with pytest.raises(DistillCacheError) as refused:
        built("guidance", transformer, student="full", w_min=0.5, w_max=2.0)
    assert str(refused.value) == (
        "this store's transformer has no w input, so it learns one w: give --w-min = --w-max (e.g. 1, the "
        "store's guidance - 1)"
    )
    assert built("guidance", transformer, student="full", w_min=2.0, w_max=2.0).w_max == 2.0


def test_blockkd_is_built_on_the_stores_feature_steps_blocks_schedule_and_prediction():
    capture = shared_capture(features=True)  # features of 5 blocks cached at steps 0, 5 and 9
    loss = built("blockkd", capture.settings, lambda_task=1.0, lambda_out=0.0, lambda_feat=0.5)
    assert loss.feature_steps.tolist() == [0, 5, 9] and loss.prediction_type == "epsilon"
    assert loss.feature_modules == [
        "down_blocks.0",
        "down_blocks.1",
        "mid_block",
        "up_blocks.0",
        "up_blocks.1",
    ]
    assert torch.equal(loss.schedule.alphas_cumprod, schedule_of(capture.settings).alphas_cumprod)
    # the task term of the teacher itself on its own DDIM trajectory is zero (test_losses_blockkd)
    task_only = built("blockkd", capture.settings, lambda_task=1.0, lambda_out=0.0, lambda_feat=0.0)
    teacher = build_student("full", load_denoiser(str(capture.teacher_dir)), config())
    batch = capture_batch(capture)
    assert task_only(teacher, batch, SampleRandom(0, 0, batch.sample_ids), step=0).max() < 1e-8


def test_the_flags_reach_each_loss():
    lcm = built("lcm", w_min=1.5, w_max=7.0, timestep_scaling=3.0, points="mix", loss="l2")
    assert (lcm.w_min, lcm.w_max, lcm.timestep_scaling, lcm.points, lcm.distance.kind) == (
        1.5,
        7.0,
        3.0,
        "mix",
        "l2",
    )
    tcd = built("tcd", w_min=2.5, w_max=3.5, points="trajectory", loss="huber", huber_c=0.01)
    assert (tcd.w_min, tcd.w_max, tcd.points, tcd.distance.kind, tcd.distance.huber_c) == (
        2.5,
        3.5,
        "trajectory",
        "huber",
        0.01,
    )
    guidance = built("guidance", w_min=0.5, w_max=2.0, points="noised")
    assert (guidance.w_min, guidance.w_max, guidance.points) == (0.5, 2.0, "noised")
    progressive = built("progressive", weighting="snr_plus_one", train_steps=8, num_student_steps=2)
    assert progressive.weighting == "snr_plus_one" and progressive.total_train_steps == 8
    assert progressive.jumps == [2, 4, 8]  # 10 grid steps -> 5 -> 3 -> 2 (ceil): three rounds to reach K = 2
    assert [progressive.jump_at(step) for step in range(8)] == [2, 2, 2, 4, 4, 4, 8, 8]  # round = 3 step // 8
    blockkd = built("blockkd", lambda_task=0.25, lambda_out=0.5, lambda_feat=0.0)
    assert (blockkd.lambda_task, blockkd.lambda_out, blockkd.lambda_feat) == (0.25, 0.5, 0.0)
    assert blockkd.feature_steps.tolist() == list(range(10)) and blockkd.distance.kind == "l2"
    direct = built("direct", gradient_checkpointing=True, loss="l2")
    assert direct.checkpoint_steps and direct.distance.kind == "l2" and len(direct.timesteps) == 2


@pytest.mark.parametrize("t_schedule, steps", [("steps", 2), ("uniform", 1)])
def test_reflow_trains_a_flow_student_on_the_teachers_count(t_schedule, steps):
    reflow = built("reflow", reflow_t_schedule=t_schedule, num_student_steps=2)
    assert reflow.schedule.family == "flow" and reflow.schedule.num_train_timesteps == 1000
    assert len(reflow.points) == steps and reflow.t_schedule == t_schedule


def test_a_method_a_store_family_cannot_serve_is_refused():
    ddim = shared_capture().settings["scheduler"]
    with pytest.raises(DistillCacheError) as refused:
        check_family(config(method="blockkd"), {"denoiser": "transformer", "scheduler": FLOW_SCHEDULER})
    assert str(refused.value) == (
        "--method blockkd distils a UNet's blocks (BK-SDM); this store's denoiser is a transformer: "
        "use another --method (direct, lcm, progressive, guidance, tcd, reflow)"
    )
    check_family(config(method="blockkd"), {"scheduler": ddim})  # a UNet store (the default denoiser)
    check_family(config(method="lcm"), {"denoiser": "transformer", "scheduler": FLOW_SCHEDULER})
    with pytest.raises(DistillCacheError) as refused:
        check_family(
            config(method="tcd", tcd_gamma=0.3), {"denoiser": "transformer", "scheduler": FLOW_SCHEDULER}
        )
    assert str(refused.value) == (
        "--tcd-gamma 0.3 on a flow-matching store: diffusers has no flow TCD scheduler, and "
        "FlowMatchEulerDiscreteScheduler samples TCD at gamma 0 only: pass --tcd-gamma 0 (or --method lcm: gamma 1)"
    )
    check_family(
        config(method="tcd", tcd_gamma=0.0), {"denoiser": "transformer", "scheduler": FLOW_SCHEDULER}
    )
    check_family(config(method="tcd", tcd_gamma=0.3), {"denoiser": "unet", "scheduler": ddim})
    assert torch.is_tensor(built("tcd").grid)


LEFT_OPEN = dict(loss=None, points=None, w_min=None, w_max=None)


@pytest.mark.parametrize(
    "method, given, concrete",
    [
        ("lcm", {}, dict(loss="huber", points="noised", w_min=5.0, w_max=15.0)),
        ("tcd", dict(w_max=9), dict(loss="huber", points="noised", w_min=5.0, w_max=9.0)),
        ("guidance", dict(loss="l2"), dict(loss="l2", points="trajectory", w_min=0.0, w_max=4.0)),
        ("blockkd", {}, dict(loss="l2", points=None, w_min=None, w_max=None)),  # reads neither points nor w
        ("direct", dict(points="mix"), dict(loss="huber", points="mix", w_min=None, w_max=None)),
    ],
)
def test_the_defaults_left_to_the_method_by_hand(method, given, concrete):
    resolved = resolve_defaults(config(method=method, **{**LEFT_OPEN, **given}))
    assert {name: getattr(resolved, name) for name in concrete} == concrete
    assert all(
        type(getattr(resolved, name)) is float for name in ("w_min", "w_max") if concrete[name] is not None
    )


@pytest.mark.parametrize(
    "method, given, spellings",
    [
        ("lcm", {}, 16),  # loss, points, w_min, w_max: each concrete or None
        ("lcm", dict(loss="l2", w_min=1.0), 4),  # only points and w_max are the defaults
        ("direct", {}, 16),  # --loss left to direct; --points and the w range unread: None or earlier
        ("blockkd", dict(loss="huber"), 8),  # only the unread --points, --w-min, --w-max, each 2 ways
    ],
)
def test_every_spelling_of_a_run_has_a_digest(method, given, spellings):
    from student_train.losses.defaults import same_run_digests, same_run_spellings

    run = config(method=method, **{**LEFT_OPEN, **given})
    found = same_run_spellings(run)
    assert len(found) == spellings and found[0] == resolve_defaults(run)
    assert len({spelling.run_digest() for spelling in found}) == spellings == len(same_run_digests(run))
    assert run.run_digest() in same_run_digests(run)


@pytest.mark.parametrize(
    "method, given, w",
    [
        ("direct", {}, (5.0, 15.0)),  # outside DEFAULT_W_RANGE: lcm's range (the SD LCM script's 5..15)
        ("blockkd", dict(w_min=2.0), (2.0, 15.0)),  # a given end is kept, the other from lcm's range
        ("progressive", dict(w_max=7.0), (5.0, 7.0)),
        ("guidance", {}, (0.0, 4.0)),  # a method of its own: Meng et al.'s 0..4
    ],
)
def test_the_w_range_of_a_method_without_one_is_lcms(method, given, w):
    from student_train.losses import w_range

    assert w_range(config(method=method, **{"w_min": None, "w_max": None, **given})) == w
