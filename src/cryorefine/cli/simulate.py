"""Simulated data sets with ground truth: particles, tilt-series CTFs, reference, mask.

Writes in --o a refinement input (particles.star; for relion4 also tomograms.star
and optimisation_set.star), the truth (truth.mrc, truth_particles.star with the
true angles and origins), a starting reference (truth low-passed to --ref_lowpass
and turned by --ref_rotation_deg about a random axis), a soft mask and
simulation.json (every option, the SNR definition, the reference's rotation).
The truth is the embedded HIV-1 CA hexamer (C6) unless --map is given.

    cryorefine simulate --o Simulated/relion4 --sym C6 --n_particles 200 --snr 0.05
    cryorefine simulate --o Simulated/spa --format spa --n_particles 1000 --box 64

--snr is the mean power of the CTF-free signal over the noise power, per Fourier
coefficient of one measurement (an image, a tilt image, or a subtomogram for
subtomo3d); see simulation.json. The same --seed gives the same data.
"""

import argparse
import logging
import math
from pathlib import Path

from cryorefine.cli.device import device_from_gpu_option
from cryorefine.simulate import DATA_FORMATS, SimulationOptions, simulate_dataset

__all__ = ["add_arguments", "run"]

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of this command."""
    parser.add_argument("--o", type=Path, required=True, help="output folder")
    parser.add_argument("--map", type=Path, help="true map (MRC); default: the embedded hexamer")
    parser.add_argument("--sym", default="C1", help="point group imposed on the truth (C1: none)")
    parser.add_argument("--n_particles", type=int, default=200, help="number of particles")
    parser.add_argument("--box", type=int, default=64, help="box size in pixels (even)")
    parser.add_argument("--angpix", type=float, default=2.7, help="pixel size in Angstrom")
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
        "--gpu", nargs="?", const="", default=None, help='use a GPU; ids as in RELION, e.g. "0"'
    )


def run(args: argparse.Namespace) -> None:
    """Build the options and simulate."""
    options = SimulationOptions(
        output_dir=args.o,
        map_path=args.map,
        symmetry=args.sym,
        n_particles=args.n_particles,
        box_size=args.box,
        pixel_size_angst=args.angpix,
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
    )

    def progress(done: int, total: int) -> None:
        logger.info("particles=%d/%d", done, total)

    simulate_dataset(options, progress=progress, device=device_from_gpu_option(args.gpu))
