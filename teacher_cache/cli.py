"""`teacher-cache`: phase one. Run a many-step CFG teacher once and keep what it computed.

teacher-cache run --teacher PATH_OR_ID --prompts FILE --out STORE ...
teacher-cache info STORE [--json]
teacher-cache verify STORE
teacher-cache gc STORE [--apply]
teacher-cache compact STORE
teacher-cache copy SRC DST
teacher-cache merge A B ... --out C
"""

import sys

from shared.subcommands import main_for

COMMANDS = {
    "run": "teacher_cache.run_command",
    "info": "teacher_cache.info_command",
    "verify": "teacher_cache.verify_command",
    "gc": "teacher_cache.gc_command",
    "compact": "teacher_cache.compact_command",
    "copy": "teacher_cache.copy_command",
    "merge": "teacher_cache.merge_command",
}


def main(argv: list[str] | None = None) -> int:
    return main_for("teacher-cache", __doc__.splitlines()[0], COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
