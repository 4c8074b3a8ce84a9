"""Map from particles with known poses (relion_reconstruct, relion_tomo_reconstruct_particle).

    cryorefine reconstruct --i Refine3D/job012/run_data.star --o half1.mrc \\
        --sym C6 --ctf --subset 1 --maxres 12
    cryorefine reconstruct --ios Refine3D/job012/run_optimisation_set.star \\
        --o Reconstruct/job013 --bin 2 --box 192 --sym C6 --ctf

With ``--i``: every particle flavour cryorefine loads (SPA images, classic 3D
subtomograms with their 3D CTF, RELION-4 pseudo-subtomograms), with the angles
and origins in the STAR file; ``--o`` is the map. With ``--ios``: from the tilt
series at ``--bin`` and ``--box`` (``refine.reconstruct_tomo``); ``--o`` is a
folder that receives half1.mrc, half2.mrc and merged.mrc.
"""

import argparse
import logging
from pathlib import Path

import torch

from cryorefine.cli.device import device_from_gpu_option
from cryorefine.errors import InputError
from cryorefine.io import load_particles, write_mrc
from cryorefine.refine.reconstruct import ReconstructOptions, reconstruct_particles
from cryorefine.refine.reconstruct_tomo import reconstruct_from_tilt_series

__all__ = ["add_arguments", "run"]

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of this command, in relion_reconstruct's names."""
    parser.add_argument("--i", type=Path, help="particles STAR file")
    parser.add_argument(
        "--ios", type=Path, help="optimisation set: reconstruct from its tilt series"
    )
    parser.add_argument(
        "--o", type=Path, required=True, help="output MRC file (with --ios: output folder)"
    )
    parser.add_argument("--bin", type=float, default=1.0, help="with --ios: binning (1)")
    parser.add_argument("--box", type=int, help="with --ios: box size in binned pixels")
    parser.add_argument("--crop", type=int, help="with --ios: output box after cropping")
    parser.add_argument("--sym", default="C1", help="point group: Cn, Dn, T, O, I, ...")
    parser.add_argument("--ctf", action="store_true", help="apply CTF correction")
    parser.add_argument(
        "--ctf_intact_first_peak", action="store_true", help="leave CTFs intact until 1st peak"
    )
    parser.add_argument("--subset", type=int, help="only half set 1 or 2 (rlnRandomSubset)")
    parser.add_argument("--maxres", type=float, help="maximum resolution (Angstrom) to use")
    parser.add_argument("--angpix", type=float, help="pixel size of the output map (Angstrom)")
    parser.add_argument("--pad", type=int, default=2, help="padding factor (2)")
    parser.add_argument("--batch_size", type=int, default=64, help="particles per batch")
    parser.add_argument(
        "--gpu", nargs="?", const="", default=None, help='use a GPU; ids as RELION, e.g. "0"'
    )


def run(args: argparse.Namespace) -> None:
    """Reconstruct and write the map."""
    if args.pad < 1:
        raise InputError(f"--pad {args.pad}: expected an integer >= 1")
    if args.batch_size < 1:
        raise InputError(f"--batch_size {args.batch_size}: expected an integer >= 1")
    if args.maxres is not None and not args.maxres > 0:
        raise InputError(f"--maxres {args.maxres:g}: expected a resolution in Angstrom (> 0)")
    if (args.i is None) == (args.ios is None):
        raise InputError("give one of --i (particles STAR file) or --ios (optimisation set)")
    device = device_from_gpu_option(args.gpu)
    if args.ios is not None:
        _run_tilt_series(args, device)
        return
    particles = load_particles(args.i)
    if args.maxres is not None:
        _check_maxres(args.maxres, int(particles.box_size_px[0]), particles.pixel_size_angst[0])
    options = _options(args)
    volume, pixel_size = reconstruct_particles(
        particles,
        options,
        device=device,
        progress=lambda done, total: logger.debug("back-projected %d / %d", done, total),
    )
    if args.angpix is not None and abs(args.angpix - pixel_size) > 1e-3 * pixel_size:
        raise InputError(
            f"--angpix {args.angpix}: the particles' pixel size is {pixel_size} A; "
            "resampling the map is not supported (leave out --angpix)"
        )
    write_mrc(args.o, volume.cpu().numpy(), voxel_size_angst=pixel_size)
    logger.info("Written: %s (%d particles, %.4f A/px)", args.o, len(particles), pixel_size)


def _options(args: argparse.Namespace) -> ReconstructOptions:
    return ReconstructOptions(
        symmetry=args.sym,
        use_ctf=args.ctf,
        subset=args.subset,
        max_resolution_angst=args.maxres,
        padding_factor=args.pad,
        batch_size=args.batch_size,
        ctf_intact_first_peak=args.ctf_intact_first_peak,
    )


def _run_tilt_series(args: argparse.Namespace, device: torch.device) -> None:
    """``--ios``: extract at ``--bin``/``--box``, then the half maps and the merged map."""
    if args.box is None or args.box < 2 or args.box % 2:
        raise InputError(f"--box {args.box}: with --ios, an even box size in binned pixels")
    if not args.bin > 0:
        raise InputError(f"--bin {args.bin:g}: expected a binning > 0")
    maps = reconstruct_from_tilt_series(
        args.ios,
        args.o,
        box_size=args.box,
        binning=args.bin,
        crop_size=args.crop,
        reconstruct=_options(args),
        device=device,
    )
    logger.info(
        "Written: %s, %s, %s (%d particles, %.4f A/px; extracted: %s)",
        maps.half1,
        maps.half2,
        maps.merged,
        maps.particles,
        maps.pixel_size_angst,
        maps.particles_star,
    )


def _check_maxres(maxres_angst: float, box_px: int, pixel_size_angst: float) -> None:
    """Refuse a ``--maxres`` that keeps no Fourier shell: ``round(box * pixel / maxres) < 1``.

    The back-projection keeps the shells up to ``round(box * pixel / maxres)``
    (``refine.reconstruct``); shell 1 is the box size itself.
    """
    box_angst = box_px * pixel_size_angst
    if round(box_angst / maxres_angst) < 1:
        raise InputError(
            f"--maxres {maxres_angst:g}: coarser than the box ({box_px} px x "
            f"{pixel_size_angst:g} A = {box_angst:g} A), so no Fourier shell is kept; "
            f"expected less than {2 * box_angst:g} A"
        )
