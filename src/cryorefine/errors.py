"""Errors shared by every layer (this module imports nothing).

``InputError`` is a user's mistake: a file, a row, a label or an option that is
not what was expected. Its message names them; the command line prints it in
one line and exits with status 2, without a traceback. Bugs raise ``ValueError``
or ``TypeError`` and keep their traceback.
"""

__all__ = ["InputError", "NotBuiltError"]


class InputError(Exception):
    """A user's input is wrong: the message names the file, row, label or option."""


class NotBuiltError(InputError):
    """A command whose layers do not exist yet in this version."""
