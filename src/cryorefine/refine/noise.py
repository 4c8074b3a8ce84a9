"""The noise model: its first estimate from the particles and its M-step update.

Initial estimate (RELION's ``calculateSumOfPowerSpectraAndAverageImage`` and
``setSigmaNoiseEstimatesAndSetAverageImage``, REFINE_SPEC §4.2 step 2): from the
first ``nr_parts_sigma2noise`` particles of each optics group, masked in real
space as the E-step masks them (``fourier.mask_with_background``),

    sigma2(o, r) = mean_b P_b(r) / 2 - |mean_b F_b|^2(r) / 2,

with ``P_b(r)`` the mean ``|F_b(k)|^2`` over the coefficients of shell ``r``
(every stored one, Friedel mates included, as RELION's loops) and the second
term the power spectrum of the average image of *all* optics groups together.
A negative value takes the previous shell's value if that is positive, else
the next positive one. The sums can be accumulated over batches
(``initial_noise_sums``) and finished once (``initial_sigma2_noise``).

Update (``maximizationOtherParameters``, §4.5): per optics group with a
non-zero sum, ``sigma2(r) = S(r) / (2 W N(r))`` with ``S`` the weighted sums of
``|K P - X|^2``, ``W`` the summed weights (number of particles) and ``N(r)``
the coefficients per shell (``fourier.shell_counts``); for RELION-4
pseudo-subtomograms ``S(r) / (2 M(r))`` where the summed multiplicity ``M(r) > 0``.
CTF-premultiplied data floor the result at 1e-15; then any value below 1e-14
(shell > 0) takes the previous shell's (new) value.
"""

import torch
from jaxtyping import Complex, Float, Int
from torch import Tensor

from cryorefine.fourier import power_spectrum

__all__ = ["initial_noise_sums", "initial_sigma2_noise", "update_sigma2_noise"]


def initial_noise_sums(
    images_ft: Complex[Tensor, "b ..."],
    optics_groups: Int[Tensor, " b"],
    *,
    nr_optics_groups: int,
    ndim: int,
) -> tuple[Float[Tensor, "o s"], Float[Tensor, " o"], Complex[Tensor, "..."]]:
    """Sums for the initial noise spectrum over one batch of masked particles.

    Parameters
    ----------
    images_ft
        ``to_fourier`` of the masked images, ``(b, n, nh)`` or ``(b, n, n, nh)``.
    optics_groups
        0-based optics group of each particle.
    nr_optics_groups
        ``o``.
    ndim
        2 or 3 (axes of each transform).

    Returns
    -------
    tuple
        Summed shell powers ``(o, n // 2 + 1)`` float64, particle counts
        ``(o,)`` float64, and the summed transform (complex128, one image).
        Add these over batches before ``initial_sigma2_noise``.
    """
    spectra = power_spectrum(images_ft, ndim=ndim, exclude_redundant=False)  # (b, s)
    groups = optics_groups.to(spectra.device, torch.int64)
    sums = torch.zeros(
        nr_optics_groups, spectra.shape[-1], dtype=torch.float64, device=spectra.device
    )
    sums.index_add_(0, groups, spectra)
    counts = torch.bincount(groups, minlength=nr_optics_groups).to(torch.float64)
    return sums, counts, images_ft.to(torch.complex128).sum(dim=0)


def _replace_negative(values: list[float]) -> list[float]:
    """RELION's repair: a negative value takes the previous positive one, else the next one."""
    out = list(values)
    for i, value in enumerate(out):
        if value >= 0.0:
            continue
        if i > 0 and out[i - 1] > 0.0:
            out[i] = out[i - 1]
            continue
        later = [v for v in values[i + 1 :] if v > 0.0]
        if not later:
            raise ValueError("no positive value in the noise spectrum to replace a negative one")
        out[i] = later[0]
    return out


def initial_sigma2_noise(
    power_sums: Float[Tensor, "o s"],
    counts: Float[Tensor, " o"],
    transform_sum: Complex[Tensor, "..."],
    *,
    ndim: int,
) -> Float[Tensor, "o s"]:
    """Initial ``sigma2_noise`` from the sums of ``initial_noise_sums`` (module docstring).

    Groups without particles get zeros. Returns float64 ``(o, n // 2 + 1)``.
    """
    average = transform_sum / counts.sum().clamp(min=1.0)
    average_power = power_spectrum(average, ndim=ndim, exclude_redundant=False) / 2.0
    sigma2 = power_sums / (2.0 * counts.clamp(min=1.0))[:, None] - average_power
    rows = []
    for group, row in enumerate(sigma2.cpu().tolist()):  # o x s values, once per run
        rows.append(_replace_negative(row) if counts[group] > 0 else [0.0] * len(row))
    return torch.tensor(rows, dtype=torch.float64, device=power_sums.device)


def _fill_from_previous(values: Tensor, floor: float) -> Tensor:
    """Shells ``> 0`` below ``floor`` take the value of the nearest lower shell that is not."""
    index = torch.arange(values.shape[-1], device=values.device)
    keep = (values >= floor) | (index == 0)
    source = torch.where(keep, index, 0).cummax(dim=-1).values
    return torch.gather(values, -1, source)


def update_sigma2_noise(
    previous: Float[Tensor, "o s"],
    noise_sums: Float[Tensor, "o s"],
    weight_sums: Float[Tensor, " o"],
    shell_counts: Float[Tensor, " s"],
    *,
    multiplicity_sums: Float[Tensor, "o s"] | None = None,
    ctf_premultiplied: bool = False,
) -> Float[Tensor, "o s"]:
    """New noise spectra from the E-step sums (module docstring).

    Parameters
    ----------
    previous
        Current ``sigma2_noise``; kept for a group whose sums are all zero.
    noise_sums
        ``sum_b sum w |K P - X|^2`` per optics group and shell (beyond the
        current size: the particles' power, as RELION adds it).
    weight_sums
        ``sum_b sum w`` per optics group (RELION's ``sumw_group``).
    shell_counts
        Coefficients per shell of one image, ``fourier.shell_counts(n, ndim)``.
    multiplicity_sums
        ``sum_b sum w M`` per shell for pseudo-subtomograms with multiplicity, or None.
    ctf_premultiplied
        Floor at 1e-15 (RELION's guard for premultiplied data).
    """
    noise = noise_sums.to(torch.float64)
    denominator = 2.0 * weight_sums.to(torch.float64)[:, None] * shell_counts.to(torch.float64)
    if multiplicity_sums is not None and bool((multiplicity_sums > 0).any()):
        multiplicity = multiplicity_sums.to(torch.float64)
        denominator = torch.where(multiplicity > 0, 2.0 * multiplicity, denominator)
    new = torch.where(denominator > 0, noise / denominator.clamp(min=1e-300), 0.0)
    if ctf_premultiplied:
        new = new.clamp(min=1e-15)
    new = _fill_from_previous(new, 1e-14)
    updated = noise.sum(dim=-1) != 0
    return torch.where(updated[:, None], new, previous.to(torch.float64))
