"""Simulate a small data set, refine it, post-process it, and compare with the truth.

    cryorefine demo [--o cryorefine_demo] [--format relion4|spa] [--gpu]

The embedded default (the HIV-1 CA hexamer of RELION's tomography tutorial,
C6) end to end: RELION-4 pseudo-subtomograms refined with the tutorial's
options scaled down, in a few minutes on two CPU cores (--format spa: single
particles, about a minute). Prints the resolution against the truth and where
the files and the report are; the log is also in Refine3D/run.log.
"""

import argparse
import logging
from pathlib import Path

from cryorefine.cli.device import device_from_gpu_option
from cryorefine.cli.progress import log_file
from cryorefine.errors import InputError
from cryorefine.report import write_report
from cryorefine.simulate.demo import DEMOS, run_demo

__all__ = ["add_arguments", "run"]

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of this command."""
    parser.add_argument("--o", type=Path, default=Path("cryorefine_demo"), help="output folder")
    parser.add_argument(
        "--format",
        choices=sorted(DEMOS),
        default="relion4",
        help="relion4: pseudo-subtomograms, as the tutorial (default); spa: single particles",
    )
    parser.add_argument(
        "--gpu", nargs="?", const="", default=None, help='use a GPU; ids as in RELION, e.g. "0"'
    )


def run(args: argparse.Namespace) -> None:
    """Run the demo and print what it measured."""
    device = device_from_gpu_option(args.gpu)
    refine_folder = Path(args.o) / "Refine3D"
    try:
        refine_folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(
            f"--o: cannot create the output folder {refine_folder} ({error})"
        ) from error
    with log_file(refine_folder / "run.log"):
        result = run_demo(args.o, device=device, demo=DEMOS[args.format])
        report = write_report(
            result.folder / "Refine3D" / "run", mask=result.folder / "Simulate" / "mask.mrc"
        )
        logger.info(
            "demo: done in %d iterations (%s; Nyquist %.1f A)\n"
            "  resolution against the truth (FSC 0.5, comparable to the gold standard): %.2f A\n"
            "  resolution against the truth (FSC 0.143): %.2f A\n"
            "  gold-standard resolution printed by refine: %.2f A\n"
            "  post-processed resolution (masked, corrected FSC): %.2f A\n"
            "  median angular error (modulo C6): %.2f deg\n"
            "  files: %s (Simulate/, Refine3D/run_*, PostProcess/postprocess*)\n"
            "  report (open in a browser): %s",
            result.iterations,
            result.data_format,
            result.nyquist_angst,
            result.resolution_vs_truth_05_angst,
            result.resolution_vs_truth_angst,
            result.gold_standard_resolution_angst,
            result.postprocess_resolution_angst,
            result.median_angular_error_deg,
            result.folder,
            report,
        )
