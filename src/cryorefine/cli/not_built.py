"""How a command whose layers do not exist yet answers: one line, exit status 2."""

import argparse

from cryorefine.errors import NotBuiltError

__all__ = ["accept_any_arguments", "refuse"]


def accept_any_arguments(parser: argparse.ArgumentParser) -> None:
    """Let the parser take RELION's options without knowing them yet.

    The module that calls this also sets ``ACCEPTS_ANY_OPTIONS = True`` so that
    ``cli.main`` passes unknown options through to ``run``, which refuses.
    """
    parser.set_defaults(not_built=True)


def refuse(command: str, missing: str) -> None:
    """Raise the one-line error for a command that is not built."""
    raise NotBuiltError(f"'{command}' is not built in this version yet (it needs {missing})")
