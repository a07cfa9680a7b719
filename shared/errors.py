"""The one error type users see: its message says what went wrong and what to do.

Command-line entry points catch it, print one line and exit with status 2.
Asserts stay for internal invariants; anything a user can cause raises this.
"""


class DistillCacheError(Exception):
    """A problem the user can fix; the message names the problem and the fix."""
