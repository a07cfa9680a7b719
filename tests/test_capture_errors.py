"""Bad input to `teacher-cache run`: one clear line on stderr, exit status 2, nothing written."""

import pytest

from teacher_cache.cli import main
from tests.capture_helpers import cli_args, tiny_capture_config, write_prompts
from tests.tiny_models import save_tiny_sd_pipeline


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return save_tiny_sd_pipeline(tmp_path_factory.mktemp("teacher") / "sd")


def run_cli(argv, capsys) -> tuple[int, str]:
    status = main(argv)
    return status, capsys.readouterr().err.strip()


def assert_refused(status: int, stderr: str, message: str) -> None:
    assert status == 2
    assert stderr.startswith("teacher-cache: error: ") and "\n" not in stderr and "Traceback" not in stderr
    assert message in stderr


@pytest.mark.parametrize(
    ("case", "extra", "message"),
    [
        ("missing prompt file", ["--prompts", "{tmp}/nope.txt"], "does not exist"),
        ("empty prompt file", ["--prompts", "{tmp}/empty.txt"], "holds no prompts"),
        ("no prompt column", ["--prompts", "{tmp}/columns.csv"], "no 'prompt' column"),
        ("unknown teacher", ["--teacher", "{tmp}/no_such_teacher"], "does not exist"),
        ("zero steps", ["--steps", "0"], "--steps must be a positive"),
        ("negative steps", ["--steps", "-3"], "--steps must be a positive"),
        (
            "feature glob without match",
            ["--features", "down_blocks.*,no_such_block"],
            "'no_such_block' matches no module",
        ),
        ("unknown field group", ["--fields", "noise,latents"], "unknown or empty"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, teacher, case, extra, message):
    (tmp_path / "empty.txt").write_text("\n")
    (tmp_path / "columns.csv").write_text("text,seed\na red one on blue,1\n")
    config = tiny_capture_config(tmp_path / "store", teacher, write_prompts(tmp_path, ["a red one on blue"]))
    status, stderr = run_cli(cli_args(config) + [arg.format(tmp=tmp_path) for arg in extra], capsys)
    assert_refused(status, stderr, message)
    assert not (tmp_path / "store").exists()


def test_existing_store_made_with_other_settings_is_refused_untouched(tmp_path, capsys, teacher):
    config = tiny_capture_config(tmp_path / "store", teacher, write_prompts(tmp_path, ["a red one on blue"]))
    assert run_cli(cli_args(config), capsys)[0] == 0
    before = sorted((path.relative_to(tmp_path), path.stat().st_mtime_ns) for path in tmp_path.rglob("*"))
    status, stderr = run_cli(cli_args(config) + ["--steps", "4"], capsys)
    assert_refused(status, stderr, "")
    assert (
        sorted((path.relative_to(tmp_path), path.stat().st_mtime_ns) for path in tmp_path.rglob("*"))
        == before
    )
