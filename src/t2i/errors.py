"""One exception type for user-facing mistakes.

The CLI prints a `UserError` as a single line and exits non-zero; everything else is a bug and keeps its
traceback. Messages say what was wrong and what to do about it.
"""


class UserError(Exception):
    """Bad input from the user (a path, an option, a file): reported as one line, never a traceback."""
