"""blockkd with a pruned student end to end, and `--init`: chains of runs (prune, then few-step), LoRA
folders fused onto their base, w-conditioned students kept, and the chain recorded in distill.json."""

import json

import pytest
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import load_file

import student_train.training.loop as training_loop
from shared.errors import DistillCacheError
from student_train.export import load_exported_student
from tests.student_store_fixture import (  # noqa: F401 (autouse)
    one_torch_thread,
    shared_capture,
    tiny_train_config,
)


@pytest.fixture(scope="module")
def pruned_dir(feature_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "blockkd_small"
    training_loop.train(
        tiny_train_config(
            feature_store, out, method="blockkd", student="pruned", prune="small", train_steps=3, loss="l2"
        )
    )
    return out


def unet_weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))


def test_blockkd_exports_a_pruned_unet_that_samples_as_the_teacher(pruned_dir):
    unet = UNet2DConditionModel.from_pretrained(pruned_dir, subfolder="unet")
    assert unet.mid_block is None and unet.config.layers_per_block == 1
    distill = json.loads((pruned_dir / "distill.json").read_text())
    assert distill["student"] == "pruned" and distill["pruning"]["level"] == "small"
    assert distill["sampling"]["sampler"] == "cfg" and distill["lineage"] == []
    assert (
        distill["recommended"]["num_inference_steps"] == 10
        and distill["recommended"]["guidance_scale"] == 2.0
    )
    scheduler = json.loads((pruned_dir / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler == {
        **scheduler,
        "_class_name": "DDIMScheduler",
        "timestep_spacing": "leading",
    }  # the teacher's
    teacher = load_file(
        str(shared_capture(features=True).teacher_dir / "unet" / "diffusion_pytorch_model.safetensors")
    )
    assert not torch.equal(
        unet_weights(pruned_dir)["conv_in.weight"], teacher["conv_in.weight"]
    )  # it trained


def test_init_chains_direct_onto_the_pruned_student(feature_store, pruned_dir, tmp_path):
    out = tmp_path / "direct"
    training_loop.train(tiny_train_config(feature_store, out, method="direct", init=str(pruned_dir), lr=0.0))
    assert UNet2DConditionModel.from_pretrained(out, subfolder="unet").config.mid_block_type is None
    start, end = unet_weights(pruned_dir), unet_weights(out)  # lr 0: the run starts from the init's weights
    assert start.keys() == end.keys() and all(torch.equal(start[k], end[k]) for k in start)
    distill = json.loads((out / "distill.json").read_text())
    assert distill["pruning"]["level"] == "small" and distill["sampling"]["sampler"] == "ddim"
    assert [(run["dir"], run["method"], run["student"], run["prune"]) for run in distill["lineage"]] == [
        (str(pruned_dir.resolve()), "blockkd", "pruned", "small")
    ]
    again = tmp_path / "again"  # a third run: the chain grows, oldest first
    training_loop.train(
        tiny_train_config(feature_store, again, method="progressive", init=str(out), train_steps=1)
    )
    lineage = json.loads((again / "distill.json").read_text())["lineage"]
    assert [run["method"] for run in lineage] == ["blockkd", "direct"]


@pytest.mark.slow  # two training runs and a fused export
def test_a_lora_student_is_fused_onto_its_base(feature_store, tmp_path):
    lora = tmp_path / "lora"
    training_loop.train(
        tiny_train_config(feature_store, lora, method="direct", student="lora", train_steps=2, lr=0.05)
    )
    full = tmp_path / "full"
    training_loop.train(tiny_train_config(feature_store, full, method="direct", init=str(lora), lr=0.0))

    pipe = StableDiffusionPipeline.from_pretrained(shared_capture(features=True).teacher_dir)
    pipe.load_lora_weights(lora)  # diffusers' own loading and fusing
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    expected = pipe.unet.state_dict()
    fused = unet_weights(full)
    assert fused.keys() == expected.keys()
    torch.testing.assert_close(fused, dict(expected), rtol=0, atol=1e-6)
    assert not torch.equal(
        fused["down_blocks.0.attentions.0.proj_in.weight"],
        load_file(
            str(shared_capture(features=True).teacher_dir / "unet" / "diffusion_pytorch_model.safetensors")
        )["down_blocks.0.attentions.0.proj_in.weight"],
    )


def test_a_lora_student_on_a_pruned_init_loads_onto_that_base(feature_store, pruned_dir, tmp_path):
    out = tmp_path / "lora_on_pruned"
    training_loop.train(
        tiny_train_config(
            feature_store, out, method="direct", student="lora", init=str(pruned_dir), train_steps=1
        )
    )
    model, distill = load_exported_student(out)
    assert model.mid_block is None and distill["lineage"][-1]["dir"] == str(pruned_dir.resolve())
    assert any("lora_A" in name for name, _ in model.named_parameters())


@pytest.mark.parametrize("first", ["lcm", "guidance"])  # guidance: Meng et al.'s stage 2 is this chain
def test_a_w_conditioned_init_keeps_its_w_embedding(feature_store, tmp_path, first):
    lcm = tmp_path / first
    training_loop.train(tiny_train_config(feature_store, lcm, method=first, train_steps=2))
    out = tmp_path / "progressive"
    training_loop.train(tiny_train_config(feature_store, out, method="progressive", init=str(lcm), lr=0.0))
    start, end = unet_weights(lcm), unet_weights(out)
    assert start["time_embedding.cond_proj.weight"].abs().sum() > 0  # the first run trained its w projection
    assert torch.equal(start["time_embedding.cond_proj.weight"], end["time_embedding.cond_proj.weight"])
    lcm_w = json.loads((lcm / "distill.json").read_text())["sampling"]["guidance_w"]
    assert json.loads((out / "distill.json").read_text())["sampling"]["guidance_w"] == lcm_w
    assert UNet2DConditionModel.from_pretrained(out, subfolder="unet").config.time_cond_proj_dim == 256


def test_bad_inits_are_refused_before_anything_is_written(feature_store, pruned_dir, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(
        DistillCacheError, match=r"already fixes the architecture \(small\); train it with --student full"
    ):
        training_loop.train(tiny_train_config(feature_store, out, student="pruned", init=str(pruned_dir)))
    distill = json.loads((pruned_dir / "distill.json").read_text())
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    distill["store"]["fingerprint"] = {**distill["store"]["fingerprint"], "weights_hash": "another teacher"}
    (foreign / "distill.json").write_text(json.dumps(distill))
    with pytest.raises(DistillCacheError, match="distilled from another teacher"):
        training_loop.train(tiny_train_config(feature_store, out, init=str(foreign)))
    assert not out.exists()
