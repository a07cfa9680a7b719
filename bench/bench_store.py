"""Store read benchmark: random (sample, step) training examples from SD1.5-shaped fields.

    .venv/bin/python -m bench store        # or `make bench` (every benchmark)

Fields as phase one writes them for SD1.5: a float16 trajectory (51, 4, 64, 64) and text
embeddings (77, 768) per sample, random normal values (latents compress about as badly). One
training example = trajectory[sample, step] + the sample's embeddings; a batch has 64. Compared
in the same run, on the same bytes, with a warm page cache:
- memmap: flat uncompressed .npy files, fancy-indexed (the upper bound: a memcpy per example);
- zarr, per example: one reader call per (sample, step) pair (what a naive loader does);
- zarr, per batch: one batched read of the 64 samples' whole rows, then pick the steps;
- zarr, shuffled blocks: `example_batches` (64 samples read whole, their pairs shuffled in memory).
The cost of verifying every read: the two training paths (one batched read per batch, and
example_batches) on the zstd store, with the reader's row checksum check on and off
(`StoreReader(url, verify=False)`), run in turns (on, off, on, off, ...), in process CPU seconds
(all threads), which a busy shared machine disturbs far less than wall time; medians of the turns.
Both include Zarr's CRC-32C of each encoded chunk (part of the format), paid with the check off too.
"""

import os
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

from shared.store import FieldSpec, StoreReader, StoreWriter, example_batches

SAMPLES = 192
STEPS = 51
BATCH = 64
TRAJECTORY = FieldSpec("float16", (STEPS, 4, 64, 64))
EMBEDDINGS = FieldSpec("float16", (77, 768))
FIELDS = {"trajectory": TRAJECTORY, "cond.encoder_hidden_states": EMBEDDINGS}


def bench_writer(url, fields: dict[str, FieldSpec], val_fraction: float = 0.0, **options) -> StoreWriter:
    """A StoreWriter of a benchmark store (a made-up teacher; `options`: compressor, clevel)."""
    return StoreWriter(
        url,
        fingerprint={"pipeline_class": "BenchPipeline", "weights_hash": "bench", "denoiser_hash": "bench"},
        teacher={"source": "bench", "revision": None},
        settings={"val_fraction": val_fraction},
        fields=fields,
        **options,
    )


def build(folder: Path, compressor: str) -> tuple[Path, float]:
    """A store of SAMPLES random samples (and .npy copies when compressor == "none"); seconds to write."""
    url = folder / f"store-{compressor}"
    writer = bench_writer(url, FIELDS, compressor=compressor)
    generator = torch.Generator().manual_seed(0)
    seconds = 0.0
    memmaps = {}
    if compressor == "none":
        memmaps = {
            name: np.lib.format.open_memmap(folder / f"{name}.npy", "w+", np.float16, (SAMPLES, *spec.shape))
            for name, spec in FIELDS.items()
        }
    for start in range(0, SAMPLES, 16):
        arrays = {
            name: torch.randn(16, *spec.shape, generator=generator).half() for name, spec in FIELDS.items()
        }
        rows = [
            {"sample_id": f"{index:08d}", "prompt": "p", "negative_prompt": "", "seed": index,
             "guidance_scale": 7.5, "num_inference_steps": STEPS - 1}
            for index in range(start, start + 16)
        ]  # fmt: skip
        started = time.perf_counter()
        writer.commit(rows, arrays)
        seconds += time.perf_counter() - started
        for name, memmap in memmaps.items():
            memmap[start : start + 16] = arrays[name].numpy()
    for memmap in memmaps.values():
        memmap.flush()
    return url, seconds


def cpu_rates_in_turns(run_checked, run_unchecked, turns: int = 5) -> tuple[float, float]:
    """Median examples per process-CPU-second of two callables returning an example count, run in turns."""
    rates: dict[str, list[float]] = {"checked": [], "unchecked": []}
    for _ in range(turns):
        for name, run in (("checked", run_checked), ("unchecked", run_unchecked)):
            started = time.process_time()
            examples = run()
            rates[name].append(examples / (time.process_time() - started))
    return statistics.median(rates["checked"]), statistics.median(rates["unchecked"])


def verification_cost(url: Path, rng: np.random.Generator) -> dict:
    """Examples per CPU-second with the row checksum check on and off, for both training read paths."""
    checked, unchecked = StoreReader(url), StoreReader(url, verify=False)

    def batches(reader, count: int = 4):
        run_batch = per_batch_reads(reader, rng)

        def run() -> int:
            for _ in range(count):
                run_batch()
            return count * BATCH

        return run

    per_batch = cpu_rates_in_turns(batches(checked), batches(unchecked))
    epochs = cpu_rates_in_turns(
        lambda: shuffled_block_epoch(checked)[0], lambda: shuffled_block_epoch(unchecked)[0], turns=3
    )
    return {
        "per_batch": {"checked": per_batch[0], "unchecked": per_batch[1]},
        "shuffled_blocks": {"checked": epochs[0], "unchecked": epochs[1]},
    }


def best_rate(run_once, repeats: int = 3) -> float:
    """The best examples/s of `repeats` calls of `run_once() -> (examples, seconds)`: other load only slows a run."""
    return max(examples / seconds for examples, seconds in (run_once() for _ in range(repeats)))


def timed_batches(run_batch, seconds: float = 1.0):
    """`run_once` for best_rate: call `run_batch()` (one batch) for about `seconds`."""

    def run_once() -> tuple[int, float]:
        run_batch()  # warm up
        batches, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            run_batch()
            batches += 1
        return batches * BATCH, time.perf_counter() - started

    return run_once


def memmap_batches(folder: Path, rng: np.random.Generator):
    trajectory = np.load(folder / "trajectory.npy", mmap_mode="r")
    embeddings = np.load(folder / "cond.encoder_hidden_states.npy", mmap_mode="r")

    def run_batch() -> None:
        rows, steps = rng.integers(0, SAMPLES, BATCH), rng.integers(0, STEPS, BATCH)
        batch = (torch.from_numpy(trajectory[rows, steps]), torch.from_numpy(embeddings[rows]))
        assert batch[0].shape == (BATCH, 4, 64, 64)

    return run_batch


def per_example_batches(reader: StoreReader, rng: np.random.Generator):
    def run_batch() -> None:
        for row, step in zip(rng.integers(0, SAMPLES, BATCH), rng.integers(0, STEPS, BATCH)):
            reader.read("trajectory", [row], steps=[step])
            reader.read("cond.encoder_hidden_states", [row])

    return run_batch


def per_batch_reads(reader: StoreReader, rng: np.random.Generator):
    def run_batch() -> None:
        rows, steps = rng.integers(0, SAMPLES, BATCH), rng.integers(0, STEPS, BATCH)
        trajectory = reader.read("trajectory", rows)[torch.arange(BATCH), torch.as_tensor(steps)]
        embeddings = reader.read("cond.encoder_hidden_states", rows)
        assert trajectory.shape == (BATCH, 4, 64, 64) and embeddings.shape == (BATCH, 77, 768)

    return run_batch


def shuffled_block_epoch(reader: StoreReader) -> tuple[int, float]:
    """(examples, seconds) of one whole epoch of example_batches (every (sample, step) pair once)."""
    batches = example_batches(
        reader,
        reader.indices(),
        batch_size=BATCH,
        step_fields={"trajectory": (0,)},
        sample_fields=("cond.encoder_hidden_states",),
        block_rows=64,
        generator=torch.Generator().manual_seed(0),
    )
    examples, started = 0, time.perf_counter()
    for batch in batches:
        examples += len(batch["row"])
    return examples, time.perf_counter() - started


def main() -> dict:
    rng = np.random.default_rng(0)
    raw_bytes = SAMPLES * sum(spec.sample_nbytes for spec in FIELDS.values())
    with tempfile.TemporaryDirectory(prefix="bench-store-") as temporary:
        folder = Path(temporary)
        figures: dict = {"samples": SAMPLES, "batch": BATCH, "raw_mb": raw_bytes / 1e6}
        for compressor in ("zstd", "none"):
            url, write_seconds = build(folder, compressor)
            reader = StoreReader(url)
            figures[compressor] = {
                "write_mb_per_s": raw_bytes / 1e6 / write_seconds,
                "stored_mb": reader.nbytes / 1e6,
                "per_example": best_rate(timed_batches(per_example_batches(reader, rng))),
                "per_batch": best_rate(timed_batches(per_batch_reads(reader, rng))),
                "shuffled_blocks": best_rate(partial(shuffled_block_epoch, reader)),
            }
            if compressor == "zstd":
                figures["verification"] = verification_cost(url, rng)
        figures["memmap"] = best_rate(timed_batches(memmap_batches(folder, rng)))
    figures["load_average"] = os.getloadavg()[0]
    print_table(figures)
    return figures


def print_table(figures: dict) -> None:
    memmap = figures["memmap"]
    print(
        f"{figures['samples']} samples of trajectory {TRAJECTORY.shape} + embeddings {EMBEDDINGS.shape}, float16, "
        f"{figures['raw_mb']:.0f} MB raw; batches of {figures['batch']} (sample, step) examples; warm page cache; "
        f"best of 3; load average {figures['load_average']:.1f} on {os.cpu_count()} cores"
    )
    print(f"{'reader':<62}{'examples/s':>12}{'x memmap':>10}")
    print(f"{'memmap .npy, uncompressed (fancy indexing)':<62}{memmap:>12,.0f}{1.0:>10.3f}")
    for compressor in ("zstd", "none"):
        result = figures[compressor]
        label = "zstd" if compressor == "zstd" else "none"
        for key, name in (
            ("per_example", "one read per example"),
            ("per_batch", "one batched read of 64 whole rows per batch"),
            ("shuffled_blocks", "example_batches (64 rows whole, pairs shuffled)"),
        ):
            print(f"{f'zarr {label}: {name}':<62}{result[key]:>12,.0f}{result[key] / memmap:>10.3f}")
    print(
        f"\n{'zstd store, examples per CPU-second (median of turns)':<62}{'checked':>12}{'unchecked':>12}{'ratio':>8}"
    )
    for key, name in (("per_batch", "one batched read per batch"), ("shuffled_blocks", "example_batches")):
        checked = figures["verification"][key]["checked"]
        unchecked = figures["verification"][key]["unchecked"]
        label = f"row CRC-32C check on every read: {name}"
        print(f"{label:<62}{checked:>12,.0f}{unchecked:>12,.0f}{checked / unchecked:>8.3f}")
    for compressor in ("zstd", "none"):
        result = figures[compressor]
        print(
            f"compressor {compressor}: written at {result['write_mb_per_s']:.0f} MB/s, "
            f"{result['stored_mb']:.0f} MB on disk ({result['stored_mb'] / figures['raw_mb']:.2f} of raw)"
        )
