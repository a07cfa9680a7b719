"""store.json: the format version, the teacher (identity and where to load it), the capture settings,
the field specs, and a digest of all of it.

    {"format_version": 2, "fingerprint": {pipeline_class, weights_hash, denoiser_hash},
     "teacher": {"source": ..., "revision": ...}, "settings": {...}, "fields": {name: {dtype, shape}},
     "digest": sha256 of the canonical JSON of everything above}

Written once, by the first commit to a store; every later writer must bring an equal fingerprint,
settings and fields, or it is refused with the keys that differ (the teacher record may differ: it
only says where one copy of the teacher lives). A reader refuses any other format version, and a
store.json whose content does not match its digest (a flipped byte is one clear line, never a
silently changed setting).
"""

import hashlib
import json
from dataclasses import dataclass

from shared.errors import DistillCacheError
from shared.store.fingerprint import canonical_json, check_fingerprint, check_teacher_record
from shared.store.paths import StoreLocation
from shared.store.schema import FieldSpec, check_fields, check_name

FORMAT_VERSION = 2
STORE_JSON = "store.json"
DIGEST_KEY = "digest"


def json_copy(value: object, what: str) -> dict:
    """`value` as plain JSON (tuples become lists), so that equal settings compare equal."""
    try:
        copied = json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as error:
        raise DistillCacheError(f"the store's {what} must be plain JSON values: {error}") from None
    if not isinstance(copied, dict):
        raise DistillCacheError(f"the store's {what} must be a dict, got {type(value).__name__}")
    return copied


def content_digest(content: dict) -> str:
    """sha256 of the canonical JSON of store.json without its digest."""
    return hashlib.sha256(canonical_json(content).encode()).hexdigest()


@dataclass(frozen=True)
class StoreMetadata:
    fingerprint: dict
    teacher: dict
    settings: dict
    fields: dict[str, FieldSpec]
    format_version: int = FORMAT_VERSION

    def to_json(self) -> dict:
        content = {
            "format_version": self.format_version,
            "fingerprint": self.fingerprint,
            "teacher": self.teacher,
            "settings": self.settings,
            "fields": {name: spec.to_json() for name, spec in self.fields.items()},
        }
        return {**content, DIGEST_KEY: content_digest(content)}

    @classmethod
    def create(cls, fingerprint: dict, teacher: dict, settings: dict, fields: dict) -> "StoreMetadata":
        return cls(
            check_fingerprint(json_copy(fingerprint, "fingerprint"), "store"),
            check_teacher_record(json_copy(teacher, "teacher record"), "store"),
            json_copy(settings, "settings"),
            check_fields(fields),
        )

    @classmethod
    def from_json(cls, data: object, url: str) -> "StoreMetadata":
        where = f"{url}/{STORE_JSON}"
        if not isinstance(data, dict) or "format_version" not in data:
            raise DistillCacheError(f"{where} is not a distillcache store description")
        if data["format_version"] == 1:
            raise DistillCacheError(
                f"{url} is a store of format 1, which this distillcache no longer reads (format 2 checks every "
                "read and names the teacher portably); capture it again with `teacher-cache run --out NEW_STORE`"
            )
        if data["format_version"] != FORMAT_VERSION:
            raise DistillCacheError(
                f"{url} has store format version {data['format_version']!r}; this distillcache reads "
                f"version {FORMAT_VERSION}: use the distillcache version that wrote it"
            )
        content = {key: value for key, value in data.items() if key != DIGEST_KEY}
        if data.get(DIGEST_KEY) != content_digest(content):
            raise DistillCacheError(
                f"{where} does not match its digest: the store's description is damaged; "
                "restore store.json from a good copy of the store"
            )
        fields = data.get("fields")
        if not isinstance(fields, dict) or not fields:
            raise DistillCacheError(f"{where} lists no fields; the store is damaged")
        specs = {
            check_name(name, f"{url}: field"): FieldSpec.from_json(spec) for name, spec in fields.items()
        }
        return cls(
            check_fingerprint(json_copy(data.get("fingerprint"), "fingerprint"), where),
            check_teacher_record(json_copy(data.get("teacher"), "teacher record"), where),
            json_copy(data.get("settings"), "settings"),
            check_fields(specs),
        )


def read_metadata(location: StoreLocation) -> StoreMetadata | None:
    """The store's description, or None when there is no store here yet."""
    if not location.exists(STORE_JSON):
        return None
    try:
        data = json.loads(location.read_bytes(STORE_JSON))
    except (ValueError, UnicodeDecodeError) as error:
        raise DistillCacheError(
            f"{location.url}/{STORE_JSON} is not valid JSON ({error}); the store is damaged"
        ) from None
    return StoreMetadata.from_json(data, location.url)


def write_metadata(location: StoreLocation, metadata: StoreMetadata) -> None:
    location.write_atomic(STORE_JSON, json.dumps(metadata.to_json(), indent=2).encode())


def differences(existing: StoreMetadata, wanted: StoreMetadata) -> list[str]:
    """Human-readable differences of teacher identity, settings and fields; [] when they agree."""
    found = []
    for section in ("fingerprint", "settings"):
        old, new = getattr(existing, section), getattr(wanted, section)
        for key in sorted(set(old) | set(new)):
            if canonical_json(old.get(key)) != canonical_json(new.get(key)):
                found.append(
                    f"{section}.{key}: {_short(old.get(key))} in the store, {_short(new.get(key))} here"
                )
    for name in sorted(set(existing.fields) | set(wanted.fields)):
        old, new = existing.fields.get(name), wanted.fields.get(name)
        if old != new:
            found.append(
                f"field {name}: {_short(old and old.to_json())} in the store, {_short(new and new.to_json())} here"
            )
    return found


def refuse_mismatch(existing: StoreMetadata, wanted: StoreMetadata, url: str) -> None:
    found = differences(existing, wanted)
    if found:
        listed = "; ".join(found[:4]) + (f"; and {len(found) - 4} more" if len(found) > 4 else "")
        raise DistillCacheError(
            f"{url} was made with another teacher, other capture settings or other fields ({listed}); "
            "write to a new store, or use the settings the store was made with"
        )


def _short(value: object, limit: int = 60) -> str:
    text = canonical_json(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
