"""Run a command-line entry point so that user errors become one line and exit status 2."""

import os
import sys
from collections.abc import Callable

from shared.errors import DistillCacheError


def run_cli(entry: Callable[[], int | None], prog: str) -> int:
    """Call `entry`; a DistillCacheError prints `prog: error: ...` on stderr and returns 2."""
    try:
        return entry() or 0
    except DistillCacheError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `teacher-cache info STORE | head`: the reader left; exit quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python docs' SIGPIPE recipe
        return 0
