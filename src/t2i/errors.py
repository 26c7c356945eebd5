"""One exception type for user-facing mistakes.

The CLI prints a `UserError` as a single line and exits non-zero; everything else is a bug and keeps its
traceback. Messages say what was wrong and what to do about it.
"""


class UserError(Exception):
    """Bad input from the user (a path, an option, a file): reported as one line, never a traceback."""


class OptionError(UserError, ValueError):
    """A bad value for one named option. The same check serves the Python API and the CLI, which spell the
    option differently (`top_k=` against `--top-k`), so the message is kept apart from the name: `str(e)` names
    the parameter, `e.as_flag()` the flag the CLI prints."""

    def __init__(self, name: str, detail: str, flag: str | None = None):
        self.name, self.detail = name, detail
        self.flag = flag or "--" + name.replace("_", "-")
        super().__init__(f"{name} {detail}")

    def as_flag(self) -> str:
        return f"{self.flag} {self.detail}"
