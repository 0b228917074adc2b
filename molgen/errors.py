"""User-facing errors.

Anything raised as :class:`MolgenError` is a problem with the user's input (a bad flag, a missing
file, a corrupted checkpoint). The CLI prints its message on one line and exits non-zero, without a
traceback. Everything else is a bug and keeps its traceback.
"""


class MolgenError(Exception):
    """A clear, one-line problem with the user's input; ``exit_code`` is the process exit status."""

    exit_code = 2

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code
