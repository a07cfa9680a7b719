"""`student-train`: phase two. Train a few-step student from a teacher cache alone.

student-train run --cache STORE --method M --student full|lora --out DIR ...
student-train eval --cache STORE --student DIR --out DIR
student-train sample --student DIR --prompt "..." --steps K --out FILE.png
student-train compare --cache STORE --out DIR
"""

import sys

from shared.subcommands import main_for

COMMANDS = {
    "run": "student_train.run_command",
    "eval": "student_train.eval_command",
    "sample": "student_train.sample_command",
    "compare": "student_train.compare_command",
}


def main(argv: list[str] | None = None) -> int:
    return main_for("student-train", __doc__.splitlines()[0], COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
