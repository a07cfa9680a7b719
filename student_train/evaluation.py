"""`student-train eval`: a student at K steps against the teacher at K steps and at its full count.

Two eval sets: the `val` split of the training store (rows never trained on) and every row of the
unseen-prompt store (prompts absent from the training store). For each K in `--steps`, from the
cached initial noise and the cached conditioning of each row:

    teacher@K   the teacher's denoiser, DDIM at K steps, CFG at the row's guidance (teacher_baseline.py),
                "trailing" timesteps by default (every K starts at t = T-1, from the pure cached noise)
    student@K   the student, its method's few-step sampler (sampling.py)

Both are decoded with the teacher's VAE (eval may load the VAE; training never does) and compared,
pairwise, with the teacher's cached many-step output `final_latents` (teacher@S): PSNR and MSE of
the pixels, MSE of the latents. The judge (shared/judge.py) scores prompt adherence and the Frechet
distance to real digits of every column, teacher@S included. Writes OUT/metrics.json (settings,
one record per (set, model, steps), the issue's targets) and OUT/grid.png (teacher@S | teacher@K |
student@K for a few prompts of each set); prints the table.

    run(EvalConfig(cache="runs/cache", student="runs/student", out="runs/eval"))
"""

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from shared.errors import DistillCacheError

DEFAULT_STEPS = (1, 2, 4)
UNSEEN_SUFFIX = "_unseen"
TARGET_STEPS = 4
ADHERENCE_MARGIN = 3.0  # points: student@4 adherence >= teacher@S adherence - 3
PSNR_MARGIN_DB = 3.0  # student@4 paired PSNR >= teacher@4 paired PSNR + 3 dB
REQUIRED_FIELDS = ("noise", "final_latents")
REAL_REFERENCE = 2000  # held-out real digits whose judge features FD is measured against


@dataclass(frozen=True)
class EvalConfig:
    """Settings of one `student-train eval`; CLI flags map 1:1 onto the fields."""

    cache: str  # the training store: its val split is evaluated
    student: str  # the student folder written by `student-train run`
    out: str  # metrics.json and grid.png go here
    unseen_cache: str = "auto"  # unseen-prompt store; auto = <cache>_unseen if it exists; none = skip
    steps: tuple[int, ...] = DEFAULT_STEPS  # K: student and teacher step counts
    teacher: str = ""  # the teacher folder / Hub id; "" = the source the store's fingerprint names
    teacher_spacing: str = "trailing"  # teacher@K's DDIM timesteps: trailing (from t = T-1) | store (its own)
    limit: int = 0  # at most this many rows per eval set (0 = all)
    batch_size: int = 16
    grid_prompts: int = 4  # grid rows taken from each eval set
    judge: bool = True  # adherence and FD with the digit judge (only when every prompt is a digit prompt)
    device: str = "auto"  # auto = cuda if available, else cpu
    dtype: str = "auto"  # auto = float16 on cuda, float32 on cpu


def parse_steps(text: str) -> tuple[int, ...]:
    """'1,2,4' -> (1, 2, 4); raises DistillCacheError for anything else."""
    try:
        steps = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        steps = ()
    if not steps or min(steps) <= 0:
        raise DistillCacheError(
            f"--steps {text!r}: give positive step counts separated by commas, e.g. 1,2,4"
        )
    return tuple(sorted(set(steps)))


def check_config(config: EvalConfig) -> None:
    """Raise DistillCacheError for settings that cannot work; opens nothing."""
    if not config.steps or min(config.steps) <= 0:
        raise DistillCacheError(f"--steps must be positive step counts, not {config.steps}")
    if config.limit < 0:
        raise DistillCacheError(f"--limit must be 0 (all rows) or a positive count, not {config.limit}")
    if config.batch_size <= 0:
        raise DistillCacheError(f"--batch-size must be at least 1, not {config.batch_size}")
    if config.grid_prompts < 0:
        raise DistillCacheError(f"--grid-prompts must be >= 0, not {config.grid_prompts}")
    if config.dtype not in ("auto", "float32", "float16", "bfloat16"):
        raise DistillCacheError(f"--dtype {config.dtype!r} is not one of auto, float32, float16, bfloat16")
    from student_train.teacher_baseline import SPACINGS

    if config.teacher_spacing not in SPACINGS:
        raise DistillCacheError(
            f"--teacher-spacing {config.teacher_spacing!r} is not one of {', '.join(SPACINGS)}"
        )
    if Path(config.out).exists() and not Path(config.out).is_dir():
        raise DistillCacheError(f"--out {config.out} exists and is not a folder; give a folder path")


@dataclass
class EvalSet:
    """Rows of one store to evaluate: `val` of the training store, or every row of the unseen store."""

    name: str  # "val" | "unseen"
    url: str
    reader: object  # shared.store.StoreReader
    rows: list[int]  # indices into reader.manifest


@dataclass
class Models:
    teacher: torch.nn.Module  # the teacher's denoiser
    vae: torch.nn.Module  # the teacher's VAE: decodes every column
    student: torch.nn.Module  # the student's denoiser (LoRA: the teacher's plus the adapter)
    distill: dict  # the student's distill.json
    judge: "DigitJudge | None"  # None with --no-judge or prompts outside the digit grammar


def resolve_unseen_cache(config: EvalConfig) -> str | None:
    """The unseen-prompt store: as given, `<cache>_unseen` under auto when it exists, or None."""
    if config.unseen_cache == "none":
        return None
    if config.unseen_cache == "auto":
        candidate = config.cache.rstrip("/") + UNSEEN_SUFFIX
        if Path(candidate, "store.json").exists():
            return candidate
        print(f"eval: no unseen-prompt store at {candidate}: val split only (pass --unseen-cache STORE)")
        return None
    return config.unseen_cache


def open_store(url: str, flag: str):
    from shared.store import StoreReader

    try:
        reader = StoreReader(url)
    except DistillCacheError:
        raise
    except Exception as error:  # a missing or foreign folder: say which flag to fix
        raise DistillCacheError(
            f"{flag} {url} is not a distillcache store ({error}); run teacher-cache run"
        ) from None
    missing = [name for name in REQUIRED_FIELDS if name not in reader.fields]
    for half in ("cond", "uncond"):
        if not any(name.startswith(f"{half}.") for name in reader.fields):
            missing.append(f"{half}.*")
    if missing:
        raise DistillCacheError(
            f"{flag} {url} has no {', '.join(missing)}, which eval reads; cache them with "
            "`teacher-cache run --fields noise,final_latents,cond` and --guidance > 1"
        )
    return reader


def open_eval_sets(config: EvalConfig) -> list[EvalSet]:
    """The val split of --cache and every row of the unseen store; raises if there is nothing to eval."""
    reader = open_store(config.cache, "--cache")
    sets = [EvalSet("val", config.cache, reader, [int(r) for r in reader.indices("val")])]
    unseen_url = resolve_unseen_cache(config)
    if unseen_url is not None:
        unseen = open_store(unseen_url, "--unseen-cache")
        if unseen.fingerprint != reader.fingerprint:
            raise DistillCacheError(
                f"--unseen-cache {unseen_url} was made by another teacher than --cache {config.cache}; "
                "cache the unseen prompts with the same teacher"
            )
        sets.append(EvalSet("unseen", unseen_url, unseen, [int(r) for r in unseen.indices(None)]))
    for eval_set in sets:
        eval_set.rows = eval_set.rows[: config.limit or None]
    sets = [eval_set for eval_set in sets if eval_set.rows]
    if not sets:
        raise DistillCacheError(
            f"--cache {config.cache} has no val rows and there is no unseen-prompt store; re-cache with "
            "--val-fraction > 0 or pass --unseen-cache STORE"
        )
    return sets


def read_distill(student_dir: str) -> dict:
    path = Path(student_dir) / "distill.json"
    if not path.is_file():
        raise DistillCacheError(
            f"--student {student_dir} has no distill.json; give a folder from student-train run"
        )
    return json.loads(path.read_text())


def check_same_teacher(distill: dict, reader, cache: str) -> None:
    """The student must come from the teacher that made the store (its fingerprint)."""
    if distill.get("store", {}).get("fingerprint") != reader.fingerprint:
        raise DistillCacheError(
            f"the student was distilled from teacher {distill.get('teacher', {}).get('source')!r}, "
            f"but --cache {cache} holds teacher {reader.fingerprint.get('source')!r}; evaluate on its own store"
        )


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        from accelerate import PartialState

        return PartialState().device
    return torch.device(name)


@dataclass
class DigitJudge:
    """The judge and the features of REAL_REFERENCE held-out real digits, computed once per eval."""

    judge: object  # shared.judge.Judge
    real_features: np.ndarray  # [REAL_REFERENCE, D]

    def scores(self, images: np.ndarray, prompts: list[str]) -> dict:
        """Adherence in points (% of images whose digit and both colours match) and FD to real digits."""
        from shared.judge import frechet_distance

        return {
            "adherence": 100.0 * float(self.judge.adherence(images, prompts)),
            "fd": frechet_distance(self.judge.features(images), self.real_features),
        }

    def real_record(self, set_name: str, prompts: list[str]) -> dict:
        """Real digits drawn for the same prompts: the best adherence and the FD floor at this sample size."""
        from shared.digits import make_images

        real, _ = make_images(len(prompts), seed=1, split="heldout", prompts=prompts)
        record = {"set": set_name, "column": "real digits", "model": "real", "steps": 0, "sampler": "data"}
        return {**record, "samples": len(prompts), **self.scores(real, prompts)}


def judge_for(prompts: list[str], device: torch.device) -> DigitJudge | None:
    """The digit judge when every prompt follows the digit grammar, else None (no adherence / FD)."""
    from shared.digits import parse_prompt

    if not prompts:
        return None
    try:
        for prompt in prompts:
            parse_prompt(prompt)
    except DistillCacheError:
        return None
    from shared.digits import make_images
    from shared.judge import load_judge

    judge = load_judge(str(device))
    real, _ = make_images(REAL_REFERENCE, seed=0, split="heldout")
    return DigitJudge(judge, judge.features(real))


def load_models(config: EvalConfig, distill: dict, reader, prompts: list[str]) -> Models:
    from student_train.denoiser import load_denoiser
    from student_train.export import load_exported_student
    from teacher_cache.teacher_loading import resolve_dtype

    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    source = config.teacher or reader.fingerprint.get("source")
    denoiser_name = reader.settings.get("denoiser", "unet")
    teacher = place(load_denoiser(source, denoiser_name), device, dtype)
    vae = place(load_denoiser(source, "vae"), device, dtype)
    student, _ = load_exported_student(config.student, teacher=source)
    return Models(teacher, vae, place(student, device, dtype), distill, judge_for(prompts, device))


def place(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Move a float32 model to the device, and cast it only when another dtype is asked for."""
    module = module.to(device)
    return module if dtype == torch.float32 else module.to(dtype)


@torch.no_grad()
def decode(vae: torch.nn.Module, latents: torch.Tensor) -> np.ndarray:
    """Latents [N, C, h, w] -> uint8 images [N, H, W, 3], as diffusers' image processor rounds them."""
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    scaled = latents / vae.config.scaling_factor + shift
    images = vae.decode(scaled.to(next(vae.parameters()).dtype), return_dict=False)[0].float()  # [N, 3, H, W]
    images = ((images / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    return images.permute(0, 2, 3, 1).cpu().numpy()


def reference_label(settings: dict, steps: tuple[int, ...]) -> str:
    """The column of the cached many-step output: teacher@S (teacher@S cache if S is also a K)."""
    full = int(settings["num_inference_steps"])
    return f"teacher@{full} cache" if full in steps else f"teacher@{full}"


def student_latents(models: Models, settings: dict, noise, cond: dict, sample_ids: list[str], steps: int):
    """The student at `steps` steps with its method's sampler, from noise [B, C, h, w] -> [B, C, h, w]."""
    from functools import partial

    from shared.schedule import NoiseSchedule
    from student_train.denoiser import call_denoiser
    from student_train.randomness import SampleRandom
    from student_train.sampling import sample, student_timesteps

    sampling = models.distill["sampling"]
    schedule = NoiseSchedule.from_scheduler_config(
        settings["scheduler"]["config"], settings["scheduler"]["class"]
    )
    w = sampling.get("guidance_w")
    guidance_w = None if w is None else torch.full((noise.shape[0],), float(w), device=noise.device)  # [B]
    return sample(
        partial(call_denoiser, models.student),
        schedule,
        noise,
        cond,
        student_timesteps(models.distill["method"], steps, settings),
        sampling["prediction_type"],
        sampler=sampling["sampler"],
        random=SampleRandom(0, steps, sample_ids, noise.device),
        guidance_w=guidance_w,
        timestep_scaling=sampling.get("timestep_scaling", 10.0),
    ).float()


@dataclass
class Columns:
    """Everything generated for one eval set: per column label, images and latent MSE to teacher@S."""

    prompts: list[str]
    reference: str  # the label of the cached teacher@S column
    images: dict[str, list[np.ndarray]]  # label -> batches of uint8 [B, H, W, 3]
    latent_mse: dict[str, list[torch.Tensor]]  # label -> batches of [B]
    kinds: dict[
        str, dict
    ]  # label -> {"model": teacher | student, "steps": K, "sampler": cache | ddim | lcm ...}

    def add(self, label: str, kind: dict, images: np.ndarray, latent_mse: torch.Tensor) -> None:
        self.kinds[label] = kind
        self.images.setdefault(label, []).append(images)
        self.latent_mse.setdefault(label, []).append(latent_mse.cpu())

    def all_images(self, label: str) -> np.ndarray:
        return np.concatenate(self.images[label])  # [N, H, W, 3]


@torch.no_grad()
def generate(eval_set: EvalSet, models: Models, config: EvalConfig, train_settings: dict) -> Columns:
    """teacher@S (cached), then teacher@K and student@K for every K, batch by batch from the cached noise."""
    from student_train.image_metrics import mse
    from student_train.teacher_baseline import ddim_scheduler, map_tensors, read_conditioning, sample_with_cfg

    reader, manifest = eval_set.reader, eval_set.reader.manifest
    device = next(models.teacher.parameters()).device
    dtype = next(models.teacher.parameters()).dtype
    reference = reference_label(reader.settings, config.steps)
    columns = Columns([str(manifest.column("prompt")[r]) for r in eval_set.rows], reference, {}, {}, {})
    full_steps, student_sampler = (
        int(reader.settings["num_inference_steps"]),
        models.distill["sampling"]["sampler"],
    )
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    for start in range(0, len(eval_set.rows), config.batch_size):
        rows = eval_set.rows[start : start + config.batch_size]
        noise = reader.read("noise", rows).float().to(device)  # [B, C, h, w]
        final = reader.read("final_latents", rows).float().to(device)  # [B, C, h, w]
        cond = map_tensors(read_conditioning(reader, rows, "cond"), lambda x: x.to(device))
        uncond = map_tensors(read_conditioning(reader, rows, "uncond"), lambda x: x.to(device))
        guidance = torch.tensor([float(manifest.column("guidance_scale")[r].as_py()) for r in rows])  # [B]
        sample_ids = [str(manifest.column("sample_id")[r]) for r in rows]

        def add(label: str, model: str, steps: int, sampler: str, latents: torch.Tensor, final=final) -> None:
            kind = {"model": model, "steps": steps, "sampler": sampler}
            columns.add(label, kind, decode(models.vae, latents), mse(latents, final))

        add(reference, "teacher", full_steps, "cache", final)
        for steps in config.steps:
            with autocast:
                teacher = sample_with_cfg(
                    models.teacher,
                    ddim_scheduler(reader.settings, config.teacher_spacing),
                    noise,
                    cond,
                    uncond,
                    guidance,
                    steps,
                )
                student = student_latents(models, train_settings, noise, cond, sample_ids, steps)
            add(f"teacher@{steps}", "teacher", steps, "ddim", teacher)
            add(f"student@{steps}", "student", steps, student_sampler, student)
    return columns


def score(set_name: str, columns: Columns, judge: DigitJudge | None) -> list[dict]:
    """One record per column: paired PSNR / MSE to teacher@S (pixels and latents), adherence, FD;
    with the judge, a first record for real digits of the same prompts (the reference)."""
    from student_train.image_metrics import mse, psnr, to_unit_float

    reference = to_unit_float(columns.all_images(columns.reference))  # [N, H, W, 3] in [0, 1]
    records = [] if judge is None else [judge.real_record(set_name, columns.prompts)]
    for label in columns.images:
        images = columns.all_images(label)
        record = {"set": set_name, "column": label, **columns.kinds[label], "samples": len(images)}
        if label != columns.reference:
            record["psnr_db"] = float(psnr(to_unit_float(images), reference).mean())
            record["pixel_mse"] = float(mse(to_unit_float(images), reference).mean())
            record["latent_mse"] = float(torch.cat(columns.latent_mse[label]).mean())
        records.append({**record, **(judge.scores(images, columns.prompts) if judge else {})})
    return records


def find_record(
    records: list[dict], set_name: str, model: str, steps: int, sampler: str | None = None
) -> dict | None:
    for record in records:
        if (record["set"], record["model"], record["steps"]) == (set_name, model, steps) and (
            sampler is None or record["sampler"] == sampler
        ):
            return record
    return None


def check_targets(records: list[dict], set_name: str, full_steps: int) -> list[dict]:
    """Issue 5's targets at 4 steps: adherence >= teacher@S - 3 points, PSNR >= teacher@4 DDIM + 3 dB."""
    student = find_record(records, set_name, "student", TARGET_STEPS)
    teacher = find_record(records, set_name, "teacher", TARGET_STEPS, "ddim")
    reference = find_record(records, set_name, "teacher", full_steps, "cache")
    if student is None or teacher is None:
        return []
    targets = [
        {
            "set": set_name,
            "target": f"student@{TARGET_STEPS} PSNR >= teacher@{TARGET_STEPS} PSNR + {PSNR_MARGIN_DB:g} dB",
            "value": student["psnr_db"],
            "threshold": teacher["psnr_db"] + PSNR_MARGIN_DB,
        }
    ]
    if "adherence" in student:
        targets.append(
            {
                "set": set_name,
                "target": f"student@{TARGET_STEPS} adherence >= teacher@{full_steps} - {ADHERENCE_MARGIN:g} points",
                "value": student["adherence"],
                "threshold": reference["adherence"] - ADHERENCE_MARGIN,
            }
        )
    return [{**target, "met": bool(target["value"] >= target["threshold"])} for target in targets]


def grid_rows(columns: Columns, count: int) -> tuple[list[list[np.ndarray]], list[str]]:
    """Up to `count` rows with distinct prompts: [teacher@S, teacher@K, student@K, ...] images each."""
    chosen, seen = [], set()
    for index, prompt in enumerate(columns.prompts):
        if len(chosen) < count and prompt not in seen:
            chosen.append(index)
            seen.add(prompt)
    images = {label: columns.all_images(label) for label in columns.images}
    return [[images[label][i] for label in images] for i in chosen], [columns.prompts[i] for i in chosen]


def format_table(records: list[dict]) -> str:
    """The records as a Markdown table (the README's eval table)."""

    def number(record: dict, key: str, digits: int) -> str:
        return f"{record[key]:.{digits}f}" if key in record else "-"

    lines = [
        "| set | column | PSNR (dB) | pixel MSE | latent MSE | adherence (%) | FD |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in records:
        lines.append(
            f"| {r['set']} | {r['column']} | {number(r, 'psnr_db', 2)} | {number(r, 'pixel_mse', 5)} | "
            f"{number(r, 'latent_mse', 4)} | {number(r, 'adherence', 1)} | {number(r, 'fd', 2)} |"
        )
    return "\n".join(lines)


def run(config: EvalConfig) -> dict:
    """Evaluate, write OUT/metrics.json and OUT/grid.png, print the table; returns the metrics."""
    from student_train.grid import write_grid

    # Validate every input before loading a model or writing anything.
    check_config(config)
    eval_sets = open_eval_sets(config)
    distill = read_distill(config.student)
    check_same_teacher(distill, eval_sets[0].reader, config.cache)
    prompts = [str(s.reader.manifest.column("prompt")[r]) for s in eval_sets for r in s.rows]
    models = load_models(config, distill, eval_sets[0].reader, prompts if config.judge else [])

    records, targets, rows, row_titles = [], [], [], []
    for eval_set in eval_sets:
        print(f"eval: {eval_set.name}: {len(eval_set.rows)} rows of {eval_set.url}", flush=True)
        columns = generate(eval_set, models, config, eval_sets[0].reader.settings)
        set_records = score(eval_set.name, columns, models.judge)
        records += set_records
        targets += check_targets(
            set_records, eval_set.name, int(eval_set.reader.settings["num_inference_steps"])
        )
        set_rows, prompts_shown = grid_rows(columns, config.grid_prompts)
        rows += set_rows
        row_titles += [f"{eval_set.name}: {prompt}" for prompt in prompts_shown]
        column_titles = list(columns.images)

    metrics = {
        "config": asdict(config),
        "teacher": config.teacher or eval_sets[0].reader.fingerprint.get("source"),
        "student": {key: distill.get(key) for key in ("method", "student", "recommended", "sampling")},
        "sets": [{"name": s.name, "store": s.url, "rows": len(s.rows)} for s in eval_sets],
        "judge": "digit judge"
        if models.judge is not None
        else "none (--no-judge, or prompts outside the digit grammar)",
        "records": records,
        "targets": targets,
    }
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if rows:
        write_grid(out / "grid.png", rows, column_titles, row_titles)
    print(format_table(records))
    for target in targets:
        print(
            f"{'met' if target['met'] else 'MISSED'}: {target['set']}: {target['target']} "
            f"({target['value']:.2f} vs {target['threshold']:.2f})"
        )
    print(f"wrote {out / 'metrics.json'} and {out / 'grid.png'}")
    return metrics
