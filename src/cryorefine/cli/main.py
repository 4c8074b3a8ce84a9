"""The ``cryorefine`` command: one sub-command per module of this package.

Each sub-command module has ``add_arguments(parser)`` and ``run(args)``; its
docstring is the help text. ``main`` catches ``InputError`` only: a user's
mistake is printed as one line and the exit status is 2 (``--debug`` shows its
traceback instead). A malformed command line (an unknown option, a value that
is not a number) is one line and status 2 as well, without argparse's usage
block. Everything else is a bug and keeps its traceback.

GPU memory: unless the user's ``PYTORCH_CUDA_ALLOC_CONF`` says otherwise, the
caching allocator grows its segments (``expandable_segments``): the E-step's
tensors change size with every batch, and fixed segments fragmented to 73 GiB
reserved for 16 GiB allocated on an H100 (bench/tutorial_bench.py).
"""

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import NoReturn

from cryorefine import __version__
from cryorefine.cli.progress import TerminalHandler
from cryorefine.errors import InputError

__all__ = ["COMMANDS", "build_parser", "main"]

logger = logging.getLogger(__name__)

#: Sub-command name -> module under ``cryorefine.cli``.
COMMANDS: dict[str, str] = {
    "refine": "refine",
    "reconstruct": "reconstruct",
    "extract": "extract",
    "star-handler": "star_handler",
    "image-handler": "image_handler",
    "postprocess": "postprocess",
    "simulate": "simulate",
    "report": "report",
    "demo": "demo",
}


def _command_module(name: str) -> ModuleType:
    return importlib.import_module(f"cryorefine.cli.{COMMANDS[name]}")


class _OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (``PROG: error: MESSAGE``), status 2."""

    def error(self, message: str) -> NoReturn:
        """Print the error as one line, with a pointer to ``--help``, and exit with status 2."""
        self.exit(2, f"{self.prog}: error: {_one_line(message)} (see {self.prog} --help)\n")


def _one_line(text: object) -> str:
    """``text`` with its lines joined, so that a message is always one line."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-parser per command."""
    parser = _OneLineParser(
        prog="cryorefine",
        description="Gold-standard 3D auto-refinement for cryo-ET subtomogram averaging "
        "and single-particle cryo-EM, reading and writing RELION's files.",
    )
    parser.add_argument("--version", action="version", version=f"cryorefine {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = _command_module(name)
        doc = (module.__doc__ or "").strip()
        summary = doc.splitlines()[0] if doc else name
        command_parser = sub.add_parser(
            name,
            help=summary,
            description=doc,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command_parser.add_argument(
            "--debug", action="store_true", help="show the traceback of an input error"
        )
        module.add_arguments(command_parser)
    return parser


def _configure_logging() -> None:
    """INFO lines to the current ``sys.stderr``, progress as a redrawn bar on a terminal."""
    root = logging.getLogger("cryorefine")
    if not any(isinstance(handler, TerminalHandler) for handler in root.handlers):
        handler = TerminalHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
    root.setLevel(logging.INFO)


def _end_progress_bars() -> None:
    """End the line of a bar left unfinished (an error, Ctrl-C): what follows starts a new line."""
    for handler in logging.getLogger("cryorefine").handlers:
        if isinstance(handler, TerminalHandler):
            handler.end_bar()


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``cryorefine COMMAND ...``; return the exit status."""
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")  # docstring
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if args.command is None:
        if unknown:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}; expected a COMMAND first")
        parser.print_help()
        return 2
    if unknown and not getattr(_command_module(args.command), "ACCEPTS_ANY_OPTIONS", False):
        sys.stderr.write(
            f"cryorefine {args.command}: error: unrecognized arguments: {' '.join(unknown)} "
            f"(see cryorefine {args.command} --help)\n"
        )
        raise SystemExit(2)  # as argparse does for every other malformed command line
    _configure_logging()
    try:
        _command_module(args.command).run(args)
    except InputError as error:
        if args.debug:
            raise
        _end_progress_bars()  # the error's line starts on a line of its own
        sys.stderr.write(f"cryorefine {args.command}: error: {_one_line(error)}\n")
        return 2
    finally:
        _end_progress_bars()
    return 0
