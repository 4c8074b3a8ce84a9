"""A map rescaled to another pixel size and boxed (relion_image_handler --rescale_angpix --new_box).

The reference of a refinement must have the particles' pixel size and box. After
re-extracting at a finer binning, bring the previous run's map to the new grid:

    cryorefine image-handler --i Refine3D/job012/run_class001.mrc \\
        --o Refine3D/job012/run_class001_bin2.mrc --rescale_angpix 2.7 --new_box 288

--rescale_angpix resamples by cropping or zero-padding the map's Fourier
transform (fourier.rescale): the new side is round(n x old / new pixel size),
made even, so the pixel size written is old x n / side, the closest to the one
asked for (logged when they differ). --new_box then crops or pads with zeros in
real space about the centre. --angpix overrides the input header's pixel size.
"""

import argparse
import logging
import math
from pathlib import Path

import torch

from cryorefine.errors import InputError
from cryorefine.fourier import rescale_map, rescaled_size
from cryorefine.io import read_mrc, write_mrc

__all__ = ["add_arguments", "run"]

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of this command, in relion_image_handler's names."""
    parser.add_argument("--i", type=Path, required=True, help="input map (MRC)")
    parser.add_argument("--o", type=Path, required=True, help="output map (MRC)")
    parser.add_argument(
        "--angpix", type=float, help="pixel size of the input in Angstrom (default: its header)"
    )
    parser.add_argument(
        "--rescale_angpix", type=float, help="resample to this pixel size in Angstrom"
    )
    parser.add_argument("--new_box", type=int, help="crop or pad to this box size in pixels")


def _positive(value: float | None, option: str, what: str) -> None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise InputError(f"{option} {value:g}: expected {what} > 0")


def run(args: argparse.Namespace) -> None:
    """Check the options, rescale and box the map, write --o."""
    if args.rescale_angpix is None and args.new_box is None:
        raise InputError("give --rescale_angpix, --new_box or both (given: neither)")
    _positive(args.angpix, "--angpix", "a pixel size in Angstrom")
    _positive(args.rescale_angpix, "--rescale_angpix", "a pixel size in Angstrom")
    if args.new_box is not None and args.new_box < 2:
        raise InputError(f"--new_box {args.new_box}: expected a box size of at least 2 pixels")
    if args.o.resolve() == args.i.resolve():
        raise InputError(f"--o {args.o}: the same file as --i; expected a new file name")
    data, header_pixel = read_mrc(args.i)
    if data.ndim != 3 or len(set(data.shape)) != 1:
        raise InputError(f"{args.i}: a map of shape {data.shape} (z, y, x); expected a cube")
    pixel = header_pixel if args.angpix is None else args.angpix
    if not pixel > 0:
        raise InputError(f"{args.i}: the header gives no pixel size; give --angpix")
    new_pixel = pixel if args.rescale_angpix is None else args.rescale_angpix
    n = data.shape[-1]
    try:
        size = rescaled_size(n, pixel_size_angst=pixel, new_pixel_size_angst=new_pixel)
    except ValueError as error:
        raise InputError(f"--rescale_angpix {new_pixel:g}: {error}") from error
    written_pixel = pixel * n / size
    if abs(written_pixel - new_pixel) > 1e-6 * new_pixel:
        logger.warning(
            "--rescale_angpix %g: a box of %d px at %g A becomes %d px of %.6g A "
            "(the side is a whole, even number of pixels)",
            new_pixel, n, pixel, size, written_pixel,
        )  # fmt: skip
    volume = rescale_map(
        torch.from_numpy(data),
        pixel_size_angst=pixel,
        new_pixel_size_angst=new_pixel,
        new_box=args.new_box,
    )
    write_mrc(args.o, volume.numpy(), voxel_size_angst=written_pixel)
    logger.info(
        "Written: %s (box %d px, %.6g A/px; from %d px, %.6g A/px)",
        args.o, volume.shape[-1], written_pixel, n, pixel,
    )  # fmt: skip
