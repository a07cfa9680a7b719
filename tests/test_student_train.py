"""`student-train run` end to end on a tiny cached teacher: the loss falls, only the denoiser is loaded,
and a run killed and resumed ends with the same weights as an uninterrupted one (lcm; blockkd pruned)."""

import json
import math

import diffusers
import pytest
import torch
from safetensors.torch import load_file

import student_train.training.loop as training_loop
from student_train.config import TrainConfig
from student_train.training.optimizer import lr_factor
from tests.phase_two_watch import watch_phase_two
from tests.student_store_fixture import (  # noqa: F401 (autouse)
    one_torch_thread,
    shared_capture,
    tiny_train_config,
)


def logged_losses(out) -> list[float]:
    lines = (out / "logs" / "train_log.csv").read_text().splitlines()[1:]
    return [float(line.split(",")[1]) for line in lines]


@pytest.mark.slow  # LoRA training is also run by the export and resume tests of make test
def test_direct_lora_loss_falls(store, tmp_path):
    out = tmp_path / "direct"
    training_loop.train(
        tiny_train_config(
            store, out, method="direct", student="lora", train_steps=16, log_every=4, loss="l2", lr=3e-3
        )
    )
    losses = logged_losses(out)
    assert len(losses) == 4 and losses == sorted(losses, reverse=True) and losses[-1] < 0.9 * losses[0], (
        losses
    )
    distill = json.loads((out / "distill.json").read_text())
    assert distill["method"] == "direct" and distill["recommended"]["timesteps"] == [999, 499]
    assert json.loads((out / "train_config.json").read_text())["lora_rank"] == 4
    assert any((out / "logs").rglob("events.out.tfevents.*"))  # TensorBoard


@pytest.mark.parametrize("method", ["lcm", "progressive"])
def test_full_student_trains_and_exports(store, tmp_path, method):
    out = tmp_path / method
    training_loop.train(tiny_train_config(store, out, method=method, student="full", train_steps=3))
    unet_config = json.loads((out / "unet" / "config.json").read_text())
    assert unet_config["time_cond_proj_dim"] == (256 if method == "lcm" else None)  # LCM's w-embedding
    assert all(loss == loss for loss in logged_losses(out))  # finite, logged every update
    exported = load_file(str(out / "unet" / "diffusion_pytorch_model.safetensors"))
    teacher = load_file(str(shared_capture().teacher_dir / "unet" / "diffusion_pytorch_model.safetensors"))
    assert not torch.equal(exported["conv_in.weight"], teacher["conv_in.weight"])  # it trained


def test_only_the_denoiser_is_loaded_and_the_teacher_never_runs(store, tmp_path, monkeypatch):
    loaded, forwards = watch_phase_two(monkeypatch, diffusers.UNet2DConditionModel)
    training_loop.train(
        tiny_train_config(store, tmp_path / "lcm", method="lcm", student="full", train_steps=3)
    )
    assert len(loaded) == 1 and loaded[0].__class__.__name__ == "UNet2DConditionModel"
    assert id(loaded[0]) not in forwards  # the teacher's weights never ran
    assert len(forwards) == 2 * 3 and len(set(forwards)) == 2  # per update: the student and its EMA target


@pytest.mark.parametrize(
    "method, student",
    [("lcm", "full"), ("blockkd", "pruned")],  # pruned: a smaller UNet, block hooks
)
def test_killed_and_resumed_run_ends_with_the_same_weights(
    feature_store, tmp_path, monkeypatch, method, student
):
    store = feature_store
    settings = dict(method=method, student=student, train_steps=5, checkpoint_every=2)
    training_loop.train(tiny_train_config(store, tmp_path / "whole", **settings))

    write = training_loop.TrainLog.write

    def die_after_step_3(self, accelerator, step, *args):
        loss = write(self, accelerator, step, *args)
        if step == 3:
            raise KeyboardInterrupt  # killed between checkpoints (the last one is step 2)
        return loss

    monkeypatch.setattr(training_loop.TrainLog, "write", die_after_step_3)
    with pytest.raises(KeyboardInterrupt):
        training_loop.train(tiny_train_config(store, tmp_path / "killed", **settings))
    monkeypatch.setattr(training_loop.TrainLog, "write", write)
    training_loop.train(tiny_train_config(store, tmp_path / "killed", resume=True, **settings))

    whole = load_file(str(tmp_path / "whole" / "unet" / "diffusion_pytorch_model.safetensors"))
    resumed = load_file(str(tmp_path / "killed" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[name], resumed[name]) for name in whole)
    distill = json.loads((tmp_path / "killed" / "distill.json").read_text())
    assert distill["train"]["resumed_from_step"] == 2


def test_lr_schedule_factors():
    cosine = TrainConfig("c", "o", train_steps=100, lr_schedule="cosine", lr_warmup_steps=10)
    assert lr_factor(cosine, 4) == pytest.approx(0.5 * 0.5 * (1 + math.cos(math.pi * 0.04)))
    assert lr_factor(cosine, 50) == pytest.approx(0.5)
    assert lr_factor(cosine, 100) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(TrainConfig("c", "o", lr_schedule="constant"), 500) == 1.0


def test_preloaded_and_streamed_runs_end_with_the_same_weights(store, tmp_path):
    settings = dict(method="progressive", student="lora", train_steps=3, batch_size=4)
    for name, loader in (("streamed", "stream"), ("preloaded", "memory")):
        training_loop.train(tiny_train_config(store, tmp_path / name, loader=loader, **settings))
    streamed = load_file(str(tmp_path / "streamed" / "pytorch_lora_weights.safetensors"))
    preloaded = load_file(str(tmp_path / "preloaded" / "pytorch_lora_weights.safetensors"))
    assert streamed.keys() == preloaded.keys() and len(streamed) > 0
    assert all(torch.equal(streamed[name], preloaded[name]) for name in streamed)
