"""The benches' store at runs/bench/...: one found at the path is used only when its own store.json and
manifest say it is what the bench builds (teacher, steps, field groups, 64 samples, the fields lcm
reads); else it is built again, with one line saying why (bench/bench_train.py ensure_bench_store)."""

import shutil

import numpy as np
import pytest

import bench.bench_train as bench_train
from bench.bench_train import CACHE_VARIANT, BenchSettings, bench_store_mismatch, ensure_bench_store
from shared.store import FieldSpec, StoreWriter, sample_id_for
from teacher_cache.config import ALL_FIELD_GROUPS

FINGERPRINT = {"pipeline_class": "BenchPipeline", "weights_hash": "4" * 64, "denoiser_hash": "5" * 64}
LCM_FIELDS = ("noised.x_t", "noised.timestep", "noised.next_timestep", "noised.out_cond", "noised.out_uncond")
# What `python -m bench ddp` needs, written out: the embedded teacher, 50 steps (teacher-cache run's
# default), every field group, 64 rows.
BENCH = dict(teacher="embedded:default_teacher", steps=50, groups=list(ALL_FIELD_GROUPS), rows=64)


def write_store(
    path, teacher, steps, groups, rows, fields=(*LCM_FIELDS, "cond.encoder_hidden_states")
) -> str:
    """A store with tiny arrays and the records the check reads: teacher source, settings, rows."""
    writer = StoreWriter(
        str(path),
        fingerprint=FINGERPRINT,
        teacher={"source": teacher, "revision": None},
        settings={"num_inference_steps": steps, "guidance_scale": 2.0, "field_groups": groups},
        fields={name: FieldSpec("float16", (2,)) for name in fields},
    )
    samples = [
        {"sample_id": sample_id_for(FINGERPRINT, "p", "", seed, 2.0), "prompt": "p", "negative_prompt": "",
         "seed": seed, "guidance_scale": 2.0, "num_inference_steps": steps}
        for seed in range(rows)
    ]  # fmt: skip
    writer.commit(samples, {name: np.zeros((rows, 2), np.float16) for name in fields})
    return str(path)


def test_the_bench_store_is_kept(tmp_path, monkeypatch):
    store = write_store(tmp_path / "cache", **BENCH)
    monkeypatch.setattr(bench_train, "run_variant", lambda settings: pytest.fail("rebuilt a fitting store"))
    settings = BenchSettings(variant=CACHE_VARIANT, store=store)
    assert bench_store_mismatch(settings, "lcm") is None
    ensure_bench_store(settings, "lcm")


@pytest.mark.parametrize(
    "change, reason",
    [
        (dict(rows=40), "samples 40, the bench needs 64"),
        (dict(steps=8), "steps 8, the bench needs 50"),
        (dict(teacher="/elsewhere/teacher"), "teacher /elsewhere/teacher, the bench needs embedded:default_teacher"),
        (dict(groups=["trajectory", "out", "cond"]), "field groups ['trajectory', 'out', 'cond'], the bench needs"),
        (dict(fields=(*LCM_FIELDS[:-1], "cond.encoder_hidden_states")), "the store has no noised.out_uncond"),
    ],
)  # fmt: skip
def test_an_outdated_store_is_named_and_built_again(tmp_path, monkeypatch, capsys, change, reason):
    store = write_store(tmp_path / "cache", **{**BENCH, **change})
    settings = BenchSettings(variant=CACHE_VARIANT, store=store)
    assert reason in bench_store_mismatch(settings, "lcm")

    built = []

    def build(settings):  # what the cache variant does: the path emptied, a store of these settings
        built.append(settings)
        shutil.rmtree(settings.store)
        write_store(settings.store, **BENCH)

    monkeypatch.setattr(bench_train, "run_variant", build)
    ensure_bench_store(settings, "lcm")
    assert built == [settings] and bench_store_mismatch(settings, "lcm") is None
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"bench: {store} is outdated (") and reason in line and "building it again" in line


def test_a_build_that_does_not_fit_is_refused(tmp_path, monkeypatch):
    settings = BenchSettings(variant=CACHE_VARIANT, store=str(tmp_path / "cache"))
    monkeypatch.setattr(
        bench_train, "run_variant", lambda settings: write_store(settings.store, **{**BENCH, "rows": 60})
    )
    with pytest.raises(RuntimeError, match="does not fit: samples 60, the bench needs 64"):
        ensure_bench_store(settings, "lcm")


def test_no_store_at_the_path_is_built(tmp_path, monkeypatch):
    settings = BenchSettings(variant=CACHE_VARIANT, store=str(tmp_path / "cache"))
    monkeypatch.setattr(bench_train, "run_variant", lambda settings: write_store(settings.store, **BENCH))
    ensure_bench_store(settings, "lcm")
    assert bench_store_mismatch(settings, "lcm") is None


def test_bench_ddp_builds_an_outdated_store_again(tmp_path, monkeypatch):
    import bench.bench_ddp as bench_ddp

    store = tmp_path / "cache"
    write_store(store, **{**BENCH, "steps": 8})  # an earlier bench store: 8 teacher steps
    built = []

    def build(settings):
        built.append(settings.store)
        shutil.rmtree(settings.store)
        write_store(settings.store, **BENCH)

    monkeypatch.setattr(bench_ddp, "BENCH_STORE", store)
    monkeypatch.setattr(bench_train, "run_variant", build)
    monkeypatch.setattr(bench_ddp, "run_variant", build, raising=False)  # where it was imported before
    figures = dict(seconds=1.0, updates_per_second=1.0, samples_per_second=16.0)
    monkeypatch.setattr(bench_ddp, "one_run", lambda processes, repeat: {**figures, "global_batch": 16})
    bench_ddp.main()
    assert built == [str(store)]
