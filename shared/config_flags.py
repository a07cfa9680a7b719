"""Command-line flags from a settings dataclass: each field is one --flag, with its help in `option`.

Every command's settings are one frozen dataclass; `add_config_flags` adds a flag per field to the
command's parser and `config_from_args` builds the dataclass back from the parsed flags, so a
setting is named, typed, defaulted and explained in one place.

    @dataclass(frozen=True)
    class Config:
        out: str = option(None, "output folder", required=True)        # --out OUT, required
        steps: tuple[int, ...] = option((1, 2, 4), "step counts")        # --steps 1,2,4
        guidance: float | None = option(None, "CFG scale", default_text="the recommended one")
        judge: bool = option(True, "score with the judge")                # --judge / --no-judge

    add_config_flags(parser, Config)
    config = config_from_args(Config, parser.parse_args())

The field's name gives the flag (`batch_size` -> `--batch-size`) and its annotation how the flag's
text is read: `bool` is a switch (`--x` sets a False default; a True default gets `--x/--no-x`, or
only `--no-x` when the option names that flag), `X | None` reads X (None: the flag was not given),
`tuple[X, ...]` a comma list of X ('' or 'none': empty), anything else X itself. The help of a
valued flag ends with its default, "(default: 16)", or `default_text` where the value says little.
"""

import argparse
import dataclasses
import math
import types
import typing
from collections.abc import Callable

from shared.errors import DistillCacheError


def option(
    default,
    help: str,
    required: bool = False,
    *,
    flag: str | None = None,
    type: Callable[[str], object] | None = None,
    parse: Callable[[str], object] | None = None,
    choices: tuple | None = None,
    default_text: str | None = None,
):
    """A settings field and its --flag: `help` says what it is; the rest only where needed:

    required      the flag must be given (the field has no default)
    flag          the flag's name when it is not --field-name (a True bool's `--no-x`: no `--x`)
    type          argparse's reader of the flag's text, instead of the annotation's (bad text is a usage error)
    parse         reads the flag's text when the dataclass is built, after argparse, so that its
                  DistillCacheError is the command's one-line error; the default is passed as text
    choices       the values argparse accepts
    default_text  how --help names the default (a computed or machine-specific one)
    """
    settings = {"flag": flag, "type": type, "parse": parse, "choices": choices, "default_text": default_text}
    metadata = {"help": help, **{key: value for key, value in settings.items() if value is not None}}
    if required:
        return dataclasses.field(metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def comma_list(text: str) -> tuple[str, ...]:
    """'a, b,c' -> ('a', 'b', 'c'); '' or 'none' -> ()."""
    if text.strip().lower() in ("", "none"):
        return ()
    return tuple(item.strip() for item in text.split(",") if item.strip())


def comma_separated(item_type: Callable[[str], object], items: str = "values") -> Callable[[str], tuple]:
    """An argparse type for comma lists: '1, 2' -> (1, 2) with `item_type`; an item it cannot read is a
    usage error naming `items`, e.g. "expected comma-separated step indices, got '1,x'"."""

    def read(text: str) -> tuple:
        try:
            return tuple(item_type(item) for item in comma_list(text))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {items}, got {text!r}") from None

    return read


def value_type(annotation) -> type:
    """The type a flag's text is read as: `X | None` -> X; other annotations as they are."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        (annotation,) = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    return annotation


def as_text(value) -> str:
    """A value as it is typed on the command line: (1, 2, 4) -> '1,2,4'; others as str()."""
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def shown_default(value) -> str:
    """A default as --help names it: as typed, an empty tuple as 'none' and an empty text as ''."""
    text = as_text(value)
    if text == "":
        return "none" if isinstance(value, tuple) else "''"
    return text


def text_reader(spec: dataclasses.Field, kind) -> Callable[[str], object] | None:
    """What argparse reads the flag's text with: the option's `type`, else the annotation's type
    (`tuple[X, ...]`: a comma list of X); None (the text itself) for a field with a `parse`."""
    if "parse" in spec.metadata:
        return None
    if "type" in spec.metadata:
        return spec.metadata["type"]
    if typing.get_origin(kind) is tuple:
        return comma_separated(typing.get_args(kind)[0])
    return kind


def add_config_flags(parser: argparse.ArgumentParser, config_class: type) -> None:
    """One flag per field of the dataclass `config_class`, in field order, with dest = the field name."""
    annotations = typing.get_type_hints(config_class)
    for spec in dataclasses.fields(config_class):
        meta = spec.metadata
        flag = meta.get("flag", "--" + spec.name.replace("_", "-"))
        kind = value_type(annotations[spec.name])
        help_text = meta.get("help", "").replace("%", "%%")  # argparse %-formats help texts
        if kind is bool:
            if not spec.default:
                action = "store_true"
            else:
                action = "store_false" if "flag" in meta else argparse.BooleanOptionalAction
            parser.add_argument(flag, dest=spec.name, action=action, default=spec.default, help=help_text)
            continue
        given = {"type": text_reader(spec, kind), "choices": meta.get("choices")}
        if spec.default is dataclasses.MISSING:
            parser.add_argument(flag, dest=spec.name, required=True, help=help_text, **given)
            continue
        shown = meta.get("default_text", None if spec.default is None else shown_default(spec.default))
        if shown is not None:
            help_text = f"{help_text} (default: {shown.replace('%', '%%')})".lstrip()
        # `parse` reads text; a None default stays None (config_from_args does not parse it)
        default = as_text(spec.default) if "parse" in meta and spec.default is not None else spec.default
        parser.add_argument(flag, dest=spec.name, default=default, help=help_text, **given)


def config_from_args(config_class: type, args: argparse.Namespace):
    """The dataclass `config_class` from flags added by add_config_flags; runs each field's `parse`."""
    values = {}
    for spec in dataclasses.fields(config_class):
        value = getattr(args, spec.name)
        parse = spec.metadata.get("parse") if value is not None else None
        values[spec.name] = parse(value) if parse else value
    return config_class(**values)


def check_finite_numbers(config) -> None:
    """Refuse NaN and infinity in every float setting of a settings dataclass (`--lr nan` would train
    on NaN; `--guidance inf` fails deep inside a pipeline): one line naming the flag."""
    annotations = typing.get_type_hints(type(config))
    for spec in dataclasses.fields(config):
        value = getattr(config, spec.name)
        if value_type(annotations[spec.name]) is float and value is not None and not math.isfinite(value):
            flag = spec.metadata.get("flag", "--" + spec.name.replace("_", "-"))
            raise DistillCacheError(f"{flag} must be a finite number, not {value}")
