"""Simulate a small data set, refine it, post-process it, and compare with the truth.

    cryorefine demo [--o cryorefine_demo] [--gpu]

The embedded default (the HIV-1 CA hexamer of RELION's tomography tutorial,
C6) end to end in a few minutes on two CPU cores; prints the resolution
against the truth and where the files are.
"""

import argparse
import logging
from pathlib import Path

from cryorefine.cli.device import device_from_gpu_option
from cryorefine.report import write_report
from cryorefine.simulate.demo import run_demo

__all__ = ["add_arguments", "run"]

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of this command."""
    parser.add_argument("--o", type=Path, default=Path("cryorefine_demo"), help="output folder")
    parser.add_argument(
        "--gpu", nargs="?", const="", default=None, help='use a GPU; ids as in RELION, e.g. "0"'
    )


def run(args: argparse.Namespace) -> None:
    """Run the demo and print what it measured."""
    result = run_demo(args.o, device=device_from_gpu_option(args.gpu))
    report = write_report(
        result.folder / "Refine3D" / "run", mask=result.folder / "Simulate" / "mask.mrc"
    )
    logger.info(
        "demo: done in %d iterations\n"
        "  resolution against the truth (FSC 0.143): %.2f A\n"
        "  gold-standard resolution printed by refine: %.2f A\n"
        "  post-processed resolution (masked, corrected FSC): %.2f A\n"
        "  median angular error (modulo C6): %.2f deg\n"
        "  files: %s (Refine3D/run_*, PostProcess/postprocess*)\n"
        "  report (open in a browser): %s",
        result.iterations,
        result.resolution_vs_truth_angst,
        result.gold_standard_resolution_angst,
        result.postprocess_resolution_angst,
        result.median_angular_error_deg,
        result.folder,
        report,
    )
