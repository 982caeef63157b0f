"""User-facing errors: one line that names the problem and what would be accepted.

The CLI prints these without a traceback; anything else is a bug and keeps its traceback.
"""


class MixkdError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class ConfigError(MixkdError):
    """A study file (or run config) field holds a value mixkd cannot use."""

    def __init__(self, path: str, message: str, source: str | None = None):
        self.path, self.source = path, source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{path}: {message}")


class NoSpaceLeft(MixkdError):
    """The disk (or quota) is full: every later run would fail the same way, so the study stops."""


class StudyWarning(UserWarning):
    """Something in a study file that is allowed but probably not meant: the CLI prints it in one line."""
