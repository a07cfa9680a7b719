"""The rows `student-train eval` scores: the `val` split of the training store (never trained on) and
every row of the unseen-prompt store (prompts absent from the training store).

Both stores must hold what eval reads (the cached noise, the teacher's many-step output and the
conditioning of both CFG halves) and come from the teacher the student was distilled from (the
store fingerprint); anything else is a DistillCacheError naming the flag to fix.

    training, eval_sets = open_eval_sets("runs/cache", unseen_cache="auto", limit=0)   # val, then unseen
    distill = read_distill("runs/student")
    check_same_teacher(distill, training, "runs/cache")
"""

import json
from dataclasses import dataclass
from pathlib import Path

from shared.errors import DistillCacheError
from shared.store.paths import StoreLocation

UNSEEN_SUFFIX = "_unseen"
REQUIRED_FIELDS = ("noise", "final_latents")


@dataclass
class EvalSet:
    """Rows of one store to evaluate: `val` of the training store, or every row of the unseen store."""

    name: str  # "val" | "unseen"
    url: str
    reader: object  # shared.store.StoreReader
    rows: list[int]  # indices into reader.manifest


def resolve_unseen_cache(cache: str, unseen_cache: str) -> str | None:
    """The unseen-prompt store: as given, `<cache>_unseen` under auto when it exists, or None."""
    if unseen_cache == "none":
        return None
    if unseen_cache == "auto":
        candidate = cache.rstrip("/") + UNSEEN_SUFFIX
        if StoreLocation.open(candidate).exists("store.json"):  # a folder or any fsspec URL (s3://...)
            return candidate
        print(f"eval: no unseen-prompt store at {candidate}: val split only (pass --unseen-cache STORE)")
        return None
    return unseen_cache


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
    return reader


def missing_eval_fields(reader) -> list[str]:
    missing = [name for name in REQUIRED_FIELDS if name not in reader.fields]
    for half in ("cond", "uncond"):
        if not any(name.startswith(f"{half}.") for name in reader.fields):
            missing.append(f"{half}.*")
    return missing


def check_eval_fields(reader, url: str, flag: str) -> None:
    missing = missing_eval_fields(reader)
    if missing:
        raise DistillCacheError(
            f"{flag} {url} has no {', '.join(missing)}, which eval reads; cache them with "
            "`teacher-cache run --fields noise,final_latents,cond` and --guidance > 1"
        )


def open_eval_sets(cache: str, unseen_cache: str, limit: int) -> tuple[object, list[EvalSet]]:
    """The training store's reader (its settings are the student's), and the eval sets: the val split
    of --cache and every row of the unseen store, at most `limit` rows each (0 = all). A training store
    without what eval reads (e.g. noised points only) gives no val set when an unseen store exists;
    raises if there is nothing to eval."""
    reader = open_store(cache, "--cache")
    unseen_url = resolve_unseen_cache(cache, unseen_cache)
    sets = []
    if unseen_url is None or not missing_eval_fields(reader):
        check_eval_fields(reader, cache, "--cache")
        sets.append(EvalSet("val", cache, reader, [int(r) for r in reader.indices("val")]))
    else:
        print(f"eval: --cache {cache} holds no {', '.join(missing_eval_fields(reader))}: val split skipped")
    if unseen_url is not None:
        unseen = open_store(unseen_url, "--unseen-cache")
        check_eval_fields(unseen, unseen_url, "--unseen-cache")
        if unseen.fingerprint != reader.fingerprint:
            raise DistillCacheError(
                f"--unseen-cache {unseen_url} was made by another teacher than --cache {cache}; "
                "cache the unseen prompts with the same teacher"
            )
        sets.append(EvalSet("unseen", unseen_url, unseen, [int(r) for r in unseen.indices(None)]))
    for eval_set in sets:
        eval_set.rows = eval_set.rows[: limit or None]
    sets = [eval_set for eval_set in sets if eval_set.rows]
    if not sets:
        raise DistillCacheError(
            f"--cache {cache} has no val rows and there is no unseen-prompt store; re-cache with "
            "--val-fraction > 0 or pass --unseen-cache STORE"
        )
    return reader, sets


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
            f"but --cache {cache} holds teacher {reader.teacher['source']!r}; evaluate on its own store"
        )
