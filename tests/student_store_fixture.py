"""Tiny teacher caches for phase-two tests: a random tiny SD pipeline run at CFG over a few prompts,
with exactly the fields and settings of docs/contracts.md ("What phase one stores").

    capture = capture_tiny_teacher(tmp_path, num_prompts=6, steps=10)
    url = write_capture_store(capture, tmp_path / "store")             # a real store (shared.store)
    url = write_capture_store(capture, tmp_path / "s2", fields=("noise", "final_latents"))
    capture = shared_capture(features=True)     # also features.<block> of FEATURE_MODULES at FEATURE_STEPS

The teacher runs here as the DDIM + CFG loop of StableDiffusionPipeline (uncond half first),
with noise made from each row's seed, so no part of phase one is needed. The noised points
(`noised.*`, NOISED_POINTS per row) are made here by hand from the final latents: timesteps of LCM's
solver grid of `steps` points, x_t = alpha x0 + sigma eps, the UNet's cond / uncond outputs there.
"""

import dataclasses
import functools
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline

from shared.store import state_dict_digest
from shared.teacher import load_denoiser
from tests.tiny_models import LATENT_SHAPE, save_tiny_sd_pipeline

NOISED_POINTS = 2

FEATURE_MODULES = ("down_blocks.0", "down_blocks.1", "mid_block", "up_blocks.0", "up_blocks.1")
PROMPTS = [
    "a red seven on blue",
    "a green two on white",
    "a blue one on yellow",
    "a black nine on red",
    "a white three on green",
    "a yellow five on black",
    "a pink zero on grey",
    "an orange four on purple",
]


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models run fastest on one thread, and the 2 shared cores stay usable (import it into a test
    module to apply it there); the previous setting is restored after each test."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@dataclass
class TeacherCapture:
    teacher_dir: Path
    rows: list[dict]  # manifest metadata, one per sample
    arrays: dict[str, torch.Tensor]  # field name -> (N, *per-sample shape)
    settings: dict
    fingerprint: dict
    teacher: dict  # the store's teacher record: {"source", "revision"}


def scheduler_settings(scheduler) -> dict:
    config = {k: v for k, v in dict(scheduler.config).items() if not k.startswith("_")}
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.items()}
    return {"class": type(scheduler).__name__, "config": config}


@torch.no_grad()
def capture_tiny_teacher(
    tmp_path: Path,
    num_prompts: int = 6,
    steps: int = 10,
    guidance: float = 2.0,
    prediction_type: str = "epsilon",
    features: bool = False,
) -> TeacherCapture:
    """`features`: also the output (element 0, cond half) of every FEATURE_MODULES block at the
    steps 0, S // 2 and S - 1, recorded by forward hooks of this fixture (not phase one's)."""
    teacher_dir = save_tiny_sd_pipeline(Path(tmp_path) / "teacher", prediction_type)
    pipe = StableDiffusionPipeline.from_pretrained(teacher_dir)
    pipe.scheduler.set_timesteps(steps)
    feature_steps = [0, steps // 2, steps - 1] if features else []
    block_outputs: dict[str, list[torch.Tensor]] = {name: [] for name in FEATURE_MODULES if features}
    step = {"index": 0}

    def keep_output(name):
        def hook(module, args, output):
            if step["index"] in feature_steps:  # [uncond; cond]: keep the cond half
                block_outputs[name].append((output[0] if isinstance(output, tuple) else output).chunk(2)[1])

        return hook

    for name in block_outputs:
        pipe.unet.get_submodule(name).register_forward_hook(keep_output(name))
    prompts = PROMPTS[:num_prompts]
    cond, uncond = pipe.encode_prompt(prompts, "cpu", 1, True, negative_prompt=[""] * len(prompts))
    noise = torch.stack(
        [
            torch.randn(LATENT_SHAPE, generator=torch.Generator().manual_seed(seed))
            for seed in range(len(prompts))
        ]
    )
    latents = noise * pipe.scheduler.init_noise_sigma
    trajectory, out_cond, out_uncond = [latents], [], []
    for index, t in enumerate(pipe.scheduler.timesteps):
        step["index"] = index
        both = pipe.unet(
            torch.cat([latents, latents]), t, encoder_hidden_states=torch.cat([uncond, cond])
        ).sample
        output_uncond, output_cond = both.chunk(2)
        guided = output_uncond + guidance * (output_cond - output_uncond)
        latents = pipe.scheduler.step(guided, t, latents).prev_sample
        trajectory.append(latents)
        out_cond.append(output_cond)
        out_uncond.append(output_uncond)
    arrays = {
        "noise": noise,
        "trajectory": torch.stack(trajectory, dim=1),  # (N, S + 1, C, H, W)
        "final_latents": latents,
        "out_cond": torch.stack(out_cond, dim=1),  # (N, S, C, H, W)
        "out_uncond": torch.stack(out_uncond, dim=1),
        "cond.encoder_hidden_states": cond,  # (N, 16, 32)
        "uncond.encoder_hidden_states": uncond,
        **noised_points(pipe, latents, cond, uncond, steps),
        **{f"features.{name}": torch.stack(outputs, dim=1) for name, outputs in block_outputs.items()},
    }
    rows = [
        {
            "sample_id": f"tiny-{index:03d}",
            "prompt": prompt,
            "negative_prompt": "",
            "seed": index,
            "guidance_scale": guidance,
            "num_inference_steps": steps,
        }
        for index, prompt in enumerate(prompts)
    ]
    settings = {
        "num_inference_steps": steps,
        "guidance_scale": guidance,
        "cfg": True,
        "timesteps": [int(t) for t in pipe.scheduler.timesteps],
        "scheduler": scheduler_settings(pipe.scheduler),
        "prediction_type": prediction_type,
        "init_noise_sigma": float(pipe.scheduler.init_noise_sigma),
        "latent_shape": list(LATENT_SHAPE),
        "dtype": "float32",
        "conditioning": ["encoder_hidden_states"],
        "denoiser": "unet",
        "val_fraction": 0.0,
        "noised_points_per_sample": NOISED_POINTS,
        "noised_x0": "teacher",
        "noised_grid": [(index + 1) * (1000 // steps) - 1 for index in range(steps)],
        "feature_steps": feature_steps,
        "feature_modules": list(block_outputs),
    }
    fingerprint = {
        "pipeline_class": "StableDiffusionPipeline",
        "weights_hash": "tiny",
        "denoiser_hash": state_dict_digest(load_denoiser(str(teacher_dir))),  # phase two checks it
    }
    teacher = {"source": str(teacher_dir), "revision": None}
    return TeacherCapture(teacher_dir, rows, arrays, settings, fingerprint, teacher)


def noised_points(pipe, x0, cond, uncond, steps: int) -> dict[str, torch.Tensor]:
    """NOISED_POINTS points per row from x0 (N, C, H, W): t = (i + 1) k - 1 of the solver grid (k =
    1000 // steps), s = max(t - k, 0), x_t = alpha_t x0 + sigma_t eps, the UNet's outputs at (x_t, t)."""
    skip = 1000 // steps
    generator = torch.Generator().manual_seed(1234)
    index = torch.randint(0, steps, (x0.shape[0], NOISED_POINTS), generator=generator)
    t = (index + 1) * skip - 1  # (N, M)
    eps = torch.randn((x0.shape[0], NOISED_POINTS, *x0.shape[1:]), generator=generator)
    alpha = pipe.scheduler.alphas_cumprod[t].sqrt()[..., None, None, None]  # (N, M, 1, 1, 1)
    x_t = alpha * x0[:, None] + (1 - alpha**2).sqrt() * eps
    outputs = [
        pipe.unet(
            torch.cat([x_t[:, m], x_t[:, m]]), torch.cat([t[:, m], t[:, m]]), torch.cat([uncond, cond])
        ).sample.chunk(2)
        for m in range(NOISED_POINTS)
    ]
    return {
        "noised.x_t": x_t,  # (N, M, C, H, W)
        "noised.timestep": t.float(),  # (N, M)
        "noised.next_timestep": (t - skip).clamp(min=0).float(),
        "noised.out_cond": torch.stack([cond_out for _, cond_out in outputs], dim=1),
        "noised.out_uncond": torch.stack([uncond_out for uncond_out, _ in outputs], dim=1),
    }


@functools.lru_cache(maxsize=4)
def shared_capture(
    num_prompts: int = 6, steps: int = 10, prediction_type: str = "epsilon", features: bool = False
) -> TeacherCapture:
    """One capture per test session (the tiny teacher run costs seconds): treat it as read-only."""
    return capture_tiny_teacher(
        Path(tempfile.mkdtemp(prefix="tiny_capture_")), num_prompts, steps, 2.0, prediction_type, features
    )


def teacher_denoiser():
    """A fresh copy of the shared capture's teacher denoiser (the tiny UNet), loaded from its folder."""
    return load_denoiser(str(shared_capture().teacher_dir))


def capture_batch(capture: TeacherCapture, rows: list[int] | None = None):
    """The capture as a training Batch (student_train.data.batches.Batch), float32 on the CPU."""
    from student_train.data.batches import Batch
    from student_train.students.denoiser import nest_conditioning

    rows = list(range(len(capture.rows))) if rows is None else rows
    fields = {name: value[rows] for name, value in capture.arrays.items() if not name.startswith("cond.")}
    cond = nest_conditioning(
        {name[5:]: value[rows] for name, value in capture.arrays.items() if name.startswith("cond.")}
    )
    guidance = torch.tensor([float(capture.rows[i]["guidance_scale"]) for i in rows])
    return Batch(fields, cond, [capture.rows[i]["sample_id"] for i in rows], guidance)


def write_capture_store(
    capture: TeacherCapture, url: Path | str, fields: tuple[str, ...] | None = None
) -> str:
    """Write the capture (optionally only some fields, plus the conditioning) as a shared.store store."""
    from shared.store import FieldSpec, StoreWriter

    keep = {
        name: array
        for name, array in capture.arrays.items()
        if fields is None or name in fields or name.startswith(("cond.", "uncond."))
    }
    specs = {name: FieldSpec("float32", tuple(array.shape[1:])) for name, array in keep.items()}
    writer = StoreWriter(
        str(url),
        fingerprint=capture.fingerprint,
        teacher=capture.teacher,
        settings=capture.settings,
        fields=specs,
    )
    writer.commit(capture.rows, keep)
    return str(url)


def write_train_and_unseen_stores(capture: TeacherCapture, root: Path, train_rows: int = 4) -> str:
    """The stores eval and compare read: `root/cache` holds the first `train_rows` rows (half of them
    in the val split) and `root/cache_unseen` the rest, the unseen prompts of the same teacher."""
    capture = dataclasses.replace(capture, settings={**capture.settings, "val_fraction": 0.5})
    train, unseen = dataclasses.replace(capture), dataclasses.replace(capture)
    train.rows, unseen.rows = capture.rows[:train_rows], capture.rows[train_rows:]
    train.arrays = {name: value[:train_rows] for name, value in capture.arrays.items()}
    unseen.arrays = {name: value[train_rows:] for name, value in capture.arrays.items()}
    write_capture_store(unseen, root / "cache_unseen")
    return write_capture_store(train, root / "cache")


def method_settings(method: str, student: str) -> dict:
    """What a method needs on top of tiny_train_config to train this student kind: a LoRA student has
    no w input, so guidance trains one w (w_min = w_max)."""
    return dict(w_min=1.0, w_max=1.0) if method == "guidance" and student == "lora" else {}


def tiny_train_config(store: str, out, **overrides):
    """A TrainConfig for seconds-long runs on the tiny store; overrides win."""
    from student_train.config import TrainConfig

    settings = dict(
        cache=str(store),
        out=str(out),
        train_steps=4,
        batch_size=3,
        lr=1e-3,
        lora_rank=4,
        lora_alpha=4,
        num_student_steps=2,
        w_min=0.5,
        w_max=2.0,
        log_every=1,
    )
    settings.update(overrides)
    return TrainConfig(**settings)
