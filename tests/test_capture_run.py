"""`teacher-cache run` end to end on a tiny SD teacher: field selection, NaN rejection, the summary."""

import dataclasses

import pytest

import teacher_cache.runner as runner
from shared.store import StoreReader
from shared.store.manifest import ManifestFiles
from shared.store.paths import StoreLocation
from teacher_cache.cli import main
from teacher_cache.runner import run
from tests.capture_helpers import cli_args, tiny_capture_config, write_prompts
from tests.tiny_models import save_tiny_sd_pipeline

PROMPTS = ["a red one on blue", "a blue two on red", "a green three on black", "a white four on cyan"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return save_tiny_sd_pipeline(tmp_path_factory.mktemp("teacher") / "sd")


def test_direct_distillation_fields_only(tmp_path, teacher):
    config = tiny_capture_config(
        tmp_path / "store",
        teacher,
        write_prompts(tmp_path, PROMPTS),
        fields=("noise", "cond", "final_latents"),
    )
    summary = run(config)
    reader = StoreReader(config.out)
    rows = list(range(reader.manifest.num_rows))
    # the summary's "MB of arrays": every committed array's uncompressed bytes, counted from the store
    assert summary.bytes_written == sum(reader.read(name, rows).nbytes for name in reader.fields) > 0
    assert set(reader.fields) == {
        "noise",
        "final_latents",
        "cond.encoder_hidden_states",
        "uncond.encoder_hidden_states",
    }
    assert reader.manifest.num_rows == len(PROMPTS)


def test_rows_with_nan_outputs_are_reported_and_not_committed(tmp_path, teacher, monkeypatch, capsys):
    def load_poisoned_teacher(*args, **kwargs):
        teacher = runner_load_teacher(*args, **kwargs)

        def poison(module, inputs, output):  # denoiser batch [uncond; cond]: row 1 = 2nd prompt's uncond half
            output[0][1] = float("nan")

        teacher.denoiser.register_forward_hook(poison)
        return teacher

    runner_load_teacher = runner.load_teacher
    monkeypatch.setattr(runner, "load_teacher", load_poisoned_teacher)
    in_file_order = runner.JobQueue  # batches in prompt-file order, so that we know which rows are 2nd
    monkeypatch.setattr(
        runner, "JobQueue", lambda samples, batch_size, seed: in_file_order(samples, batch_size, None)
    )
    config = tiny_capture_config(tmp_path / "store", teacher, write_prompts(tmp_path, PROMPTS), batch_size=2)
    summary = run(config)
    assert (summary.written, summary.rejected) == (2, 2)
    committed = set(StoreReader(config.out).manifest.column("prompt").to_pylist())
    assert committed == {PROMPTS[0], PROMPTS[2]}  # the 2nd of each batch of two was poisoned
    assert capsys.readouterr().err.count("NaN/Inf in the teacher's output") == 2


def test_cli_prints_a_closing_summary_resumes_and_compacts_past_the_threshold(tmp_path, teacher, capsys):
    config = tiny_capture_config(tmp_path / "store", teacher, write_prompts(tmp_path, PROMPTS))
    argv = cli_args(config)  # 4 jobs in batches of 2: two commits, two manifest files
    assert main([*argv, "--compact-after", "3"]) == 0
    out = capsys.readouterr().out
    assert "4 samples written, 0 already in the store, 0 rejected" in out and "folded" not in out
    assert main([*argv, "--compact-after", "2"]) == 0
    out = capsys.readouterr().out
    assert "0 samples written, 4 already in the store" in out and "4 samples" in out and "MB on disk" in out
    assert "folded 2 manifest files into one (--compact-after 2)" in out
    files = ManifestFiles(StoreLocation.open(config.out), [])
    files.refresh()
    assert [name.split("/")[0] for name in files.live_names()] == ["compacted"]
    assert sorted(StoreReader(config.out).manifest.column("prompt").to_pylist()) == sorted(PROMPTS)


def test_a_resumed_run_reads_each_manifest_file_once(tmp_path, teacher, monkeypatch):
    """The resume check and the writer share one read of the (compacted) manifest: before, the writer
    read every file again at its first look at what is committed."""
    import collections

    import shared.store.manifest as manifest
    from shared.store.compaction import compact_store

    config = tiny_capture_config(tmp_path / "store", teacher, write_prompts(tmp_path, PROMPTS))
    run(dataclasses.replace(config, limit=2, batch_size=1))  # two commits, folded into one compacted file
    compact_store(config.out)
    compact_store(config.out, grace_seconds=0)
    read = collections.Counter()
    read_manifest_file = manifest.read_manifest_file

    def counted(location, name, *args, **kwargs):
        read[name] += 1
        return read_manifest_file(location, name, *args, **kwargs)

    monkeypatch.setattr(manifest, "read_manifest_file", counted)
    summary = run(config)
    assert (summary.skipped, summary.written) == (2, 2)
    assert any(name.startswith("compacted/") for name in read) and max(read.values()) == 1, read
