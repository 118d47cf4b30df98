"""The one error type for user mistakes.

Anything a user can fix (a bad path, a missing column, a NaN, a flag that contradicts a checkpoint)
raises ``LinRegError``; the CLI prints it as one line and exits 1. Everything else is a bug and keeps
its traceback.
"""


class LinRegError(Exception):
    """A mistake in the user's input, explained in one line."""
