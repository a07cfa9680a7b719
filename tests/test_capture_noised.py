"""The noised field group: x_t = alpha x0 + sigma eps at timesteps of LCM's solver grid, the teacher's
cond / uncond outputs there, from the teacher's final latents or from an --images folder; the same
for a sample in any batch, after a kill and a resume, and replayable through the denoiser alone."""

import json
import signal
import subprocess
import time

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

from shared.noise import keyed_seed
from shared.store import StoreReader
from student_train.students.denoiser import call_denoiser, load_denoiser, nest_conditioning
from teacher_cache.cli import main
from teacher_cache.runner import run
from tests.capture_helpers import (
    PYTHON,
    cli_args,
    rows_by_sample_id,
    subprocess_env,
    tiny_capture_config,
    write_prompts,
)
from tests.tiny_models import save_tiny_sd_pipeline

PROMPTS = ["a red one on blue", "a blue two on red", "a green three on black", "a white four on cyan"]
NOISED = ("noised.x_t", "noised.timestep", "noised.next_timestep", "noised.out_cond", "noised.out_uncond")
IMAGE_SIZE = 16  # the tiny SD pipeline's images


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return save_tiny_sd_pipeline(tmp_path_factory.mktemp("teacher") / "sd")


def write_image_folder(folder, captions, size=IMAGE_SIZE, metadata="metadata.jsonl"):
    """One random RGB PNG per caption and the captions file; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for index, caption in enumerate(captions):
        name = f"img{index:02d}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / name)
        rows.append({"file_name": name, "text": caption})
    if metadata.endswith(".jsonl"):
        (folder / metadata).write_text("".join(json.dumps(row) + "\n" for row in rows))
    else:
        (folder / metadata).write_text(
            "file_name,text\n" + "".join(f"{r['file_name']},{r['text']}\n" for r in rows)
        )
    return folder


def noised_rows(reader: StoreReader) -> dict[str, dict[str, torch.Tensor]]:
    values = {name: rows_by_sample_id(reader, name) for name in NOISED}
    return {sid: {name: values[name][sid] for name in NOISED} for sid in values[NOISED[0]]}


def test_points_are_final_latents_noised_on_lcm_grid_with_stored_noise_rule(tmp_path, teacher):
    steps, points = 4, 3
    config = tiny_capture_config(
        tmp_path / "store",
        teacher,
        write_prompts(tmp_path, PROMPTS[:2]),
        steps=steps,
        fields=("final_latents", "cond", "noised"),
        noised_points_per_sample=points,
    )
    run(config)
    reader = StoreReader(config.out)
    assert (
        reader.settings["noised_grid"] == [249, 499, 749, 999] and reader.settings["noised_x0"] == "teacher"
    )
    alphas_cumprod = StableDiffusionPipeline.from_pretrained(teacher).scheduler.alphas_cumprod.double()
    final = rows_by_sample_id(reader, "final_latents")
    for sample_id, row in noised_rows(reader).items():
        # the documented rule, computed here: a permutation of the grid, then the noise, one generator
        generator = torch.Generator().manual_seed(keyed_seed("noised", sample_id))
        index = torch.randperm(steps, generator=generator)[:points]
        eps = torch.randn((points, 4, 8, 8), generator=generator)
        t = torch.tensor([249, 499, 749, 999])[index]
        assert row["noised.timestep"].tolist() == t.tolist()
        assert row["noised.next_timestep"].tolist() == (t - 250).clamp(min=0).tolist()
        alpha = alphas_cumprod[t].sqrt().float().view(-1, 1, 1, 1)
        expected = alpha * final[sample_id] + (1 - alpha**2).sqrt() * eps
        torch.testing.assert_close(row["noised.x_t"], expected, rtol=1e-5, atol=1e-5)


def test_stored_points_replay_through_the_denoiser_alone(tmp_path, teacher):
    config = tiny_capture_config(
        tmp_path / "store", teacher, write_prompts(tmp_path, PROMPTS[:3]), fields=("cond", "noised")
    )
    run(config)
    reader = StoreReader(config.out)
    rows = list(range(3))
    denoiser = load_denoiser(str(teacher))  # as phase two loads it
    halves = {
        half: nest_conditioning({"encoder_hidden_states": reader.read(f"{half}.encoder_hidden_states", rows)})
        for half in ("cond", "uncond")
    }
    x_t, t = reader.read("noised.x_t", rows), reader.read("noised.timestep", rows)  # (3, M, ...), (3, M)
    for m in range(x_t.shape[1]):
        for half in ("cond", "uncond"):
            replayed = call_denoiser(denoiser, x_t[:, m], t[:, m], halves[half])
            torch.testing.assert_close(
                replayed, reader.read(f"noised.out_{half}", rows)[:, m], rtol=1e-4, atol=1e-4
            )


def test_a_sample_gets_the_same_points_at_batch_1_and_4_from_images(tmp_path, teacher):
    images = write_image_folder(tmp_path / "images", PROMPTS)
    stores = {}
    for batch_size in (1, 4):
        config = tiny_capture_config(
            tmp_path / f"bs{batch_size}",
            teacher,
            write_prompts(tmp_path, ["unused"]),
            fields=("cond", "noised"),
            images=str(images),
            batch_size=batch_size,
        )
        run(config)
        stores[batch_size] = noised_rows(StoreReader(config.out))
    assert len(stores[1]) == len(PROMPTS) and stores[1].keys() == stores[4].keys()
    for sample_id, row in stores[1].items():
        for name in NOISED:
            torch.testing.assert_close(row[name], stores[4][sample_id][name], rtol=1e-5, atol=1e-5)


def test_images_are_vae_encoded_with_a_seeded_posterior_sample(tmp_path, teacher):
    images = write_image_folder(tmp_path / "images", PROMPTS[:2], metadata="metadata.csv")
    config = tiny_capture_config(
        tmp_path / "store",
        teacher,
        write_prompts(tmp_path, ["unused"]),
        fields=("cond", "noised"),
        images=str(images),
        noised_points_per_sample=2,  # <= the grid's 3 steps: one permutation
    )
    run(config)
    reader = StoreReader(config.out)
    assert reader.settings["noised_x0"] == "images"
    pipe = StableDiffusionPipeline.from_pretrained(teacher)
    manifest = reader.manifest.to_pylist()
    assert sorted(row["image"] for row in manifest) == ["img00.png", "img01.png"]
    for row, record in enumerate(manifest):
        assert record["prompt"] == PROMPTS[int(record["image"][3:5])]  # the caption is the prompt
        sample_id = record["sample_id"]
        pixels = torch.from_numpy(np.array(Image.open(images / record["image"]))).permute(2, 0, 1)
        posterior = pipe.vae.encode(pixels[None].float() / 127.5 - 1).latent_dist
        draw = torch.randn(
            posterior.mean.shape, generator=torch.Generator().manual_seed(keyed_seed("vae", sample_id))
        )
        x0 = ((posterior.mean + posterior.std * draw) * pipe.vae.config.scaling_factor)[0]
        t, x_t = reader.read("noised.timestep", [row])[0], reader.read("noised.x_t", [row])[0]
        generator = torch.Generator().manual_seed(keyed_seed("noised", sample_id))
        torch.randperm(len(reader.settings["noised_grid"]), generator=generator)
        eps = torch.randn(x_t.shape, generator=generator)
        alpha = pipe.scheduler.alphas_cumprod[t.long()].sqrt().view(-1, 1, 1, 1)
        torch.testing.assert_close(x_t, alpha * x0 + (1 - alpha**2).sqrt() * eps, rtol=1e-4, atol=1e-4)


def test_conditioning_only_capture_equals_a_full_pipeline_capture(tmp_path, teacher):
    images = write_image_folder(tmp_path / "images", PROMPTS[:2])
    readers = {}
    for name, fields in (
        ("first_call", ("cond", "noised")),
        ("full", ("trajectory", "out", "cond", "noised")),
    ):
        config = tiny_capture_config(
            tmp_path / name, teacher, write_prompts(tmp_path, ["unused"]), fields=fields, images=str(images)
        )
        run(config)
        readers[name] = StoreReader(config.out)
    assert readers["first_call"].settings["timesteps"] == readers["full"].settings["timesteps"]
    for field in (*NOISED, "cond.encoder_hidden_states", "uncond.encoder_hidden_states"):
        ours, theirs = (
            rows_by_sample_id(readers["first_call"], field),
            rows_by_sample_id(readers["full"], field),
        )
        assert ours.keys() == theirs.keys()
        for sample_id in ours:
            torch.testing.assert_close(ours[sample_id], theirs[sample_id], rtol=1e-5, atol=1e-5)


def bad_folder(tmp_path, case):
    folder = write_image_folder(tmp_path / "images", PROMPTS[:3])
    lines = (folder / "metadata.jsonl").read_text().splitlines()
    if case == "missing caption":
        lines[1] = json.dumps({"file_name": "img01.png", "text": " "})
    elif case == "unreadable image":
        (folder / "img02.png").write_bytes(b"not a png")
    elif case == "wrong size":
        Image.new("RGB", (IMAGE_SIZE, 2 * IMAGE_SIZE)).save(folder / "img02.png")
    elif case == "missing image":
        (folder / "img01.png").unlink()
    elif case == "listed twice":
        lines.append(lines[0])
    elif case == "outside the folder":
        lines[0] = json.dumps({"file_name": "../secret.png", "text": "a red one on blue"})
    elif case == "no captions file":
        (folder / "metadata.jsonl").unlink()
    if case != "no captions file":
        (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing caption", "img01.png has no caption (text)"),
        ("unreadable image", "img02.png is not a readable image"),
        ("wrong size", "img02.png is 16x32 pixels; the teacher works at 16x16"),
        ("missing image", "img01.png does not exist"),
        ("listed twice", "img00.png is listed twice"),
        ("outside the folder", "is outside"),
        ("no captions file", "expected exactly one of metadata.jsonl, metadata.csv"),
    ],
)
def test_a_bad_images_dataset_is_one_line_and_nothing_is_written(tmp_path, capsys, teacher, case, message):
    folder = bad_folder(tmp_path, case)
    config = tiny_capture_config(tmp_path / "store", teacher, write_prompts(tmp_path, ["unused"]))
    status = main(cli_args(config) + ["--fields", "noised,cond", "--images", str(folder)])
    stderr = capsys.readouterr().err.strip()
    assert status == 2 and stderr.startswith("teacher-cache: error: ") and "\n" not in stderr, stderr
    assert message in stderr
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--images", "digits"], "makes 32x32 images; the teacher works at 16x16"),
        (["--images", "digits", "--fields", "cond"], "add noised to --fields"),
        (["--noised-points-per-sample", "0"], "--noised-points-per-sample must be at least 1"),
    ],
)
def test_bad_noised_settings_are_refused(tmp_path, capsys, teacher, extra, message):
    config = tiny_capture_config(tmp_path / "store", teacher, write_prompts(tmp_path, ["a red one on blue"]))
    assert main(cli_args(config) + extra) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "store").exists()


def test_digits_refuse_the_held_out_prompts():
    from shared.digits import heldout_prompts
    from shared.errors import DistillCacheError
    from teacher_cache.image_source import check_digit_jobs
    from teacher_cache.prompts import CaptureJob

    with pytest.raises(DistillCacheError, match="held-out"):
        check_digit_jobs([CaptureJob(heldout_prompts()[0], "", 1, 5.0)], (32, 32))
    check_digit_jobs([CaptureJob("a red seven on blue", "", 1, 5.0)], (32, 32))  # a training combination


@pytest.mark.slow
def test_points_are_the_same_after_a_kill_and_a_resume(tmp_path, teacher):
    captions = [f"a red {index} on blue" for index in range(16)]
    images = write_image_folder(tmp_path / "images", captions)
    prompts = write_prompts(tmp_path, ["unused"])
    extra = ["--fields", "noised,cond", "--images", str(images), "--noised-points-per-sample", "8"]
    killed = tiny_capture_config(tmp_path / "killed", teacher, prompts, batch_size=1)
    command = [PYTHON, "-m", "teacher_cache", *cli_args(killed), *extra]
    first = subprocess.Popen(command, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    manifest, deadline = tmp_path / "killed" / "manifest", time.monotonic() + 120
    while not (manifest.is_dir() and any(manifest.glob("*.parquet"))) and first.poll() is None:
        assert time.monotonic() < deadline, "the first run committed nothing in 120 s"
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert 0 < StoreReader(killed.out).manifest.num_rows < len(captions)
    assert subprocess.run(command, env=subprocess_env(), capture_output=True, timeout=300).returncode == 0

    clean = tiny_capture_config(tmp_path / "clean", teacher, prompts, batch_size=4)
    assert main(cli_args(clean) + extra) == 0
    resumed, uninterrupted = noised_rows(StoreReader(killed.out)), noised_rows(StoreReader(clean.out))
    assert len(resumed) == len(captions) and resumed.keys() == uninterrupted.keys()
    for sample_id, row in resumed.items():
        for name in NOISED:
            torch.testing.assert_close(row[name], uninterrupted[sample_id][name], rtol=1e-5, atol=1e-5)
