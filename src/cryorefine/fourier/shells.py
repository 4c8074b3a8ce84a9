"""Per-shell sums, spectra, Fourier shell correlation and resolution, as RELION bins them.

Shells are ``round(|k|)`` of the integer frequency (``fourier.conventions``); a
spectrum of a box of side ``n`` has ``n // 2 + 1`` entries and coefficients in the
corners (shell > ``n // 2``) are left out. Sums are float64.

Which coefficients a sum covers (RELION):

- per-shell statistics of images (noise spectra, pixel counts ``Npix``, the
  E-step) leave out the Friedel mates ``kx == 0, ky < 0`` that the half-complex
  layout stores twice (``conventions.friedel_redundant``; ``exclude_redundant``);
- the FSC (``getFSC``) and ``getSpectrum`` run over every stored coefficient,
  mates included. A mate repeats its partner's term in numerator and
  denominators, so it changes the ratio only through the weight of that half line.
"""

import functools
import math

import torch
from jaxtyping import Float, Int, Shaped
from torch import Tensor

from cryorefine.fourier.conventions import friedel_redundant, rfft_shape, shell_index

__all__ = [
    "first_shell_below",
    "fsc",
    "fsc_to_ssnr",
    "fsc_true",
    "power_spectrum",
    "radial_average",
    "resolution_at",
    "resolution_shell",
    "shell_counts",
    "shell_sums",
    "shell_values_to_grid",
]


def _side(values: Tensor, ndim: int) -> int:
    """Box side ``n`` of a half-complex array, checked against its last axis."""
    n = values.shape[-2] if ndim >= 2 else 2 * (values.shape[-1] - 1)
    if tuple(values.shape[-ndim:]) != rfft_shape(n, ndim):
        raise ValueError(f"expected (..., n, .., n // 2 + 1) of {ndim} axes, got {values.shape}")
    return n


_KEPT_MAP_BYTES = 2**25
"""Shell maps up to this size (3D boxes up to 200) are kept per size and device: every batch
sums shells, and a map is about 25 operators to make. Larger ones are made each time."""


def _shell_map(n: int, ndim: int, device: torch.device, exclude_redundant: bool) -> Tensor:
    """Flat shell index per coefficient; ``n // 2 + 1`` (a discard bin) where not summed.

    Callers only read it (it may be a kept map, ``_KEPT_MAP_BYTES``)."""
    if 8 * math.prod(rfft_shape(n, ndim)) <= _KEPT_MAP_BYTES:
        return _kept_shell_map(n, ndim, device, exclude_redundant)
    return _made_shell_map(n, ndim, device, exclude_redundant)


@functools.lru_cache(maxsize=16)
def _kept_shell_map(n: int, ndim: int, device: torch.device, exclude_redundant: bool) -> Tensor:
    with torch.inference_mode(False):  # a normal tensor, whatever the caller's mode
        return _made_shell_map(n, ndim, device, exclude_redundant)


def _made_shell_map(n: int, ndim: int, device: torch.device, exclude_redundant: bool) -> Tensor:
    shells = shell_index(n, ndim, device=device)
    drop = shells > n // 2
    if exclude_redundant:
        drop = drop | friedel_redundant(n, ndim, device=device)
    return torch.where(drop, n // 2 + 1, shells).reshape(-1)


def shell_sums(
    values: Shaped[Tensor, "..."], n: int, ndim: int, *, exclude_redundant: bool = True
) -> Float[Tensor, "... s"]:
    """Sum of real ``values (..., n, .., n // 2 + 1)`` per shell: ``(..., n // 2 + 1)`` float64."""
    if tuple(values.shape[-ndim:]) != rfft_shape(n, ndim):
        raise ValueError(f"expected trailing shape {rfft_shape(n, ndim)}, got {values.shape}")
    batch = values.shape[:-ndim]
    flat = values.to(torch.float64).reshape(*batch, -1)
    index = _shell_map(n, ndim, values.device, exclude_redundant)
    out = torch.zeros(*batch, n // 2 + 2, dtype=torch.float64, device=values.device)
    out.index_add_(-1, index, flat)
    return out[..., : n // 2 + 1]


def shell_counts(
    n: int, ndim: int, *, device: torch.device | None = None, exclude_redundant: bool = True
) -> Float[Tensor, " s"]:
    """Number of coefficients per shell (RELION's ``Npix_per_shell`` by default), float64."""
    ones = torch.ones(rfft_shape(n, ndim), dtype=torch.float64, device=device)
    return shell_sums(ones, n, ndim, exclude_redundant=exclude_redundant)


def radial_average(
    values: Shaped[Tensor, "..."], n: int, ndim: int, *, exclude_redundant: bool = True
) -> Float[Tensor, "... s"]:
    """Mean of real ``values`` per shell (float64); 0 in a shell with no coefficient."""
    sums = shell_sums(values, n, ndim, exclude_redundant=exclude_redundant)
    counts = shell_counts(n, ndim, device=values.device, exclude_redundant=exclude_redundant)
    return torch.where(counts > 0, sums / counts.clamp(min=1.0), 0.0)


def power_spectrum(
    ft: Shaped[Tensor, "..."], *, ndim: int, exclude_redundant: bool = True
) -> Float[Tensor, "... s"]:
    """Mean ``|F|^2`` per shell (float64) of half-complex ``ft``.

    RELION's ``getSpectrum`` averages over every stored coefficient: pass
    ``exclude_redundant=False`` to match it exactly.
    """
    n = _side(ft, ndim)
    power = ft.to(torch.complex128).abs() ** 2
    return radial_average(power, n, ndim, exclude_redundant=exclude_redundant)


def fsc(
    map_a_ft: Shaped[Tensor, "..."], map_b_ft: Shaped[Tensor, "..."], *, ndim: int = 3
) -> Float[Tensor, "... s"]:
    """Fourier shell (ring, ``ndim=2``) correlation per shell, RELION's ``getFSC``.

    ``sum Re(conj(a) b) / sqrt(sum |a|^2 sum |b|^2)`` over every stored
    coefficient of each shell (Friedel mates included), float64. A shell where
    either map has no power gives 0 (RELION would give NaN). Batched over
    leading axes; ``(..., n // 2 + 1)``.
    """
    if map_a_ft.shape != map_b_ft.shape:
        raise ValueError(f"FSC of maps of different shapes {map_a_ft.shape}, {map_b_ft.shape}")
    n = _side(map_a_ft, ndim)
    a = map_a_ft.to(torch.complex128)
    b = map_b_ft.to(torch.complex128)
    num = shell_sums((a.conj() * b).real, n, ndim, exclude_redundant=False)
    den_a = shell_sums(a.abs() ** 2, n, ndim, exclude_redundant=False)
    den_b = shell_sums(b.abs() ** 2, n, ndim, exclude_redundant=False)
    den = torch.sqrt(den_a * den_b)
    return torch.where(den > 0, num / torch.where(den > 0, den, 1.0), 0.0)


def first_shell_below(
    curve: Float[Tensor, "... s"], threshold: float, *, start: int = 1
) -> Int[Tensor, "..."]:
    """First shell ``i >= start`` with ``curve[i] < threshold``; ``s`` (the length) if none.

    ``start=1`` is RELION's search for the phase-randomisation shell (FSC of
    the unmasked maps below 0.8, shell 0 skipped).
    """
    s = curve.shape[-1]
    index = torch.arange(s, device=curve.device)
    below = (curve < threshold) & (index >= start)
    candidates = torch.where(below, index, s)
    return candidates.min(dim=-1).values


def resolution_shell(curve: Float[Tensor, "... s"], threshold: float) -> Int[Tensor, "..."]:
    """Last shell before the curve first drops below ``threshold`` (-1 if shell 0 does).

    RELION's reported resolution (``rlnFinalResolution``) is ``n p / shell``
    of this shell (REFINE_SPEC section 8 step 4).
    """
    return first_shell_below(curve, threshold, start=0) - 1


def resolution_at(
    curve: Float[Tensor, "... s"],
    threshold: float,
    *,
    pixel_size_angst: float,
    box_size: int,
    interpolate: bool = True,
) -> Float[Tensor, "..."]:
    """Resolution (Angstrom) where an FSC curve first crosses ``threshold``.

    Without ``interpolate``: ``n p / i`` for ``i = resolution_shell`` (RELION's
    ``rlnFinalResolution``). With it: ``n p / (i + f)`` where ``f`` places the
    crossing linearly between shells ``i`` and ``i + 1`` (RELION's fractional
    resolution). A curve that never drops gives the last shell; one that is
    below at shell 0 gives ``inf``. ``box_size`` is the side whose shells the
    curve holds (frequency of shell ``i`` is ``i / (box_size p)``).
    """
    s = curve.shape[-1]
    last = resolution_shell(curve, threshold)
    shell = last.to(torch.float64)
    if interpolate:
        inside = (last >= 0) & (last < s - 1)
        i0 = last.clamp(0, s - 2).unsqueeze(-1)
        v0 = torch.gather(curve, -1, i0).squeeze(-1).to(torch.float64) - threshold
        v1 = torch.gather(curve, -1, i0 + 1).squeeze(-1).to(torch.float64) - threshold
        fraction = v0 / torch.where(v0 != v1, v0 - v1, 1.0)
        shell = torch.where(inside, shell + fraction, shell)
    length = box_size * pixel_size_angst
    return torch.where(shell > 0, length / shell.clamp(min=1e-300), torch.inf)


def fsc_true(
    fsc_masked: Float[Tensor, "... s"],
    fsc_random_masked: Float[Tensor, "... s"],
    *,
    randomise_from_shell: int,
    clip_negative: bool = True,
) -> Float[Tensor, "... s"]:
    """Solvent-corrected FSC (Chen et al. 2013) from the phase-randomised masked FSC.

    ``FSC_masked`` for shells ``i < randomise_from_shell + 2``, above them
    ``(FSC_masked - FSC_rand) / (1 - FSC_rand)``. ``clip_negative``: 0 where
    ``FSC_rand > FSC_masked``, as relion_refine's solvent-corrected FSC does;
    relion_postprocess does not clip (``clip_negative=False``).
    """
    masked = fsc_masked.to(torch.float64)
    random = fsc_random_masked.to(torch.float64)
    corrected = (masked - random) / (1.0 - random)
    if clip_negative:
        corrected = torch.where(random > masked, 0.0, corrected)
    index = torch.arange(masked.shape[-1], device=masked.device)
    return torch.where(index < randomise_from_shell + 2, masked, corrected)


def fsc_to_ssnr(
    fsc_curve: Float[Tensor, "... s"], *, tau2_fudge: float = 1.0, joined_halves: bool = False
) -> Float[Tensor, "... s"]:
    """Signal-to-noise ratio per shell from the gold-standard FSC (RELION's ``rlnSsnrMap``).

    ``F = max(FSC, 0.001)``; for joined halves ``F = sqrt(2 F / (F + 1))``;
    ``F = min(F, 0.999)``; ``SSNR = tau2_fudge * F / (1 - F)``
    (``BackProjector::updateSSNRarrays``). ``tau2 = SSNR * sigma2`` of the
    reconstruction is the caller's.
    """
    f = fsc_curve.to(torch.float64).clamp(min=0.001)
    if joined_halves:
        f = torch.sqrt(2.0 * f / (f + 1.0))
    f = f.clamp(max=0.999)
    return tau2_fudge * f / (1.0 - f)


def shell_values_to_grid(curve: Float[Tensor, "... s"], n: int, ndim: int) -> Float[Tensor, "..."]:
    """Per-shell values put on every coefficient of the half-complex grid of side ``n``.

    ``(..., s) -> (..., n, .., n // 2 + 1)``; coefficients whose shell is ``>= s``
    (corners, or beyond a shorter curve) get 0.
    """
    s = curve.shape[-1]
    shells = shell_index(n, ndim, device=curve.device)
    padded = torch.cat([curve, torch.zeros_like(curve[..., :1])], dim=-1)
    flat = torch.where(shells < s, shells, s).reshape(-1)
    return padded[..., flat].reshape(*curve.shape[:-1], *shells.shape)
