"""Masked, phase-randomised FSC and B-factor sharpening (relion_postprocess).

    cryorefine postprocess --i Refine3D/job012/run_half1_class001_unfil.mrc \\
        --mask MaskCreate/job013/mask.mrc --o PostProcess/job014/postprocess --auto_bfac

Writes ROOT.mrc (sharpened, low-passed), ROOT_masked.mrc, ROOT.star (data_general,
data_fsc, data_guinier, as RELION) and ROOT_fsc.png. --i2 defaults to --i with
half1 replaced by half2. Without --low_pass the map is low-passed at the final
resolution; --low_pass 0 leaves it unfiltered.
"""

import argparse
import math
from pathlib import Path

from cryorefine.errors import InputError
from cryorefine.refine.postprocess import PostprocessOptions
from cryorefine.refine.postprocess_files import PostprocessFiles, run_postprocess

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of this command, in relion_postprocess's names."""
    parser.add_argument("--i", type=Path, required=True, help="half map 1 (unfiltered)")
    parser.add_argument("--i2", type=Path, help="half map 2 (default: --i with half1 -> half2)")
    parser.add_argument("--mask", type=Path, help="solvent mask, values in [0, 1]")
    parser.add_argument("--o", type=Path, default=Path("postprocess"), help="output root")
    parser.add_argument("--angpix", type=float, default=-1.0, help="pixel size (A; -1: header)")
    parser.add_argument(
        "--force_mask",
        action="store_true",
        help="use the mask even when the masked resolution is worse than the unmasked one",
    )
    sharpen = parser.add_argument_group("Sharpening options")
    sharpen.add_argument("--mtf", type=Path, help="STAR file with the detector's MTF")
    sharpen.add_argument(
        "--mtf_angpix",
        type=float,
        default=-1.0,
        help="pixel size of the movies the MTF refers to (A; -1: --angpix)",
    )
    sharpen.add_argument("--auto_bfac", action="store_true", help="fit the B-factor")
    sharpen.add_argument(
        "--autob_lowres", type=float, default=10.0, help="lowest resolution (A) of the B-factor fit"
    )
    sharpen.add_argument(
        "--autob_highres",
        type=float,
        default=0.0,
        help="highest resolution (A) of the B-factor fit (0: Nyquist)",
    )
    sharpen.add_argument(
        "--adhoc_bfac", type=float, default=0.0, help="B-factor (A^2) to apply, e.g. -400"
    )
    filters = parser.add_argument_group("Filtering options")
    filters.add_argument(
        "--skip_fsc_weighting", action="store_true", help="no sqrt(2 FSC / (1 + FSC)) weighting"
    )
    filters.add_argument(
        "--low_pass",
        type=float,
        default=None,
        help="low-pass resolution (A); 0: none; default: final resolution",
    )
    expert = parser.add_argument_group("Expert options")
    expert.add_argument(
        "--randomize_at_fsc",
        type=float,
        default=0.8,
        help="randomise phases from where the unmasked FSC drops below this",
    )
    expert.add_argument(
        "--randomize_at_A",
        type=float,
        default=-1.0,
        help="randomise phases from this resolution (A) if positive",
    )
    expert.add_argument(
        "--filter_edge_width",
        type=int,
        default=2,
        help="raised-cosine edge of the low-pass filter (shells)",
    )
    expert.add_argument(
        "--random_seed", type=int, default=0, help="seed of the phase randomisation (0)"
    )


def _positive_or_none(value: float) -> float | None:
    return value if value > 0 else None


def run(args: argparse.Namespace) -> None:
    """Post-process the two half maps and write the outputs."""
    if args.filter_edge_width < 0:
        raise InputError(f"--filter_edge_width {args.filter_edge_width}: expected >= 0 shells")
    for option, value in (("--angpix", args.angpix), ("--mtf_angpix", args.mtf_angpix)):
        if not math.isfinite(value):
            raise InputError(
                f"{option} {value}: expected a pixel size in Angstrom (or -1: from the header)"
            )
    for option in ("autob_lowres", "autob_highres", "adhoc_bfac", "low_pass", "randomize_at_fsc",
                   "randomize_at_A"):  # fmt: skip
        value = getattr(args, option)
        if value is not None and not math.isfinite(value):
            raise InputError(f"--{option} {value}: expected a finite number")
    if args.auto_bfac and not args.autob_lowres > args.autob_highres:
        raise InputError(
            f"--autob_lowres {args.autob_lowres:g} is finer than --autob_highres "
            f"{args.autob_highres:g}: the B-factor fit runs from the low resolution to the high "
            "one, so expected --autob_lowres > --autob_highres (Angstrom; 0: Nyquist)"
        )
    files = PostprocessFiles(
        half1=args.i,
        half2=args.i2,
        mask=args.mask,
        mtf=args.mtf,
        output_root=args.o,
        pixel_size_angst=_positive_or_none(args.angpix),
        mtf_pixel_size_angst=_positive_or_none(args.mtf_angpix),
        random_seed=args.random_seed,
    )
    options = PostprocessOptions(
        auto_bfactor=args.auto_bfac,
        autob_lowres_angst=args.autob_lowres,
        autob_highres_angst=args.autob_highres,
        adhoc_bfactor_angst2=args.adhoc_bfac,
        fsc_weighting=not args.skip_fsc_weighting,
        low_pass_angst=args.low_pass,
        randomise_at_fsc=args.randomize_at_fsc,
        randomise_at_angst=args.randomize_at_A,
        filter_edge_width_shells=args.filter_edge_width,
        force_mask=args.force_mask,
    )
    run_postprocess(files, options)
