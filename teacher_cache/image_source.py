"""Clean images for the noised points (`teacher-cache run --fields noised --images ...`), checked
before anything is written.

A folder of images with a captions file, the layout of Hugging Face `imagefolder` datasets and of
diffusers' text-to-image examples (`--train_data_dir`):

    DATASET/
      metadata.jsonl      {"file_name": "0001.png", "text": "a red seven on blue"}   one line per image
      0001.png            (or metadata.csv with the columns file_name,text)
      sub/0002.jpg        file_name is relative to DATASET; any format Pillow reads

Every image must already be the teacher's image size (--height / --width, else the pipeline's
default): nothing is resized or cropped behind the user's back. One row per image; its caption is
the row's prompt, its seed a stable hash of its file_name, and its file_name is the row's source key
(two images with the same caption are two samples).

    jobs = folder_jobs("DATASET", image_size=(512, 512), guidance=5.0, negative_prompt="")
    images = load_images("DATASET", jobs)                       # [B] RGB PIL images, in job order

`--images digits` takes the embedded teacher's coloured digits instead (shared/digits.py): one
image per job of --prompts, drawn from the digit's training glyphs with the job's seed. The digits'
held-out prompt combinations (`heldout_prompts()`, the unseen-prompt eval set) are refused.
"""

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from shared.errors import DistillCacheError
from teacher_cache.config import BUILTIN_DIGITS
from teacher_cache.prompts import CaptureJob, derived_seed

METADATA_FILES = ("metadata.jsonl", "metadata.csv")
FILE_COLUMN, CAPTION_COLUMN = "file_name", "text"


def metadata_rows(folder: Path) -> tuple[Path, list[dict]]:
    """The captions file of `folder` and its rows; raises DistillCacheError."""
    if not folder.is_dir():
        raise DistillCacheError(
            f"--images {folder}: no such folder; give a folder of images with {' or '.join(METADATA_FILES)}, "
            f"or '{BUILTIN_DIGITS}'"
        )
    found = [folder / name for name in METADATA_FILES if (folder / name).is_file()]
    if len(found) != 1:
        raise DistillCacheError(
            f"--images {folder}: expected exactly one of {', '.join(METADATA_FILES)} (one row per image with "
            f"the columns {FILE_COLUMN},{CAPTION_COLUMN}); found {len(found)}"
        )
    path = found[0]
    try:
        if path.suffix == ".jsonl":
            lines = path.read_text(encoding="utf-8").splitlines()
            rows = [json.loads(line) for line in lines if line.strip()]
        else:
            with path.open(newline="", encoding="utf-8") as handle:
                rows = list(csv.DictReader(handle))
    except (ValueError, OSError, UnicodeDecodeError, csv.Error) as error:
        raise DistillCacheError(f"{path} cannot be read: {error}") from None
    if not rows or not all(isinstance(row, dict) for row in rows):
        raise DistillCacheError(
            f"{path} holds no rows; write one {{{FILE_COLUMN}, {CAPTION_COLUMN}}} row per image"
        )
    return path, rows


def image_path(folder: Path, file_name: str, where: str) -> Path:
    """folder / file_name, refused if it leaves the folder."""
    path = (folder / file_name).resolve()
    if Path(file_name).is_absolute() or not path.is_relative_to(folder.resolve()):
        raise DistillCacheError(
            f"{where}: {FILE_COLUMN} {file_name!r} is outside {folder}; give a relative path"
        )
    return path


def open_image(path: Path, image_size: tuple[int, int], where: str) -> Image.Image:
    """The image decoded as RGB; raises DistillCacheError if it is missing, unreadable or not H x W."""
    try:
        with Image.open(path) as image:
            image.load()
            rgb = image.convert("RGB")
    except FileNotFoundError:
        raise DistillCacheError(
            f"{where}: {path} does not exist; fix the {FILE_COLUMN} or add the file"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise DistillCacheError(
            f"{where}: {path} is not a readable image ({error}); replace or remove it"
        ) from None
    height, width = image_size
    if rgb.size != (width, height):
        raise DistillCacheError(
            f"{where}: {path} is {rgb.size[0]}x{rgb.size[1]} pixels; the teacher works at {width}x{height} "
            f"(--width x --height): resize or crop the dataset to that size first"
        )
    return rgb


def folder_jobs(
    folder: str | Path, image_size: tuple[int, int], guidance: float, negative_prompt: str
) -> list[CaptureJob]:
    """One job per row of the folder's captions file, every image opened and checked first."""
    folder = Path(folder)
    metadata, rows = metadata_rows(folder)
    jobs, seen = [], set()
    for line, row in enumerate(rows, start=1):
        where = f"{metadata} row {line}"
        file_name, caption = row.get(FILE_COLUMN), row.get(CAPTION_COLUMN)
        if not isinstance(file_name, str) or not file_name.strip():
            raise DistillCacheError(f"{where}: no {FILE_COLUMN}; name the image file of every row")
        if not isinstance(caption, str) or not caption.strip():
            raise DistillCacheError(
                f"{where}: {file_name} has no caption ({CAPTION_COLUMN}); caption it or remove the row"
            )
        if file_name in seen:
            raise DistillCacheError(f"{where}: {file_name} is listed twice; keep one row per image")
        seen.add(file_name)
        open_image(image_path(folder, file_name, where), image_size, where)
        jobs.append(
            CaptureJob(caption, negative_prompt, derived_seed(file_name, 0), guidance, image=file_name)
        )
    return jobs


def check_digit_jobs(jobs: list[CaptureJob], image_size: tuple[int, int]) -> None:
    """`--images digits`: every prompt in the digits' grammar, none of the held-out combinations."""
    from shared.digits import IMAGE_SIZE, heldout_prompts, parse_prompt

    if tuple(image_size) != (IMAGE_SIZE, IMAGE_SIZE):
        raise DistillCacheError(
            f"--images {BUILTIN_DIGITS} makes {IMAGE_SIZE}x{IMAGE_SIZE} images; the teacher works at "
            f"{image_size[1]}x{image_size[0]}: use the embedded teacher or an --images folder"
        )
    heldout = set(heldout_prompts())
    for job in jobs:
        parse_prompt(job.prompt)  # one line naming the grammar if the prompt is outside it
        if job.prompt in heldout:
            raise DistillCacheError(
                f"prompt {job.prompt!r} is one of the digits' held-out (unseen-prompt eval) combinations; "
                f"--images {BUILTIN_DIGITS} never trains on them: use teacher_cache/prompts/default_train.txt"
            )


def load_images(source: str, jobs: list[CaptureJob]) -> list[Image.Image]:
    """The clean images of a batch of jobs (checked already), in job order, as RGB PIL images."""
    if source == BUILTIN_DIGITS:
        from shared.digits import make_images

        pixels = [make_images(1, seed=job.seed, split="train", prompts=[job.prompt])[0][0] for job in jobs]
        return [Image.fromarray(np.ascontiguousarray(image)) for image in pixels]
    folder = Path(source)
    images = []
    for job in jobs:
        with Image.open(folder / job.image) as image:
            images.append(image.convert("RGB"))
    return images
