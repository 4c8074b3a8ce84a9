"""Table edits of particle STAR files (relion_star_handler).

Recentre the particles on a point of the reference (pixels from the box centre,
in the reference's frame), select rows by a label's value, or combine files:

    cryorefine star-handler --i Refine3D/job012/run_data.star --o centred.star \\
        --center --center_X 0 --center_Y 0 --center_Z 12
    cryorefine star-handler --i run_data.star --o good.star \\
        --select rlnMaxValueProbDistribution --minval 0.1
    cryorefine star-handler --combine --i "a.star b.star" --o all.star

Recentring: new origin = origin - A(rot, tilt, psi) (X, Y, Z), for SPA, RELION-4
and RELION-5 particle tables; coordinates are left as they are.
"""

import argparse
import logging
import shlex
from pathlib import Path

from cryorefine.errors import InputError
from cryorefine.geometry import recentre_particles
from cryorefine.io import (
    combine_particle_tables,
    load_particles,
    read_star,
    select_rows,
    write_particles,
    write_star,
)

__all__ = ["add_arguments", "run"]

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of this command, in relion_star_handler's names."""
    parser.add_argument(
        "--i", required=True, help='input STAR file; with --combine, several in quotes "a b"'
    )
    parser.add_argument("--o", type=Path, required=True, help="output STAR file")
    centre = parser.add_argument_group("Center options")
    centre.add_argument(
        "--center", action="store_true", help="recentre particles on a point of the reference"
    )
    for axis in "XYZ":
        centre.add_argument(
            f"--center_{axis}",
            type=float,
            default=0.0,
            help=f"{axis}-coordinate in the reference to centre on (pixels from the box centre)",
        )
    select = parser.add_argument_group("Select options")
    select.add_argument(
        "--select", metavar="LABEL", help="label to select on, e.g. rlnCtfMaxResolution"
    )
    select.add_argument("--minval", type=float, default=-99999999.0, help="minimum (inclusive)")
    select.add_argument("--maxval", type=float, default=99999999.0, help="maximum (inclusive)")
    combine = parser.add_argument_group("Combine options")
    combine.add_argument(
        "--combine", action="store_true", help="combine the STAR files listed in --i"
    )


def run(args: argparse.Namespace) -> None:
    """Do the one edit asked for and write --o."""
    chosen = [name for name in ("center", "select", "combine") if getattr(args, name)]
    if len(chosen) != 1:
        raise InputError(
            "give exactly one of --center, --select LABEL or --combine "
            f"(given: {', '.join('--' + name for name in chosen) or 'none'})"
        )
    if args.combine:
        try:
            sources = shlex.split(args.i)
        except ValueError as error:  # shlex: "No closing quotation", "No escaped character"
            raise InputError(
                f"--i {args.i}: cannot split into file names ({error}); expected names "
                'separated by spaces, each quoted whole if it holds a space: "a.star b.star"'
            ) from error
        tables = [read_star(source) for source in sources]
        write_star(combine_particle_tables(tables, sources), args.o)
        logger.info("Written: %s (%d files combined)", args.o, len(sources))
        return
    if args.select:
        if args.minval > args.maxval:
            raise InputError(
                f"--minval {args.minval:g} is above --maxval {args.maxval:g}: no row could be "
                "selected; expected --minval <= --maxval"
            )
        blocks = select_rows(
            read_star(args.i),
            label=args.select,
            min_value=args.minval,
            max_value=args.maxval,
            source=args.i,
        )
        if Path(args.o).resolve() == Path(args.i).resolve():
            raise InputError(f"{args.o}: is the input file; refusing to overwrite it")
        write_star(blocks, args.o)
        logger.info("Written: %s with %d item(s)", args.o, len(blocks["particles"]))
        return
    particles = load_particles(args.i, check_images=False)
    centre = (args.center_X, args.center_Y, args.center_Z)
    write_particles(recentre_particles(particles, centre), args.o)
    logger.info("Written: %s (%d particles recentred on %s px)", args.o, len(particles), centre)
