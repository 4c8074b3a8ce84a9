"""Simulated data sets with ground truth: particles, tilt-series CTFs, reference, mask.

Writes in --o a refinement input (particles.star; for relion4 also tomograms.star
and optimisation_set.star), the truth (truth.mrc, truth_particles.star with the
true angles and origins), a starting reference (truth low-passed to --ref_lowpass
and turned by --ref_rotation_deg about a random axis), a soft mask and
simulation.json (every option, the SNR definition, the reference's rotation).
The truth is the embedded HIV-1 CA hexamer (C6) unless --map is given.

    cryorefine simulate --o Simulated/relion4 --sym C6 --n_particles 200 --snr 0.05
    cryorefine simulate --o Simulated/spa --format spa --n_particles 1000 --box 64
    cryorefine simulate --o Simulated/tutorial --sym C6 --box 96 --bin 6 \
        --tomograms Tomograms/job006/tomograms.star --particles Picks/job019/particles.star \
        --tilt_image_size 3710 3838 --float16 --gpu

With --tomograms and --particles the particles are the real picks (all of them, or
--n_particles drawn with --seed) seen by the real tilt series: their tilt angles,
per-tilt defocus (plus each particle's depth), CTF scale, dose, pixel size (--bin
times the tilt series' pixel, or --angpix) and hand; --tilt_range, --tilt_step,
--dose and --defocus_range are then not used. Picks that no tilt image holds are
dropped, as relion_tomo_subtomo does. --tilt_image_size is the size of the tilt
images (not in any STAR file; default: the tomogram's x, y size). With
--surface_normals the picks lie on a surface (the tutorial's on virus-like
particles): each pseudo-subtomogram is built in a frame along the surface normal
(rlnTomoSubtomogramRot/Tilt/Psi: the picks file's, else estimated from the
neighbouring picks), the true pose in that frame is near tilt 90 and psi 0
(--normal_spread degrees), and particles.star carries those angles and the
priors rlnAngleTiltPrior 90 and rlnAnglePsiPrior 0, as RELION's picking on
spheres writes them (refine with --sigma_tilt).

With --format tilt_series the output is whole tilt series to extract particles
from (cryorefine extract): --per_tomogram particles at random places and poses in
each small tomogram, tilt images of --tilt_image_size (default 4 x --box square)
at --angpix (the tilt-series pixel), each tilt with its CTF (the particle's depth
included) and dose, MRC stacks in tilt_series/, tomograms.star with the per-tilt
tables, the picks in particles.star and an optimisation set naming both.

    cryorefine simulate --o Simulated/tilt_series --format tilt_series --box 64 \
        --angpix 1.35 --n_particles 40 --per_tomogram 4 --tilt_step 3
    cryorefine extract --ios Simulated/tilt_series/optimisation_set.star \
        --o Simulated/extract --bin 2 --box 32

--snr is the mean power of the CTF-free signal over the noise power, per Fourier
coefficient of one measurement (an image, a tilt image, or a subtomogram for
subtomo3d); see simulation.json. The same --seed gives the same data.
"""

import argparse
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

from cryorefine.cli.device import device_from_gpu_option
from cryorefine.errors import InputError
from cryorefine.simulate import DATA_FORMATS, SimulationOptions, simulate_dataset

__all__ = ["add_arguments", "progress_logger", "run"]

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of this command."""
    parser.add_argument("--o", type=Path, required=True, help="output folder")
    parser.add_argument("--map", type=Path, help="true map (MRC); default: the embedded hexamer")
    parser.add_argument("--sym", default="C1", help="point group imposed on the truth (C1: none)")
    parser.add_argument(
        "--n_particles",
        type=int,
        default=None,
        help="number of particles (default: 200, or every pick with --particles)",
    )
    parser.add_argument("--box", type=int, default=64, help="box size in pixels (even)")
    parser.add_argument(
        "--angpix", type=float, default=None, help="pixel size in Angstrom (default: 2.7)"
    )
    parser.add_argument(
        "--snr", type=float, default=0.05, help="signal-to-noise ratio (inf: no noise)"
    )
    parser.add_argument("--no_noise", action="store_true", help="no noise (same as --snr inf)")
    parser.add_argument(
        "--defocus_range",
        type=float,
        nargs=2,
        default=(15000.0, 30000.0),
        metavar=("MIN", "MAX"),
        help="defocus range in Angstrom (underfocus)",
    )
    parser.add_argument(
        "--tilt_range",
        type=float,
        nargs=2,
        default=(-60.0, 60.0),
        metavar=("MIN", "MAX"),
        help="tilt angles in degrees (tomography)",
    )
    parser.add_argument("--tilt_step", type=float, default=3.0, help="tilt step in degrees")
    parser.add_argument(
        "--dose", type=float, default=3.0, help="dose per tilt image in electrons per A^2"
    )
    parser.add_argument(
        "--max_offset", type=float, default=2.0, help="largest origin per axis in pixels"
    )
    parser.add_argument(
        "--format", choices=DATA_FORMATS, default="relion4", help="particle flavour written"
    )
    parser.add_argument(
        "--ref_lowpass", type=float, default=40.0, help="low-pass of the reference in Angstrom"
    )
    parser.add_argument(
        "--ref_rotation_deg",
        type=float,
        default=15.0,
        help="angle by which the reference is turned away from the truth",
    )
    parser.add_argument(
        "--bfactor", type=float, default=0.0, help="B-factor of the signal in A^2 (not in the CTF)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument(
        "--tomograms", type=Path, help="real tomograms.star (RELION 4 or 5) for the tilt series"
    )
    parser.add_argument(
        "--particles", type=Path, help="picked particles in those tomograms (STAR file)"
    )
    parser.add_argument(
        "--bin", type=float, help="binning of the particles relative to the tilt series"
    )
    parser.add_argument(
        "--tilt_image_size",
        type=int,
        nargs=2,
        metavar=("WIDTH", "HEIGHT"),
        help="size of the real tilt images in pixels",
    )
    parser.add_argument(
        "--float16", action="store_true", help="write 3D particles in half precision"
    )
    parser.add_argument(
        "--surface_normals",
        action="store_true",
        help="picks lie on a surface: frames along its normal, poses near tilt 90 and psi 0, "
        "and those angles as priors (relion4 with --particles)",
    )
    parser.add_argument(
        "--normal_spread",
        type=float,
        default=8.0,
        help="standard deviation of the true tilt and psi about the priors, degrees",
    )
    parser.add_argument(
        "--per_tomogram", type=int, default=4, help="particles per tomogram (tilt_series)"
    )
    parser.add_argument(
        "--gpu", nargs="?", const="", default=None, help='use a GPU; ids as in RELION, e.g. "0"'
    )


def run(args: argparse.Namespace) -> None:
    """Build the options and simulate."""
    if args.bin is not None and args.angpix is not None:
        raise InputError("--bin and --angpix: give one (pixel = bin x tilt series pixel)")
    real = args.tomograms is not None
    options = SimulationOptions(
        output_dir=args.o,
        map_path=args.map,
        symmetry=args.sym,
        n_particles=args.n_particles if args.n_particles is not None or real else 200,
        box_size=args.box,
        pixel_size_angst=2.7 if args.angpix is None else args.angpix,
        snr=math.inf if args.no_noise else args.snr,
        defocus_range_angst=tuple(args.defocus_range),
        tilt_range_deg=tuple(args.tilt_range),
        tilt_step_deg=args.tilt_step,
        dose_per_tilt_e_per_angst2=args.dose,
        max_offset_px=args.max_offset,
        data_format=args.format,
        ref_lowpass_angst=args.ref_lowpass,
        ref_rotation_deg=args.ref_rotation_deg,
        bfactor_angst2=args.bfactor,
        seed=args.seed,
        tomograms_star=args.tomograms,
        particles_star=args.particles,
        binning=args.bin,
        tilt_image_size_px=None if args.tilt_image_size is None else tuple(args.tilt_image_size),
        float16=args.float16,
        particles_per_tomogram=args.per_tomogram,
        surface_normals=args.surface_normals,
        normal_spread_deg=args.normal_spread,
    )
    simulate_dataset(options, progress=progress_logger(), device=device_from_gpu_option(args.gpu))


def progress_logger() -> Callable[[int, int], None]:
    """A ``progress(done, total)`` that logs one line: done, rate and time left.

    ``particles=320/9442 particles_per_second=41.2 eta_seconds=221``; the rate
    counts from the logger's creation (setup included).
    """
    start = time.monotonic()

    def progress(done: int, total: int) -> None:
        elapsed = max(time.monotonic() - start, 1e-9)
        rate = done / elapsed
        eta = (total - done) / rate if rate > 0 else math.inf
        logger.info(
            "particles=%d/%d particles_per_second=%.3g eta_seconds=%.0f", done, total, rate, eta
        )

    return progress
