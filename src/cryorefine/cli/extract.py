"""Pseudo-subtomograms or 2D stacks from tilt series at a binning (relion_tomo_subtomo).

Reads the particles and tomograms of --ios, cuts each particle's box of --box
binned pixels from every tilt image that holds it, bins it (--bin, Fourier
cropping), multiplies it by the CTF and dose weight of its tilt, crops it to
--crop and writes, in --o:

  Subtomograms/<tomogram>/<n>_data.mrc and _weights.mrc   RELION-4 3D pseudo-subtomograms
                                                          (data; CTF^2 and multiplicity)
  Subtomograms/<tomogram>/<n>_stack2d.mrcs                 with --stack2d: RELION-5 2D stacks
  particles.star, optimisation_set.star                    the new particle set, and the
                                                           optimisation set pointing at it

    cryorefine extract --ios Picks/job019/optimisation_set.star --o Extract/job010/ \\
        --bin 6 --box 192 --crop 96 --float16 --max_dose 50 --gpu

Particles that fewer than --min_frames tilts hold (a circle of bin x crop / 2
pixels around them inside the image, pre-exposure at most --max_dose) are
dropped. Origins are folded into the coordinates and reset to 0 unless
--dont_apply_offsets. Progress is logged once per batch.
"""

import argparse
from pathlib import Path

from cryorefine.cli.device import device_from_gpu_option
from cryorefine.cli.simulate import progress_logger
from cryorefine.tomo import ExtractOptions, extract_particles

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of this command (RELION's names)."""
    parser.add_argument("--ios", type=Path, required=True, help="optimisation set STAR file")
    parser.add_argument("--o", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--box", "--b", dest="box", type=int, required=True, help="binned box size of the 2D boxes"
    )
    parser.add_argument("--crop", type=int, default=-1, help="output box size (-1: --box)")
    parser.add_argument("--bin", type=float, default=1.0, help="binning factor")
    parser.add_argument("--float16", action="store_true", help="write MRC mode 12 (half)")
    parser.add_argument(
        "--max_dose", type=float, default=-1.0, help="leave out tilts above this dose (e/A^2)"
    )
    parser.add_argument(
        "--min_frames", type=int, default=1, help="drop particles seen by fewer tilts"
    )
    parser.add_argument("--stack2d", action="store_true", help="write RELION-5 2D stacks")
    parser.add_argument("--no_ic", action="store_true", help="do not invert the contrast")
    parser.add_argument("--no_ctf", action="store_true", help="do not multiply by the CTF")
    parser.add_argument(
        "--no_circle_crop", action="store_true", help="do not crop the 2D images to a circle"
    )
    parser.add_argument(
        "--dont_apply_offsets",
        action="store_true",
        help="do not fold rlnOrigin*Angst into the coordinates",
    )
    parser.add_argument("--batch", type=int, default=32, help="particles per batch")
    parser.add_argument(
        "--gpu", nargs="?", const="", default=None, help='use a GPU; ids as in RELION, e.g. "0"'
    )


def run(args: argparse.Namespace) -> None:
    """Build the options and extract."""
    options = ExtractOptions(
        optimisation_set=args.ios,
        output_dir=args.o,
        box_size=args.box,
        crop_size=None if args.crop < 0 else args.crop,
        binning=args.bin,
        float16=args.float16,
        max_dose_e_per_angst2=None if args.max_dose <= 0 else args.max_dose,
        min_frames=args.min_frames,
        stack2d=args.stack2d,
        invert_contrast=not args.no_ic,
        use_ctf=not args.no_ctf,
        circle_crop=not args.no_circle_crop,
        apply_offsets=not args.dont_apply_offsets,
        batch_size=args.batch,
    )
    extract_particles(options, device=device_from_gpu_option(args.gpu), progress=progress_logger())
