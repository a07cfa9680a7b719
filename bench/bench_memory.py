"""Peak memory of lcm LoRA training on the SD1.5-shaped teacher with the frozen weights in bf16, cached
vs online, and the student's own peak split into parts (issue 14).

    make bench BENCH=memory            # = python -m bench memory (~6 GB of RAM, ~15 CPU-minutes)

The pairs of bench_train.py ("lcm-cached" vs "lcm-online", each variant in its own process), run
here with `--base-dtype bf16 --mixed-precision bf16` on both sides, as the reference script does
(`weight_dtype`): the online teacher UNet, text encoder and VAE, and the student's frozen base, are
all in bf16. The LoRA adapters and their AdamW state stay in float32.

Memory is measured as RSS on the CPU. Every variant runs with MALLOC_MMAP_THRESHOLD_=65536, so each
allocation of 64 KiB or more is its own mapping and goes back to the OS when freed. RSS then
follows the live tensors, as a GPU allocator's count would, instead of glibc's high-water heap.
For each variant we report:
- training peak: the whole process's peak over the training steps, after loading. On a GPU,
  loading happens on the host; here loading casts float32 weights to bf16 one tensor at a time.
- added: the training peak minus the RSS right after the imports (the ~470 MiB torch runtime that
  both sides share, the counterpart of the CUDA context), i.e. the CPU counterpart of
  `torch.cuda.max_memory_allocated`;
- the student's parts: frozen base weights and adapter state (parameters, gradients, AdamW
  moments), counted exactly from the tensors; the step's transient, i.e. the RSS peak of a step
  above what stays resident between steps, minus the gradients (activations, the online
  teacher's passes and the VAE encode, temporaries).

Scenario: gradient checkpointing, 2 torch threads per variant, 1 warm-up step and 1 timed step,
batch 2, 2 pairs, on a store of 64 px images (8x8 latents; 4 rows, 8 teacher steps). Why so small:
this machine's CPU (AVX2, no AVX512-BF16 / AMX) has no bf16 arithmetic, so torch emulates it; a
1024x1024 bf16 matmul takes 2.6 s of CPU against 0.05 s in float32 (50x). One bf16 step at 256 px
would take some 15 CPU-minutes per variant, at 512 px an hour. The small latents make the
activations small, which is the case most favourable to the cached / online ratio: both sides hold
the same student, so activations raise the ratio toward 1 (docs/scaling.md). For the same reason
the step times of this benchmark say nothing about a GPU; the float32 step ratio at 256 px is
`make bench BENCH=train`'s. On hardware with bf16, add (label, store, repeats, settings) rows to
PAIRS for 256 / 512 px stores (SD15_STORE is bench_train's 256 px one).
"""

import os
import statistics
import sys

from bench.bench_train import (
    CACHE_VARIANT,
    SD15_CACHE,
    SD15_STORE,
    SD15_TEACHER,
    SD15_TRAIN,
    BenchSettings,
    comparison,
    ensure_bench_store,
    run_variant,
    step_cost,
)

LOW_PRECISION = dict(base_dtype="bf16", mixed_precision="bf16")
SMALL_STORE = SD15_STORE.parent / "sd15_cache_64"
SMALL_CACHE = dict(SD15_CACHE, cache_size=64, threads=2)
TRAIN = dict(SD15_TRAIN, warmup_steps=1, timed_steps=1, gradient_checkpointing=True, threads=2)
# (label, store, repeats, settings): each a cached/online pair run `repeats` times
PAIRS = [("64 px, batch 2", SMALL_STORE, 2, TRAIN)]
ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def added(run: dict) -> float:
    return run["training_peak_rss_mib"] - run["rss_after_imports_mib"]


def pair_figures(cached: dict, online: dict) -> dict:
    figures = comparison({"cached": cached, "online": online}, "cached", "online")
    figures["training_peak_ratio"] = cached["training_peak_rss_mib"] / online["training_peak_rss_mib"]
    figures["training_added_ratio"] = added(cached) / added(online)
    return figures


def print_rows(label: str, runs: list[dict]) -> None:
    for run in runs:
        print(
            f"| {label} | {run['variant']} | {step_cost(run):.1f} | {run['training_peak_rss_mib']:.0f} | "
            f"{added(run):.0f} | {run['student_weights_mib']:.0f} | {run['adapter_state_mib']:.0f} | "
            f"{run['step_transient_mib_median']:.0f} | {run['source_mib']:.0f} |"
        )


def main() -> dict:
    from bench.sd15_shaped_teacher import save_sd15_shaped_teacher

    os.environ.update(ALLOCATOR_ENV)  # inherited by every variant's process
    teacher = save_sd15_shaped_teacher(SD15_TEACHER)
    for _, store, _, _ in PAIRS:  # kept when it is what this bench builds, else built again
        cache = SMALL_CACHE if store == SMALL_STORE else dict(SD15_CACHE, threads=2)
        settings = BenchSettings(variant=CACHE_VARIANT, store=str(store), teacher=str(teacher), **cache)
        ensure_bench_store(settings, "lcm")
    print(
        "| scenario | variant | step CPU (s) | training peak RSS (MiB) | added (MiB) | student base (MiB) "
        "| adapter state (MiB) | step transient (MiB) | teacher (MiB) |\n|---|---|---:|---:|---:|---:|---:|---:|---:|"
    )
    results = {}
    for label, store, repeats, settings in PAIRS:
        pairs, runs = [], []
        for _ in range(repeats):
            cached, online = (
                run_variant(BenchSettings(variant=variant, store=str(store), **LOW_PRECISION, **settings))
                for variant in ("lcm-cached", "lcm-online")
            )
            print_rows(label, [cached, online])
            runs += [cached, online]
            pairs.append(pair_figures(cached, online))
        medians = {name: statistics.median(pair[name] for pair in pairs) for name in pairs[0]}
        results[label] = {"medians": medians, "pairs": pairs, "runs": runs}
        print(
            f"{label}: median of {repeats}: online / cached step {medians['speedup']:.2f}x (target >= 1.5x); "
            f"cached / online training peak added {medians['training_added_ratio']:.3f}, whole process "
            f"{medians['training_peak_ratio']:.3f} (target <= 0.5)",
            flush=True,
        )
    results["smaller_gpus"] = recipe_table()
    return results


# ---------------------------------------------------------------- the "smaller GPUs" table (docs/scaling.md)

MIB = 2**20
BYTES = {"fp32": 4, "bf16": 2}
MOMENT_BYTES = {"adamw": 8, "adamw8bit": 2}  # two moments per trained parameter
RECIPES = [  # family, student, base dtype, optimizer, batch; all with gradient checkpointing
    ("sd15", "lora", "bf16", "adamw", 1),
    ("sd15", "lora", "bf16", "adamw", 8),
    ("sd15", "lora", "bf16", "adamw8bit", 8),
    ("sd15", "lora", "fp32", "adamw", 8),
    ("sd15", "full", "fp32", "adamw", 8),
    ("sd15", "full", "fp32", "adamw8bit", 8),
    ("sdxl", "lora", "bf16", "adamw", 1),
    ("sdxl", "lora", "bf16", "adamw8bit", 1),
    ("sdxl", "lora", "bf16", "adamw8bit", 4),
    ("sdxl", "full", "fp32", "adamw8bit", 1),
]
LATENT_SIDE = {"sd15": 64, "sdxl": 128}  # 512 px and 1024 px
# The earlier float32 run of `make bench BENCH=train` (docs/benchmarks.md, SD1.5-shaped LoRA lcm, 256 px,
# batch 2, gradient checkpointing, medians of 3): cached RSS added 5,314 MiB, tensors held 4,048 MiB,
# gradients 256.5 MiB -> 1,009 MiB of activations (and allocator slack) for 2 x 32 x 32 latent pixels.
EARLIER_FP32_ACTIVATIONS_MIB_PER_PIXEL = (5314 - 4048 - 256.5) / (2 * 32 * 32)


def recipe_table() -> list[dict]:
    """Memory of each recipe from its parts: weights and trained state from exact parameter counts,
    activations from the float32 256 px step (per sample and latent pixel), scaled linearly. The bf16
    runs of this benchmark are at 8x8 latents, too small to scale from (fixed costs dominate)."""
    from bench.model_sizes import parameter_counts

    counts = parameter_counts()
    per_pixel, source = (
        EARLIER_FP32_ACTIVATIONS_MIB_PER_PIXEL,
        "measured at 256 px in float32 (an upper bound for bf16)",
    )
    rows = []
    print(
        f"\nactivations: {per_pixel * 1024:.0f} MiB per sample per 32x32 latent pixels ({source})\n"
        "| model | student | base | optimizer | batch | weights | trained state | activations | total (GiB) "
        "| online script adds |\n|---|---|---|---|---:|---:|---:|---:|---:|---:|"
    )
    for family, student, base, optimizer, batch in RECIPES:
        size = counts[family]
        trained = size["lora_r64"] if student == "lora" else size["unet"]
        weights = size["unet"] * BYTES[base] / MIB if student == "lora" else 0.0
        # parameters + gradients (float32) + moments; a full student also keeps its float32 EMA copy
        state = (
            trained * (4 + 4 + MOMENT_BYTES[optimizer]) + (size["unet"] * 4 if student == "full" else 0)
        ) / MIB
        activations = per_pixel * LATENT_SIDE[family] ** 2 * batch
        teacher = (size["unet"] + size["text_encoders"] + size["vae"]) * 2 / MIB  # bf16, passes left out
        row = dict(
            family=family,
            student=student,
            base=base,
            optimizer=optimizer,
            batch=batch,
            weights_gib=weights / 1024,
            state_gib=state / 1024,
            activations_gib=activations / 1024,
            total_gib=(weights + state + activations) / 1024,
            online_adds_gib=teacher / 1024,
        )
        rows.append(row)
        print(
            f"| {family} | {student} | {base} | {optimizer} | {batch} | {row['weights_gib']:.1f} | "
            f"{row['state_gib']:.1f} | {row['activations_gib']:.1f} | {row['total_gib']:.1f} | "
            f"{row['online_adds_gib']:.1f} |"
        )
    return rows


if __name__ == "__main__":
    if sys.argv[1:] == ["--table"]:  # only the smaller-GPUs table (seconds)
        recipe_table()
    else:
        main()
