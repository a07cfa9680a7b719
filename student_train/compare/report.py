"""compare's tables: per eval set, one row per model, one column per step count, each cell
"adherence % / FD" from the student's eval records (eval/report.py), and the best recipe per K.

    table = markdown_table(results, teacher_records, "unseen", steps=(1, 2, 4), full_steps=50)
    best = best_per_steps(results, "unseen", (1, 2, 4, 50))     # {"1": "direct-1", ...}
"""

from student_train.eval.report import find_record


def cell(record: dict | None) -> str:
    if record is None:
        return ""
    if "adherence" not in record:
        return f"{record.get('psnr_db', float('nan')):.2f} dB"
    return f"{record['adherence']:.1f} / {record['fd']:.0f}"


def markdown_table(
    results: list[dict], teacher_records: list[dict], set_name: str, steps, full_steps: int
) -> str:
    """Rows: the teacher (CFG, 2 passes per step; at S its cache), then each recipe with its updates
    and training seconds; cells "adherence % / FD" (PSNR to teacher@S without the judge)."""
    columns = [*steps, full_steps]
    header = (
        f"| {set_name} | updates | train (s) | "
        + " | ".join(f"@{k}" for k in columns)
        + " |\n|---|---:|---:|"
        + "---:|" * len(columns)
    )
    teacher = [find_record(teacher_records, set_name, "teacher", k, "ddim") for k in steps]
    teacher.append(find_record(teacher_records, set_name, "teacher", full_steps, "cache"))
    lines = [header, "| teacher, CFG (2 passes per step) | - | - | " + " | ".join(map(cell, teacher)) + " |"]
    for result in results:
        cells = [find_record(result["records"], set_name, "student", k) for k in columns]
        lines.append(
            f"| {result['recipe']}: {result['what']} | {result['train_steps']} | {result['train_seconds']:.0f} | "
            + " | ".join(map(cell, cells))
            + " |"
        )
    return "\n".join(lines)


def best_per_steps(results: list[dict], set_name: str, columns) -> dict[str, str]:
    """Per step count, the recipe with the highest adherence (then the lowest FD) on `set_name`."""
    best = {}
    for k in columns:
        scored = [
            (record["adherence"], -record["fd"], result["recipe"])
            for result in results
            if (record := find_record(result["records"], set_name, "student", k)) is not None
            and "adherence" in record
        ]
        if scored:
            best[str(k)] = max(scored)[2]
    return best
