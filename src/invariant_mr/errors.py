"""User-facing error types.

`InputError` marks a problem with what the user supplied (a file, a column, an
option). The CLI prints its message on one line and exits non-zero without a
traceback; anything else is a bug and keeps its traceback.
"""


class InputError(ValueError):
    """Bad user input: the message names the file, column or option at fault."""


class TrainingDivergedError(RuntimeError):
    """A training loss became NaN or infinite; the message names the term."""
