"""`student-train sample`: the stock diffusers pipeline of the teacher with the student swapped in."""

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

from shared.noise import initial_noise
from shared.store import StoreReader
from student_train.cli import main as student_train_main
from student_train.config import TrainConfig
from student_train.export import export_student
from student_train.sampling import load_student_scheduler
from student_train.students import build_student
from student_train.students.denoiser import load_denoiser
from tests.student_store_fixture import shared_capture, write_capture_store

PROMPT = "a red seven on blue"


@pytest.fixture(scope="module")
def students(tmp_path_factory):
    """A full student (the teacher with a shifted conv_out bias) and a LoRA student with non-zero adapters."""
    root = tmp_path_factory.mktemp("sample")
    capture = shared_capture(num_prompts=2, steps=4)
    reader = StoreReader(write_capture_store(capture, root / "cache"))
    folders = {}
    for kind in ("full", "lora"):
        config = TrainConfig(
            cache=str(root / "cache"), out=str(root / kind), method="direct", student=kind, lora_rank=4
        )
        student = build_student(kind, load_denoiser(str(capture.teacher_dir)), config)
        with torch.no_grad():
            if kind == "full":
                student.model.conv_out.bias.add_(0.5)
            else:
                for name, param in student.model.named_parameters():
                    if "lora_B" in name:
                        param.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
        export_student(student, config, reader, root / kind, {"train_steps": 0})
        folders[kind] = (root / kind, student.model)
    return capture.teacher_dir, folders


def expected_image(teacher_dir, student_dir, unet, steps: int, seed: int, **kwargs) -> np.ndarray:
    """The teacher pipeline with `unet` and the student's scheduler, from the store's noise for `seed`."""
    pipe = StableDiffusionPipeline.from_pretrained(teacher_dir)
    pipe.unet, pipe.scheduler = unet.eval(), load_student_scheduler(student_dir)
    pipe.set_progress_bar_config(disable=True)
    noise = initial_noise([seed], (4, 8, 8), "cpu", torch.float32)
    with torch.no_grad():
        return np.asarray(
            pipe(PROMPT, num_inference_steps=steps, guidance_scale=1.0, latents=noise, **kwargs).images[0]
        )


def test_full_student_image_is_the_pipeline_with_its_unet_and_scheduler(students, tmp_path):
    teacher_dir, folders = students
    student_dir, model = folders["full"]
    out = tmp_path / "img" / "seven.png"
    args = ["sample", "--student", str(student_dir), "--prompt", PROMPT, "--steps", "2", "--seed", "3"]
    assert student_train_main([*args, "--out", str(out)]) == 0
    image = np.asarray(Image.open(out))
    assert image.shape == (16, 16, 3)
    assert np.array_equal(image, expected_image(teacher_dir, student_dir, model, 2, 3))
    teacher_unet = StableDiffusionPipeline.from_pretrained(teacher_dir).unet
    assert not np.array_equal(image, expected_image(teacher_dir, student_dir, teacher_unet, 2, 3))


def test_lora_student_image_is_the_pipeline_with_the_trained_adapter(students, tmp_path):
    """Every adapter (attention, feed-forward, conv), at its alpha / rank scale, survives export + load."""
    teacher_dir, folders = students
    student_dir, model = folders["lora"]
    out = tmp_path / "lora.png"
    args = ["sample", "--student", str(student_dir), "--prompt", PROMPT, "--out", str(out)]
    assert student_train_main(args) == 0
    image = np.asarray(Image.open(out))
    assert np.array_equal(
        image, expected_image(teacher_dir, student_dir, model, 4, 0)
    )  # recommended: 4 steps
    teacher_unet = StableDiffusionPipeline.from_pretrained(teacher_dir).unet
    assert not np.array_equal(image, expected_image(teacher_dir, student_dir, teacher_unet, 4, 0))


def test_tcd_student_samples_with_its_gamma_and_seeded_noise(tmp_path):
    """TCD re-noises between steps: the image is the pipeline's with eta = gamma and noise from --seed."""
    capture = shared_capture(num_prompts=2, steps=4)
    reader = StoreReader(write_capture_store(capture, tmp_path / "cache"))
    config = TrainConfig(
        cache=str(tmp_path / "cache"), out=str(tmp_path / "tcd"), method="tcd", student="lora", tcd_gamma=0.5
    )
    student = build_student("lora", load_denoiser(str(capture.teacher_dir)), config)
    export_student(student, config, reader, tmp_path / "tcd", {"train_steps": 0})
    out = tmp_path / "tcd.png"
    args = ["sample", "--student", str(tmp_path / "tcd"), "--prompt", PROMPT, "--steps", "3", "--seed", "5"]
    assert student_train_main([*args, "--out", str(out)]) == 0
    image = np.asarray(Image.open(out))
    teacher_unet = StableDiffusionPipeline.from_pretrained(
        capture.teacher_dir
    ).unet  # the adapter starts at 0
    same = dict(timesteps=None, eta=0.5, generator=torch.Generator().manual_seed(5))
    assert np.array_equal(
        image, expected_image(capture.teacher_dir, tmp_path / "tcd", teacher_unet, 3, 5, **same)
    )
    deterministic = dict(eta=0.0)
    assert not np.array_equal(
        image, expected_image(capture.teacher_dir, tmp_path / "tcd", teacher_unet, 3, 5, **deterministic)
    )


def test_bad_inputs_exit_2_and_write_nothing(students, tmp_path, capsys):
    _, folders = students
    student_dir = str(folders["full"][0])
    cases = [
        ["--student", str(tmp_path / "missing"), "--prompt", PROMPT, "--out", str(tmp_path / "a.png")],
        ["--student", student_dir, "--prompt", PROMPT, "--out", str(tmp_path / "a.txt")],
        ["--student", student_dir, "--prompt", " ", "--out", str(tmp_path / "a.png")],
        ["--student", student_dir, "--prompt", PROMPT, "--steps", "-1", "--out", str(tmp_path / "a.png")],
    ]
    for args in cases:
        assert student_train_main(["sample", *args]) == 2, args
        assert "student-train: error:" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
