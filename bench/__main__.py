"""`make bench` = `python -m bench [NAME ...]`: run every benchmark module `bench/bench_*.py`.

Each module has `main() -> dict`; it prints its own table and returns its figures, which are
collected into runs/bench/results.json (each benchmark's newest run; the others' are kept) so README
figures can be traced to the run that made them.
"""

import importlib
import json
import pkgutil
import sys
import time
from pathlib import Path

import bench


def benchmark_names() -> list[str]:
    return sorted(
        info.name for info in pkgutil.iter_modules(bench.__path__) if info.name.startswith("bench_")
    )


def main(argv: list[str]) -> int:
    available = benchmark_names()
    chosen = [f"bench_{name.removeprefix('bench_')}" for name in argv] or available
    unknown = sorted(set(chosen) - set(available))
    if unknown:
        print(f"bench: error: unknown benchmark {unknown}; choose from {available}", file=sys.stderr)
        return 2
    results = {}
    for name in chosen:
        print(f"\n=== {name} ===", flush=True)
        started = time.perf_counter()
        results[name] = importlib.import_module(f"bench.{name}").main()
        print(f"({name}: {time.perf_counter() - started:.0f} s)", flush=True)
    out = Path("runs/bench/results.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    earlier = json.loads(out.read_text()) if out.exists() else {}  # other benchmarks' last figures stay
    out.write_text(json.dumps({**earlier, **results}, indent=2, default=str))
    print(f"\nfigures written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
