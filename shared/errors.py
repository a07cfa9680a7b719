"""The one error type users see: its message says what went wrong and what to do.

Command-line entry points catch it, print one line and exit with status 2.
Asserts stay for internal invariants; anything a user can cause raises this.
"""


class DistillCacheError(Exception):
    """A problem the user can fix; the message names the problem and the fix."""


def first_line(error: BaseException) -> str:
    """The first line of an error's message (its type name when it has none): for one-line reports."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
