"""Errors a user can fix. Scripts turn them into one clear line and exit status 2."""


class XlbtmError(Exception):
    """Base class for errors caused by user input (files, flags, checkpoints), not by a bug."""

    exit_code = 2


class InputError(XlbtmError):
    """Bad input data: a corpus line, a cluster file, a checkpoint. The message names file and line."""

    def __init__(self, message: str, path=None, line: int | None = None):
        self.message = message
        self.path = None if path is None else str(path)
        self.line = line
        where = ""
        if self.path is not None:
            where = f"{self.path}:{line}: " if line is not None else f"{self.path}: "
        super().__init__(where + message)

    def __reduce__(self):  # an error raised in a worker process arrives whole (path and line too)
        return type(self), (self.message, self.path, self.line)


class UsageError(XlbtmError):
    """A flag or a combination of flags that cannot work. The message names the flag."""
