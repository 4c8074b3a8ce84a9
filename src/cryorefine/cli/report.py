"""HTML page with the plots of a refinement run.

    cryorefine report Refine3D/job012/run [--o Refine3D/job012/run_report.html] \\
        [--mask MaskCreate/job013/mask.mrc]

RUN_ROOT is the run's --o (or its folder, standing for FOLDER/run). One
self-contained page (plots embedded as PNG): FSC curves of every iteration,
resolution, current size, angular and translational sampling and accuracy,
changes of orientations and offsets per iteration, the angular distribution,
central slices of the final map with the mask's outline, and the offset of the
map's centre of mass from the mask's centre with the star-handler command that
recentres the particles on the mask. The mask defaults to the run's
--solvent_mask. Files a run lacks are named on the page, under Notes.
"""

import argparse
import logging
from pathlib import Path

from cryorefine.report import write_report

__all__ = ["add_arguments", "run"]

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of this command."""
    parser.add_argument(
        "run_root", type=Path, metavar="RUN_ROOT", help="the run's --o, or its folder"
    )
    parser.add_argument(
        "--o", type=Path, default=None, help="output HTML file (default: RUN_ROOT_report.html)"
    )
    parser.add_argument(
        "--mask", type=Path, default=None, help="mask (MRC; default: the run's --solvent_mask)"
    )


def run(args: argparse.Namespace) -> None:
    """Write the report and say where it is."""
    path = write_report(args.run_root, args.o, mask=args.mask)
    logger.info("Written: %s", path)
