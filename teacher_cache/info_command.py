"""`teacher-cache info STORE [--json]`: what a store holds — samples, duplicates, fields, teacher, settings, bytes.

Exit status 0, or 2 with one line when the store cannot be read: store.json, every manifest file and
every array's metadata are checked (the rows themselves: `teacher-cache verify`).

teacher-cache info runs/cache
teacher-cache info s3://bucket/cache --json      # one JSON object, for scripts
"""

import argparse
import json

from shared.store import StoreReader

HELP = "show what a store holds: samples, fields (dtype, shape), teacher, settings, bytes"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store", metavar="STORE", help="store folder or fsspec URL (memory://, s3://, ...)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def duplicate_summary(reader: StoreReader) -> dict:
    """Rows of samples committed more than once (writers racing): skipped by readers, bytes wasted."""
    row_bytes = sum(spec.sample_nbytes for spec in reader.fields.values())
    return {"rows": reader.duplicates.num_rows, "bytes": reader.duplicates.num_rows * row_bytes}


def store_summary(reader: StoreReader) -> dict:
    """format_version, samples, splits, writers, fields {name: {dtype, shape, bytes_per_sample}},
    fingerprint (teacher identity), teacher (source, revision), settings, bytes."""
    return {
        "store": reader.location.url,
        "format_version": reader.format_version,
        "samples": len(reader),
        "splits": {split: len(reader.indices(split)) for split in ("train", "val")},
        "writers": len(reader.writers),
        "duplicates": duplicate_summary(reader),
        "fields": {
            name: {"dtype": spec.dtype, "shape": list(spec.shape), "bytes_per_sample": spec.sample_nbytes}
            for name, spec in reader.fields.items()
        },
        "fingerprint": reader.fingerprint,
        "teacher": reader.teacher,
        "settings": reader.settings,
        "bytes": reader.nbytes,
    }


def format_summary(summary: dict) -> str:
    splits = ", ".join(f"{name} {count}" for name, count in summary["splits"].items())
    lines = [
        f"store      {summary['store']} (format {summary['format_version']})",
        f"samples    {summary['samples']} ({splits}) from {summary['writers']} writer(s)",
        f"duplicates {summary['duplicates']['rows']} rows committed twice, "
        f"{human_bytes(summary['duplicates']['bytes'])} uncompressed (skipped by readers)",
        f"bytes      {human_bytes(summary['bytes'])} on disk",
        "teacher",
        *(
            f"  {key:<24} {brief(value)}"
            for key, value in {**summary["teacher"], **summary["fingerprint"]}.items()
        ),
        "settings",
        *(f"  {key:<24} {brief(value)}" for key, value in summary["settings"].items()),
        "fields     (dtype, per-sample shape, uncompressed bytes per sample)",
        *(
            f"  {name:<40} {spec['dtype']:<9} {str(tuple(spec['shape'])):<20} {human_bytes(spec['bytes_per_sample'])}"
            for name, spec in summary["fields"].items()
        ),
    ]
    return "\n".join(lines)


def brief(value: object, limit: int = 80) -> str:
    """A JSON value on one line, long lists and dicts shortened (--json prints them whole)."""
    text = json.dumps(value)
    if len(text) <= limit:
        return text
    if isinstance(value, list):
        return f"[{', '.join(json.dumps(item) for item in value[:3])}, ...] ({len(value)} values)"
    return text[: limit - 3] + "..."


def human_bytes(count: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} TB"


def main(args: argparse.Namespace) -> int:
    reader = StoreReader(args.store)  # store.json and every manifest checked against their digests
    reader.check_arrays()
    summary = store_summary(reader)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0
