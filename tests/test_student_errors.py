"""Bad input to `student-train run`: one clear line, exit status 2, nothing written; and
`check_student_settings` by hand: which --student / --lora-rank / --base-dtype combinations are refused
(word for word) and which pass (rank 1 is a LoRA rank; only LoRA reads the rank; only LoRA's frozen
base takes a low-precision dtype)."""

import pytest

from shared.errors import DistillCacheError
from student_train.cli import main
from student_train.students import check_student_settings
from tests.student_store_fixture import one_torch_thread, shared_capture, write_capture_store  # noqa: F401 (autouse)


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("stores")
    capture = shared_capture()
    return {
        "full": write_capture_store(capture, folder / "full"),
        "direct_only": write_capture_store(
            capture, folder / "direct_only", fields=("noise", "final_latents")
        ),
    }


def run(capsys, *argv) -> tuple[int, str]:
    status = main(["run", *argv])
    error = capsys.readouterr().err.strip().splitlines()
    return status, error[-1] if error else ""


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--method", "lcm"], "cache them with `teacher-cache run --fields noised,cond`"),
        (["--method", "lcm", "--points", "trajectory"], "`teacher-cache run --fields trajectory,out,cond`"),
        (["--method", "lcm", "--points", "mix"], "`teacher-cache run --fields trajectory,out,noised,cond`"),
        (["--method", "progressive"], "`teacher-cache run --fields trajectory,cond`"),
        (
            ["--method", "consistency"],
            "unknown --method 'consistency'; valid: direct, lcm, progressive, guidance, tcd, reflow, blockkd",
        ),
        (["--method", "direct", "--student", "half"], "unknown --student 'half'; valid: full, lora, pruned"),
        (
            ["--method", "blockkd", "--student", "pruned"],
            "the store has no trajectory, out_cond, out_uncond, features.*, which --method blockkd reads; cache "
            "them with `teacher-cache run --fields trajectory,out,cond,features --features "
            '"down_blocks.*,mid_block,up_blocks.*" [--feature-steps I,J,...]`',
        ),
        (
            ["--method", "direct", "--student", "pruned", "--prune", "tiny"],
            "--prune tiny cannot be built from this teacher: block_out_channels [16, 32]",
        ),
        (["--method", "direct", "--init", "nowhere"], "--init nowhere has no distill.json"),
        (["--method", "direct", "--student", "lora", "--lora-rank", "0"], "--lora-rank must be > 0, got 0"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(stores, tmp_path, capsys, flags, message):
    out = tmp_path / "out"
    status, error = run(capsys, "--cache", stores["direct_only"], "--out", str(out), *flags)
    assert status == 2 and error.startswith("student-train: error: ") and message in error
    assert not out.exists()


def test_missing_store(tmp_path, capsys):
    status, error = run(capsys, "--cache", str(tmp_path / "nothing"), "--out", str(tmp_path / "out"))
    assert status == 2 and "no store at" in error and "teacher-cache run" in error


def test_resume_from_a_checkpoint_of_another_run(stores, tmp_path, capsys):
    out = str(tmp_path / "out")
    common = [
        "--cache",
        stores["full"],
        "--out",
        out,
        "--method",
        "direct",
        "--student",
        "lora",
        "--lora-rank",
        "2",
    ]
    assert run(capsys, *common, "--train-steps", "1", "--batch-size", "2", "--num-student-steps", "1")[0] == 0
    status, error = run(
        capsys,
        *common,
        "--train-steps",
        "1",
        "--batch-size",
        "2",
        "--num-student-steps",
        "1",
        "--lr",
        "0.5",
        "--resume",
    )
    assert status == 2 and "is a checkpoint of another run" in error
    status, error = run(
        capsys, *common, "--train-steps", "1", "--batch-size", "2", "--num-student-steps", "1"
    )
    assert status == 2 and "pass --resume to continue it" in error


@pytest.mark.parametrize(
    "kind, rank, base_dtype",
    [
        ("lora", 1, "fp32"),
        ("lora", 64, "bf16"),
        ("lora", 2, "fp16"),
        ("full", 0, "fp32"),
        ("pruned", -1, "fp32"),
    ],
)
def test_valid_settings_pass(kind, rank, base_dtype):
    assert check_student_settings(kind, rank, base_dtype) is None


def test_the_base_dtype_defaults_to_fp32():
    check_student_settings("full", 0)  # would be refused for a full student if the default were not fp32


@pytest.mark.parametrize(
    "kind, rank, base_dtype, message",
    [
        ("half", 4, "fp32", "unknown --student 'half'; valid: full, lora, pruned"),
        ("lora", 0, "fp32", "--lora-rank must be > 0, got 0"),
        ("lora", -3, "bf16", "--lora-rank must be > 0, got -3"),
        ("lora", 4, "fp8", "unknown --base-dtype 'fp8'; valid: fp32, bf16, fp16"),
        (
            "full",
            4,
            "bf16",
            "--base-dtype bf16 casts frozen weights, and a full student trains all of its weights (kept in "
            "float32); use --mixed-precision bf16 to compute in bf16, or --student lora",
        ),
        (
            "pruned",
            4,
            "fp16",
            "--base-dtype fp16 casts frozen weights, and a pruned student trains all of its weights (kept in "
            "float32); use --mixed-precision bf16 to compute in bf16, or --student lora",
        ),
    ],
)
def test_refusals_word_for_word(kind, rank, base_dtype, message):
    with pytest.raises(DistillCacheError) as refused:
        check_student_settings(kind, rank, base_dtype)
    assert str(refused.value) == message


def test_build_student_checks_the_settings_it_is_given():
    from student_train.students import build_student
    from tests.student_store_fixture import teacher_denoiser, tiny_train_config

    with pytest.raises(
        DistillCacheError, match="^--base-dtype bf16 casts frozen weights, and a full student"
    ):
        build_student("full", teacher_denoiser(), tiny_train_config("unused", "unused", base_dtype="bf16"))
    with pytest.raises(DistillCacheError, match="^--lora-rank must be > 0, got 0$"):
        build_student("lora", teacher_denoiser(), tiny_train_config("unused", "unused", lora_rank=0))
