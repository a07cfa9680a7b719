"""shared/config_flags.py: a settings dataclass -> --flags -> the same dataclass back."""

import argparse
import dataclasses
from dataclasses import dataclass

import pytest

from shared.config_flags import add_config_flags, comma_list, comma_separated, config_from_args, option
from shared.errors import DistillCacheError
from student_train.config import TrainConfig
from student_train.eval.run import EvalConfig
from student_train.sample_command import SampleConfig
from teacher_cache.config import CaptureConfig


def positive_counts(text: str) -> tuple[int, ...]:
    counts = tuple(sorted({int(part) for part in comma_list(text)}))
    if not counts or min(counts) <= 0:
        raise DistillCacheError(f"--counts {text!r}: give positive counts")
    return counts


@dataclass(frozen=True)
class Example:
    out: str = option(None, "where it goes", required=True)
    batch_size: int = option(16, "rows per batch")
    verbose: bool = option(False, "say more")
    judge: bool = option(True, "use the judge")
    progress: bool = option(True, "no progress bar", flag="--no-progress")
    guidance: float | None = option(None, "CFG scale", default_text="the recommended one")
    height: int | None = option(None, "pixels")
    revision: str | None = option(None, "a branch")
    names: tuple[str, ...] = option(("a", "b"), "names")
    sizes: tuple[int, ...] = option((1, 2), "sizes")
    indices: tuple[int, ...] | None = option(None, "indices", type=comma_separated(int, "step indices"))
    counts: tuple[int, ...] = option((1, 2, 4), "counts, e.g. 1,2,4", parse=positive_counts)
    some_counts: tuple[int, ...] | None = option(None, "counts or none", parse=positive_counts)
    dtype: str = option("auto", "compute dtype, 100% honest", choices=("auto", "float32"))


def parser_for(config_class: type) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="example")
    add_config_flags(parser, config_class)
    return parser


def build(*argv: str, config_class: type = Example):
    return config_from_args(config_class, parser_for(config_class).parse_args(list(argv)))


def usage_error(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        build(*argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_defaults_round_trip_to_the_dataclass():
    assert build("--out", "o") == Example(out="o")


@pytest.mark.parametrize(
    ("config_class", "required"),
    [
        (TrainConfig, {"cache": "c", "out": "o"}),
        (EvalConfig, {"cache": "c", "student": "s", "out": "o"}),
        (SampleConfig, {"student": "s", "prompt": "p", "out": "o.png"}),
        (CaptureConfig, {"out": "o"}),
    ],
)
def test_every_command_config_round_trips_its_defaults(config_class, required):
    argv = [part for name, value in required.items() for part in ("--" + name, value)]
    assert build(*argv, config_class=config_class) == config_class(**required)


def test_required_fields_must_be_given(capsys):
    assert "the following arguments are required: --out" in usage_error(capsys)
    assert build("--out", "elsewhere").out == "elsewhere"


def test_values_are_read_with_the_field_type(capsys):
    assert build("--out", "o", "--batch-size", "3").batch_size == 3
    assert "argument --batch-size: invalid int value: 'x'" in usage_error(
        capsys, "--out", "o", "--batch-size", "x"
    )


def test_bool_flags_switch_on_switch_off_and_only_off():
    config = build("--out", "o")
    assert (config.verbose, config.judge, config.progress) == (False, True, True)
    config = build("--out", "o", "--verbose", "--no-judge", "--no-progress")
    assert (config.verbose, config.judge, config.progress) == (True, False, False)
    assert build("--out", "o", "--judge").judge is True
    flags = {flag for action in parser_for(Example)._actions for flag in action.option_strings}
    assert {"--verbose", "--judge", "--no-judge", "--no-progress"} <= flags
    assert "--progress" not in flags and "--no-verbose" not in flags


def test_optional_fields_default_to_none_and_read_the_inner_type():
    config = build("--out", "o")
    assert (config.guidance, config.height, config.revision) == (None, None, None)
    config = build("--out", "o", "--guidance", "7.5", "--height", "64", "--revision", "main")
    assert (config.guidance, config.height, config.revision) == (7.5, 64, "main")


def test_tuple_fields_are_comma_lists_where_empty_or_none_is_empty(capsys):
    config = build("--out", "o", "--names", " x, y ,z", "--sizes", "4,8", "--indices", "0, 3")
    assert (config.names, config.sizes, config.indices) == (("x", "y", "z"), (4, 8), (0, 3))
    assert build("--out", "o", "--names", "none").names == () == build("--out", "o", "--names", "").names
    assert "expected comma-separated values, got '1,x'" in usage_error(capsys, "--out", "o", "--sizes", "1,x")
    error = usage_error(capsys, "--out", "o", "--indices", "1,x")
    assert "argument --indices: expected comma-separated step indices, got '1,x'" in error


def test_parse_reads_the_text_when_the_dataclass_is_built():
    assert build("--out", "o", "--counts", "4,1,1").counts == (1, 4)
    # a None default is not parsed (its text 'None' is no count)
    assert build("--out", "o").some_counts is None
    assert build("--out", "o", "--some-counts", "2").some_counts == (2,)
    args = parser_for(Example).parse_args(["--out", "o", "--counts", "0,2"])  # argparse takes any text
    assert args.counts == "0,2"
    with pytest.raises(DistillCacheError, match="--counts '0,2': give positive counts"):
        config_from_args(Example, args)


def test_choices_are_checked_by_argparse(capsys):
    assert build("--out", "o", "--dtype", "float32").dtype == "float32"
    assert "invalid choice: 'float8'" in usage_error(capsys, "--out", "o", "--dtype", "float8")


def test_help_names_each_default():
    text = " ".join(parser_for(Example).format_help().split())
    assert "rows per batch (default: 16)" in text
    assert "CFG scale (default: the recommended one)" in text
    assert "counts, e.g. 1,2,4 (default: 1,2,4)" in text
    assert "names (default: a,b)" in text
    assert "100% honest (default: auto)" in text
    assert "pixels (default" not in text  # a None default without default_text is not named
    assert "say more (default" not in text  # switches show no default


def test_option_keeps_help_and_marks_required_fields_as_having_no_default():
    fields = {spec.name: spec for spec in dataclasses.fields(Example)}
    assert fields["out"].default is dataclasses.MISSING
    assert fields["batch_size"].default == 16 and fields["batch_size"].metadata["help"] == "rows per batch"
