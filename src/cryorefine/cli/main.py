"""The ``cryorefine`` command: one sub-command per module of this package.

Each sub-command module has ``add_arguments(parser)`` and ``run(args)``; its
docstring is the help text. ``main`` catches ``InputError`` only: a user's
mistake is printed as one line and the exit status is 2. Everything else keeps
its traceback.
"""

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from types import ModuleType

from cryorefine import __version__
from cryorefine.errors import InputError

__all__ = ["COMMANDS", "build_parser", "main"]

logger = logging.getLogger(__name__)

#: Sub-command name -> module under ``cryorefine.cli``.
COMMANDS: dict[str, str] = {
    "refine": "refine",
    "reconstruct": "reconstruct",
    "extract": "extract",
    "star-handler": "star_handler",
    "postprocess": "postprocess",
    "simulate": "simulate",
    "report": "report",
    "demo": "demo",
}


def _command_module(name: str) -> ModuleType:
    return importlib.import_module(f"cryorefine.cli.{COMMANDS[name]}")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-parser per command."""
    parser = argparse.ArgumentParser(
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
    root = logging.getLogger("cryorefine")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
    root.setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``cryorefine COMMAND ...``; return the exit status."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(_command_module(args.command), "ACCEPTS_ANY_OPTIONS", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command is None:
        parser.print_help()
        return 2
    _configure_logging()
    try:
        _command_module(args.command).run(args)
    except InputError as error:
        if args.debug:
            raise
        sys.stderr.write(f"cryorefine {args.command}: error: {error}\n")
        return 2
    return 0
