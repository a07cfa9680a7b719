"""Summarise a mutmut run into runs/mutate/summary.md: the mutation score per module and every
surviving mutant with its diff (what docs/testing.md must kill with a test or call equivalent).

    .venv/bin/python tools/mutation_summary.py [--out runs/mutate]     # after `mutmut run` (make mutate)

Score = killed / (killed + survived + timeout + suspicious): mutants that were not checked (a
partial run) or that no test reaches are counted apart, never as killed.
"""

import argparse
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

MUTMUT = [sys.executable, "-m", "mutmut"]
SCORED = ("killed", "survived", "timeout", "suspicious")


def mutant_statuses() -> dict[str, str]:
    """{mutant name: status} from `mutmut results --all true` (lines "    name: status")."""
    listing = subprocess.run(
        [*MUTMUT, "results", "--all", "true"], capture_output=True, text=True, check=True
    )
    statuses = {}
    for line in listing.stdout.splitlines():
        name, _, status = line.strip().rpartition(": ")
        if name:
            statuses[name] = status
    return statuses


def module_of(mutant: str) -> str:
    """shared.schedule.x_NoiseSchedule__alpha_sigma__mutmut_3 -> shared.schedule"""
    return ".".join(part for part in mutant.split(".") if not part.startswith(("x_", "x\u01c1")))


def score(counts: Counter) -> str:
    scored = sum(counts[s] for s in SCORED)
    return f"{100 * counts['killed'] / scored:.1f} %" if scored else "n/a"


def summary(statuses: dict[str, str]) -> str:
    by_module: dict[str, Counter] = defaultdict(Counter)
    for name, status in statuses.items():
        by_module[module_of(name)][status] += 1
    total = sum(by_module.values(), Counter())
    lines = [
        "# Mutation testing summary (mutmut; `make mutate`)",
        "",
        "| module | killed | survived | timeout | no tests | not checked | score |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for module, counts in sorted(by_module.items()) + [("**all**", total)]:
        lines.append(
            f"| {module} | {counts['killed']} | {counts['survived']} | {counts['timeout']} | "
            f"{counts['no tests']} | {counts['not checked']} | {score(counts)} |"
        )
    survivors = sorted(name for name, status in statuses.items() if status == "survived")
    lines += ["", f"## Surviving mutants ({len(survivors)})", ""]
    for name in survivors:
        shown = subprocess.run([*MUTMUT, "show", name], capture_output=True, text=True)
        lines += [f"### {name}", "```diff", shown.stdout.strip(), "```", ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/mutate")
    out = Path(parser.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    text = summary(mutant_statuses())
    (out / "summary.md").write_text(text)
    print("\n".join(text.splitlines()[:40]))
    print(f"-> {out / 'summary.md'}")


if __name__ == "__main__":
    main()
