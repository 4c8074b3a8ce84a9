"""Post-processing of two half maps: masked FSC with phase randomisation, B-factor sharpening.

What RELION's ``relion_postprocess`` does (REFINE_SPEC section 8), on tensors:

1. FSC of the unmasked half maps; FSC of the half maps times the mask.
2. Phase randomisation (Chen et al. 2013): from the first shell ``i > 0`` whose
   unmasked FSC is below ``randomise_at_fsc`` (or shell ``int(n p / A)`` for
   ``randomise_at_angst = A``), both unmasked halves get random phases
   (``fourier.randomise_phases_beyond``; the generator is the caller's, drawn
   for half 1 then half 2), are masked, and give ``FSC_random``.
3. ``FSC_true = FSC_masked`` below shell ``i_r + 2``, above it
   ``(FSC_masked - FSC_random) / (1 - FSC_random)``, not clipped; shell 0 of each
   curve is set to 1 where it is ``<= 0`` (as RELION does).
4. Final resolution ``n p / i`` for the last shell ``i`` before ``FSC_true`` first
   drops below 0.143. If the unmasked FSC reaches a later shell, the unmasked
   curve and its resolution are used instead, unless ``force_mask``.
5. The average of the unmasked halves is divided by the detector MTF,
   weighted by ``sqrt(2 FSC / (1 + FSC))`` (Rosenthal & Henderson 2003; 0 from
   the first shell with ``FSC < 1e-4``), and multiplied by ``exp(-B s^2 / 4)``
   up to Nyquist. ``B = 4 x slope`` of the Guinier plot (``ln`` of the mean
   amplitude per shell against ``s^2``, 1/Angstrom^2) of the weighted map,
   fitted by least squares over the shells with resolution between
   ``autob_lowres_angst`` and ``autob_highres_angst`` (0: up to Nyquist) and
   non-zero amplitude. Because the weighting zeroes every shell beyond the
   first with ``FSC < 1e-4``, the default fit runs to that shell, not to the
   final resolution: that reproduces the slope, intercept and correlation
   written by RELION 5 in the HIV tutorial's ``PostProcess/job079``.
6. Raised-cosine low-pass at shell ``round(n p / d)`` with an edge of
   ``2 (filter_edge_width // 2)`` shells centred on it (``fourier.low_pass``).

Mean amplitudes and FSCs run over every stored coefficient of a shell, Friedel
mates included, as RELION's loops over the half-complex transform do.
"""

import logging
from dataclasses import dataclass, replace

import torch
from jaxtyping import Float
from torch import Tensor

from cryorefine.errors import InputError
from cryorefine.fourier.conventions import from_fourier, to_fourier
from cryorefine.fourier.filters import apply_bfactor, low_pass, randomise_phases_beyond
from cryorefine.fourier.shells import (
    first_shell_below,
    fsc,
    fsc_true,
    resolution_shell,
    shell_values_to_grid,
)
from cryorefine.refine.sharpening import (
    divide_by_mtf,
    fit_guinier_line,
    fsc_weighting_curve,
    guinier_plot,
    particle_fraction_fsc,
)

__all__ = ["PostprocessOptions", "PostprocessResult", "postprocess_maps"]

logger = logging.getLogger(__name__)

_RESOLUTION_THRESHOLD = 0.143


@dataclass(frozen=True)
class PostprocessOptions:
    """relion_postprocess options, in field words (``--autob_lowres`` is ``autob_lowres_angst``).

    ``low_pass_angst``: None low-passes at the final resolution, 0 not at all,
    a negative value at the final resolution (RELION's meaning), a positive
    value at that resolution.
    """

    auto_bfactor: bool = False
    autob_lowres_angst: float = 10.0
    autob_highres_angst: float = 0.0
    adhoc_bfactor_angst2: float = 0.0
    fsc_weighting: bool = True
    low_pass_angst: float | None = None
    randomise_at_fsc: float = 0.8
    randomise_at_angst: float = -1.0
    filter_edge_width_shells: int = 2
    force_mask: bool = False

    def __post_init__(self) -> None:
        """Refuse contradictory options, naming them."""
        if self.auto_bfactor and self.adhoc_bfactor_angst2 != 0.0:
            raise InputError("--auto_bfac and --adhoc_bfac: give one of them, not both")


@dataclass(frozen=True)
class PostprocessResult:
    """Maps, curves and numbers of one post-processing run (float64 tensors).

    Curves have ``n // 2 + 1`` entries, one per shell; the ``fsc_masked``,
    ``fsc_random_masked``, ``fsc_particle_fraction`` curves and
    ``randomise_from_shell`` are None without a mask, ``guinier_mtf`` without an
    MTF, ``guinier_fit`` (slope, intercept, squared correlation) without
    ``auto_bfactor``.
    """

    sharpened: Tensor
    sharpened_masked: Tensor | None
    fsc_unmasked: Tensor
    fsc_masked: Tensor | None
    fsc_random_masked: Tensor | None
    fsc_corrected: Tensor
    fsc_particle_fraction: Tensor | None
    randomise_from_shell: int | None
    particle_box_fraction: float | None
    resolution_shell: int
    final_resolution_angst: float
    bfactor_angst2: float
    guinier_resolution_squared: Tensor
    guinier_original: Tensor
    guinier_mtf: Tensor | None
    guinier_weighted: Tensor
    guinier_sharpened: Tensor
    guinier_fit: tuple[float, float, float] | None
    low_pass_angst: float | None


def _randomise_from(fsc_unmasked: Tensor, n: int, p: float, options: PostprocessOptions) -> int:
    if options.randomise_at_angst > 0:
        shell = int(n * p / options.randomise_at_angst)
        option = f"--randomize_at_A {options.randomise_at_angst:g}"
    else:
        shell = int(first_shell_below(fsc_unmasked, options.randomise_at_fsc, start=1))
        option = f"--randomize_at_fsc {options.randomise_at_fsc:g}"
    if not 0 < shell < fsc_unmasked.shape[-1]:
        raise InputError(
            f"{option}: no shell to randomise phases from (the unmasked FSC never drops "
            f"below the threshold, or the resolution lies outside 1 .. {n // 2} shells); "
            "give --randomize_at_A with a resolution inside the map"
        )
    return shell


def _shell_zero_is_one(curve: Tensor) -> Tensor:
    """A copy with shell 0 set to 1 where it is ``<= 0`` (RELION's guard for the DC term)."""
    out = curve.clone()
    out[0] = torch.where(out[0] <= 0, 1.0, out[0])
    return out


@dataclass(frozen=True)
class _Curves:
    """FSC curves of steps 1 to 3 (the masked ones None without a mask)."""

    fsc_unmasked: Tensor
    fsc_corrected: Tensor
    fsc_masked: Tensor | None = None
    fsc_random_masked: Tensor | None = None
    fsc_particle_fraction: Tensor | None = None
    randomise_from_shell: int | None = None
    particle_box_fraction: float | None = None


def _masked_fsc_curves(
    half1: Tensor,
    half2: Tensor,
    mask: Tensor,
    fsc_unmasked: Tensor,
    *,
    pixel_size_angst: float,
    options: PostprocessOptions,
    generator: torch.Generator,
) -> _Curves:
    """Steps 1 to 3 with a mask: masked, phase-randomised and corrected FSC curves."""
    n = half1.shape[-1]
    fsc_masked = fsc(to_fourier(half1 * mask, 3), to_fourier(half2 * mask, 3))
    shell = _randomise_from(fsc_unmasked, n, pixel_size_angst, options)
    randomised = []
    for half in (half1, half2):
        ft = randomise_phases_beyond(to_fourier(half, 3), shell, ndim=3, generator=generator)
        randomised.append(to_fourier(from_fourier(ft, n, 3) * mask, 3))
    fsc_random = _shell_zero_is_one(fsc(randomised[0], randomised[1]))
    fsc_masked = _shell_zero_is_one(fsc_masked)
    unmasked = _shell_zero_is_one(fsc_unmasked)
    corrected = fsc_true(fsc_masked, fsc_random, randomise_from_shell=shell, clip_negative=False)
    fraction = 0.476 / float((mask > 0.5).to(torch.float64).mean().clamp(min=1e-300))
    particle = particle_fraction_fsc(unmasked, particle_box_fraction=fraction)
    return _Curves(
        fsc_unmasked=unmasked,
        fsc_corrected=corrected,
        fsc_masked=fsc_masked,
        fsc_random_masked=fsc_random,
        fsc_particle_fraction=particle,
        randomise_from_shell=shell,
        particle_box_fraction=fraction,
    )


def _choose_final_curve(curves: _Curves, force_mask: bool) -> _Curves:
    """Step 4: the resolution shell; the unmasked curve replaces the corrected one where it
    reaches further (unless ``force_mask``). Returns the curves actually used."""
    shell = int(resolution_shell(curves.fsc_corrected, _RESOLUTION_THRESHOLD))
    if curves.fsc_random_masked is not None:
        unmasked_shell = int(resolution_shell(curves.fsc_unmasked, _RESOLUTION_THRESHOLD))
        if unmasked_shell > shell:
            logger.warning(
                "the unmasked FSC extends beyond the solvent-corrected FSC%s",
                " (kept: --force_mask)"
                if force_mask
                else "; the unmasked FSC is used (check the mask, or give --force_mask)",
            )
            if not force_mask:
                return replace(curves, fsc_corrected=curves.fsc_unmasked)
        elif shell >= 0 and float(curves.fsc_random_masked[shell]) > 0.1:
            logger.warning(
                "the phase-randomised FSC is above 0.10 at the estimated resolution; "
                "a softer mask with fewer features gives a more reliable estimate"
            )
    return curves


def _bfactor(
    weighted: tuple[Tensor, Tensor], options: PostprocessOptions
) -> tuple[float, tuple[float, float, float] | None]:
    """Step 5's B-factor: fitted (with the fit) or ad hoc (fit None)."""
    if not options.auto_bfactor:
        if options.adhoc_bfactor_angst2 > 0:
            logger.warning("a positive B-factor blurs the map; a negative one sharpens it")
        return options.adhoc_bfactor_angst2, None
    fit = fit_guinier_line(
        *weighted,
        lowres_angst=options.autob_lowres_angst,
        highres_angst=options.autob_highres_angst,
    )
    return 4.0 * fit[0], fit


def _low_pass_resolution(options: PostprocessOptions, final_resolution: float) -> float | None:
    if options.low_pass_angst is None or options.low_pass_angst < 0:
        return final_resolution
    return options.low_pass_angst if options.low_pass_angst > 0 else None


def postprocess_maps(
    half1: Float[Tensor, "n n n"],
    half2: Float[Tensor, "n n n"],
    mask: Float[Tensor, "n n n"] | None,
    *,
    pixel_size_angst: float,
    options: PostprocessOptions,
    generator: torch.Generator,
    mtf: tuple[Float[Tensor, " m"], Float[Tensor, " m"]] | None = None,
) -> PostprocessResult:
    """FSC curves, resolution and the sharpened map of two half maps (module docstring).

    Computed in float64 on the device of ``half1``.

    Parameters
    ----------
    half1, half2
        Unfiltered half maps ``(z, y, x)``, box centre at voxel ``n // 2``.
    mask
        Solvent mask with values in [0, 1] (checked by the caller), or None:
        then the unmasked FSC is the final one and nothing is randomised.
    pixel_size_angst
        Voxel size of the maps.
    options
        ``PostprocessOptions``.
    generator
        Random phases of step 2, drawn for half 1 then half 2.
    mtf
        Detector MTF: spatial frequencies (1/Angstrom, increasing) and values.
    """
    n, p = half1.shape[-1], pixel_size_angst
    h1, h2 = half1.to(torch.float64), half2.to(torch.float64)
    fsc_unmasked = fsc(to_fourier(h1, 3), to_fourier(h2, 3))
    curves = _Curves(fsc_unmasked=fsc_unmasked, fsc_corrected=fsc_unmasked)
    m = None if mask is None else mask.to(device=h1.device, dtype=torch.float64)
    if m is not None:
        curves = _masked_fsc_curves(
            h1, h2, m, fsc_unmasked, pixel_size_angst=p, options=options, generator=generator
        )
    curves = _choose_final_curve(curves, options.force_mask)
    shell = int(resolution_shell(curves.fsc_corrected, _RESOLUTION_THRESHOLD))
    resolution = n * p / shell if shell > 0 else 999.0
    average = to_fourier(0.5 * (h1 + h2), 3)
    x, original = guinier_plot(average, pixel_size_angst=p)
    guinier_mtf = None
    if mtf is not None:
        average = divide_by_mtf(average, mtf, pixel_size_angst=p)
        guinier_mtf = guinier_plot(average, pixel_size_angst=p)[1]
    if options.fsc_weighting:
        weight = fsc_weighting_curve(curves.fsc_corrected)
        average = average * shell_values_to_grid(weight, n, 3)
    weighted = guinier_plot(average, pixel_size_angst=p)[1]
    bfactor, fit = _bfactor((x, weighted), options)
    if bfactor != 0.0:
        average = apply_bfactor(average, bfactor_angst2=bfactor, pixel_size_angst=p, ndim=3)
    sharpened_guinier = guinier_plot(average, pixel_size_angst=p)[1]
    low_pass_angst = _low_pass_resolution(options, resolution)
    if low_pass_angst is not None:
        half_width = options.filter_edge_width_shells // 2
        average = low_pass(
            average,
            cutoff_shells=float(round(n * p / low_pass_angst)),
            ndim=3,
            edge_width_shells=2.0 * half_width,
        )
    sharpened = from_fourier(average, n, 3)
    return PostprocessResult(
        sharpened=sharpened,
        sharpened_masked=None if m is None else sharpened * m,
        fsc_unmasked=curves.fsc_unmasked,
        fsc_masked=curves.fsc_masked,
        fsc_random_masked=curves.fsc_random_masked,
        fsc_corrected=curves.fsc_corrected,
        fsc_particle_fraction=curves.fsc_particle_fraction,
        randomise_from_shell=curves.randomise_from_shell,
        particle_box_fraction=curves.particle_box_fraction,
        resolution_shell=shell,
        final_resolution_angst=resolution,
        bfactor_angst2=bfactor,
        guinier_resolution_squared=x,
        guinier_original=original,
        guinier_mtf=guinier_mtf,
        guinier_weighted=weighted,
        guinier_sharpened=sharpened_guinier,
        guinier_fit=fit,
        low_pass_angst=low_pass_angst,
    )
