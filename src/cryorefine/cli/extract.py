"""Pseudo-subtomograms or 2D stacks from tilt series at a binning (relion_tomo_subtomo)."""

import argparse

from cryorefine.cli.not_built import accept_any_arguments, refuse

__all__ = ["ACCEPTS_ANY_OPTIONS", "add_arguments", "run"]

ACCEPTS_ANY_OPTIONS = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of this command."""
    accept_any_arguments(parser)


def run(args: argparse.Namespace) -> None:
    """Run the command."""
    refuse("extract", "the tomo/ layer")
