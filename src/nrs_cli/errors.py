"""The one error type users see.

Anything the user can fix (a bad option, a missing dataset, a corrupt file) is
raised as :class:`NrsError`; the CLI prints its message on one line and exits
with code 2. Everything else is a bug and keeps its traceback.
"""


class NrsError(Exception):
    """A problem with the user's input or environment, explained in one line."""

    exit_code = 2
