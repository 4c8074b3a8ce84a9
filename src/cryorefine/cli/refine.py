"""Gold-standard 3D auto-refinement (relion_refine --auto_refine --split_random_halves)."""

import argparse

from cryorefine.cli.not_built import accept_any_arguments, refuse

__all__ = ["ACCEPTS_ANY_OPTIONS", "add_arguments", "run"]

ACCEPTS_ANY_OPTIONS = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of this command."""
    accept_any_arguments(parser)


def run(args: argparse.Namespace) -> None:
    """Run the command."""
    refuse("refine", "the likelihood/ and refine/ layers")
