"""Expected accuracy of the orientations and offsets (RELION's ``calculateExpectedAngularErrors``).

For each particle (RELION takes the first 100 of the iteration, half 1's
reference), at the current image size ``m`` (REFINE_SPEC §5.3):

- ``F1 = K P(A)``: the reference projected (slice for images, rotated volume
  for subtomograms) at the particle's pose, times its CTF term ``K`` (the CTF,
  or CTF**2 for premultiplied data);
- ``F2`` the same after an error: ``eps`` degrees added to one of rot, tilt,
  psi, or a shift of ``delta`` pixels along one axis (``x`` or ``y`` for images,
  ``x``, ``y`` or ``z`` for subtomograms; the phase uses the full box ``n``);
- ``SNR = sum_k |F1 - F2|**2 / (2 sigma2(r_k))`` over the coefficients with
  ``1 <= round(|k|) <= m / 2`` (Friedel mates ``kx = 0, ky < 0`` left out);
- ``eps`` runs 0.05, 0.1, ... (steps 0.05 below 0.2, 0.1 below 1, 0.2 below 2,
  0.5 below 5, 1 below 10, 2 below 20, then 5) and ``delta`` 0.1, 0.2, ...
  (steps 0.1 below 1, 0.2 below 2, 0.5 below 5, 1 below 10, then 2), summed in
  float64 as RELION does (so 0.1 steps end at 0.9999999999999999 and one more
  follows); the first value with ``SNR > ln 100`` is the particle's error; if
  none up to 30 degrees (10 pixels), the first value beyond (30.1 degrees, 10.1
  pixels) counts.

``acc_rot`` is the mean ``eps`` (degrees), ``acc_trans`` the mean ``delta``
times the pixel size (Angstrom). The per-shell terms of the angular test at
its final ``eps`` are summed over particles and normalised to 1
(``rlnSpectralOrientabilityContribution``). One uniform draw per particle picks
the perturbed angle (thirds) and the shift axis (halves, or thirds in 3D),
the same draw for both tests, as RELION's per-particle seeding gives.
Everything is batched over particles and ladder steps; ``max_elements`` bounds
the size of the projections made at once.
"""

import math
from dataclasses import dataclass
from functools import cache

import torch
from jaxtyping import Complex, Float
from torch import Tensor

from cryorefine.fourier import (
    extract_slices,
    frequency_indices,
    friedel_redundant,
    rotate_volume,
    shell_index,
)
from cryorefine.geometry import euler_to_matrix

__all__ = ["SNR_THRESHOLD", "AccuracyEstimate", "accuracy_ladder", "estimate_accuracies"]

#: RELION's ``pvalue``: ln(100), an SNR at which two poses differ with probability 0.99.
SNR_THRESHOLD = 4.60517

#: Ladder steps tried at once, at most: the search stops at the chunk where every particle
#: has its error, and the rotation ladder has 36 steps, most of them beyond it (the demo's
#: 24 particles of box 32 on a CPU: all 36 at once took 1.0-1.5 s per iteration).
LADDER_STEPS_PER_CHUNK = 8


@dataclass(frozen=True)
class AccuracyEstimate:
    """Result of ``estimate_accuracies``: the means, and the orientability per shell (sums to 1)."""

    acc_rot_deg: float
    acc_trans_angst: float
    orientability: Float[Tensor, " s"]


@cache
def accuracy_ladder(kind: str) -> tuple[float, ...]:
    """RELION's trial errors, ``"rotation"`` (degrees) or ``"translation"`` (pixels).

    The last value is the cap (the first beyond 30 degrees or 10 pixels).
    """
    steps: tuple[tuple[float, float], ...]
    if kind == "rotation":
        steps, limit = (
            ((0.2, 0.05), (1.0, 0.1), (2.0, 0.2), (5.0, 0.5), (10.0, 1.0), (20.0, 2.0)),
            30.0,
        )
        last = 5.0
    elif kind == "translation":
        steps, limit, last = ((1.0, 0.1), (2.0, 0.2), (5.0, 0.5), (10.0, 1.0)), 10.0, 2.0
    else:
        raise ValueError(f"kind must be 'rotation' or 'translation', got {kind!r}")
    values = [0.0]
    while values[-1] <= limit:
        step = next((s for bound, s in steps if values[-1] < bound), last)
        values.append(values[-1] + step)
    return tuple(values[1:])


def _window(m: int, ndim: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Flat indices, shells and integer frequencies ``(k, ndim)`` of the coefficients scored."""
    shells = shell_index(m, ndim, device=device)
    keep = (shells >= 1) & (shells <= m // 2) & ~friedel_redundant(m, ndim, device=device)
    flat = keep.reshape(-1).nonzero().squeeze(1)
    freq = frequency_indices(m, ndim, device=device).reshape(-1, ndim)[flat]
    return flat, shells.reshape(-1)[flat], freq


def _project(reference_ft: Tensor, rotations: Tensor, m: int, ndim: int, pad: int) -> Tensor:
    if ndim == 2:
        slices = extract_slices(reference_ft, rotations, out_size=m, padding_factor=pad)
    else:
        slices = rotate_volume(reference_ft, rotations, out_size=m, padding_factor=pad)
    return slices.reshape(rotations.shape[0], -1)


def _first_above(snr: Tensor, ladder: Tensor) -> tuple[Tensor, Tensor]:
    """Index of the first ladder step with ``SNR > threshold`` (its length if none) per particle."""
    length = snr.shape[-1]
    index = torch.arange(length, device=snr.device)
    first = torch.where(snr > SNR_THRESHOLD, index, length).amin(dim=-1)
    return first, ladder[first.clamp(max=ladder.shape[0] - 1)]


def _rotation_errors(
    reference_ft: Tensor,
    angles_deg: Tensor,
    f1: Tensor,
    ctf: Tensor | None,
    weight: Tensor,
    axis: Tensor,
    window: tuple[Tensor, Tensor, Tensor],
    *,
    m: int,
    ndim: int,
    pad: int,
    chunk: int,
    shells: int,
) -> tuple[Tensor, Tensor]:
    """Per-particle angular error and summed per-shell terms at it (``(b,)``, ``(s,)``)."""
    flat, shell, _ = window
    ladder = torch.tensor(accuracy_ladder("rotation"), dtype=torch.float64, device=f1.device)
    b = angles_deg.shape[0]
    onehot = torch.nn.functional.one_hot(axis, 3).to(torch.float64)
    error = torch.full((b,), float(ladder[-1]), dtype=torch.float64, device=f1.device)
    contribution = torch.zeros(b, shells, dtype=torch.float64, device=f1.device)
    pending = torch.ones(b, dtype=torch.bool, device=f1.device)
    for start in range(
        0, ladder.shape[0] - 1, chunk
    ):  # ladder chunks; stops when all particles are done
        steps = ladder[start : min(start + chunk, ladder.shape[0] - 1)]
        angles = (
            angles_deg.to(torch.float64)[:, None, :] + steps[None, :, None] * onehot[:, None, :]
        )
        rotations = euler_to_matrix(angles).reshape(-1, 3, 3)
        f2 = _project(reference_ft, rotations, m, ndim, pad)[:, flat].reshape(b, steps.shape[0], -1)
        if ctf is not None:
            f2 = f2 * ctf[:, None, :]
        terms = (f1[:, None, :] - f2).abs().to(torch.float64) ** 2 * weight[:, None, :]
        first, value = _first_above(terms.sum(-1), steps)
        found = pending & (first < steps.shape[0])
        per_shell = torch.zeros(b, shells, dtype=torch.float64, device=f1.device)
        chosen = terms[torch.arange(b, device=f1.device), first.clamp(max=steps.shape[0] - 1)]
        per_shell.index_add_(1, shell, chosen)
        error = torch.where(found, value, error)
        contribution = torch.where(found[:, None], per_shell, contribution)
        pending = pending & ~found
        if not bool(pending.any()):
            break
    return error, contribution.sum(0)


def _translation_errors(
    f1: Tensor, weight: Tensor, axis: Tensor, freq: Tensor, *, n: int, chunk: int
) -> Tensor:
    """Per-particle shift error in pixels.

    ``|F1 - F2|^2 = |F1|^2 2 (1 - cos(2 pi k_a delta / n))`` for a shift along axis ``a``.
    """
    ladder = torch.tensor(accuracy_ladder("translation"), dtype=torch.float64, device=f1.device)
    power = f1.abs().to(torch.float64) ** 2 * weight  # (b, k)
    k_axis = torch.gather(freq.T.to(torch.float64), 0, axis[:, None].expand(-1, freq.shape[0]))
    error = torch.full((f1.shape[0],), float(ladder[-1]), dtype=torch.float64, device=f1.device)
    pending = torch.ones(f1.shape[0], dtype=torch.bool, device=f1.device)
    for start in range(0, ladder.shape[0] - 1, chunk):
        steps = ladder[start : min(start + chunk, ladder.shape[0] - 1)]
        phase = 2.0 * math.pi / n * k_axis[:, None, :] * steps[None, :, None]
        snr = (power[:, None, :] * 2.0 * (1.0 - torch.cos(phase))).sum(-1)
        first, value = _first_above(snr, steps)
        found = pending & (first < steps.shape[0])
        error = torch.where(found, value, error)
        pending = pending & ~found
        if not bool(pending.any()):
            break
    return error


def estimate_accuracies(
    reference_ft: Complex[Tensor, "p p ph"],
    angles_deg: Float[Tensor, "b 3"],
    ctf: Float[Tensor, "b ..."] | None,
    sigma2_noise: Float[Tensor, "b s"],
    pixel_size_angst: Float[Tensor, " b"],
    *,
    current_size: int,
    ori_size: int,
    data_dimensionality: int,
    generator: torch.Generator,
    padding_factor: int = 2,
    max_elements: int = 1 << 24,
    multiplicity: Float[Tensor, "b ..."] | None = None,
    noise_scale: Float[Tensor, "b ..."] | None = None,
) -> AccuracyEstimate:
    """RELION's accuracy estimate for a batch of particles (module docstring).

    Parameters
    ----------
    reference_ft
        Half 1's projector (``fourier.prepare_reference``).
    angles_deg
        Each particle's current (rot, tilt, psi).
    ctf
        Each particle's ``K`` cropped to ``current_size`` (``fourier.fourier_crop``),
        ``(b, m, mh)`` or ``(b, m, m, mh)``; None without CTF.
    sigma2_noise
        The noise spectrum of each particle's optics group, ``ori_size // 2 + 1`` shells.
    pixel_size_angst
        Of each particle's images.
    current_size, ori_size
        ``m`` and the full box ``n`` (the shift phases use ``n``).
    data_dimensionality
        2 (images, slices, 2D shifts) or 3 (subtomograms, rotated volumes, 3D shifts).
    generator
        Draws one uniform number per particle (on its device).
    padding_factor
        Of ``reference_ft``.
    max_elements
        Coefficients projected at once (bounds memory), at least one ladder step and at
        most ``LADDER_STEPS_PER_CHUNK``.
    multiplicity
        RELION-4 pseudo-subtomograms' multiplicity ``M`` cropped like ``ctf``, or
        None. The SNR then weighs each coefficient by ``1 / (2 sigma2 M)`` (0 where
        ``M <= 0.1``), the weight the scores use. RELION leaves ``M`` out here, which
        overstates the SNR by about the number of tilts and so the accuracy, and
        drives the angular sampling far finer than the poses are known.
    noise_scale
        With ``multiplicity``: each coefficient's noise in units of ``2 sigma2``
        (``subtomo_noise.noise_scale_grid``), cropped like ``ctf``, in place of ``M``.
    """
    ndim = data_dimensionality
    device = reference_ft.device
    b, m = angles_deg.shape[0], current_size
    window = _window(m, ndim, device)
    flat, shell, freq = window
    noise = sigma2_noise.to(device, torch.float64)[:, shell]
    weight = torch.where(noise > 0, 1.0 / (2.0 * noise.clamp(min=1e-300)), 0.0)
    if multiplicity is not None:
        counts = multiplicity.to(device, torch.float64).reshape(b, -1)[:, flat]
        scale = counts
        if noise_scale is not None:
            scale = noise_scale.to(device, torch.float64).reshape(b, -1)[:, flat]
        weight = torch.where(counts > 0.1, weight / scale.clamp(min=1e-300), 0.0)
    draw = torch.rand(b, generator=generator, device=generator.device, dtype=torch.float64).to(
        device
    )
    angle_axis = (draw >= 0.3333).long() + (draw >= 0.6667).long()
    shift_axis = angle_axis if ndim == 3 else (draw >= 0.5).long()
    ctf_flat = None if ctf is None else ctf.to(device).reshape(b, -1)[:, flat]
    matrices = euler_to_matrix(angles_deg.to(device, torch.float64))
    f1 = _project(reference_ft, matrices, m, ndim, padding_factor)[:, flat]
    if ctf_flat is not None:
        f1 = f1 * ctf_flat
    chunk = max(1, min(LADDER_STEPS_PER_CHUNK, max_elements // max(1, b * flat.shape[0])))
    rot_error, contribution = _rotation_errors(
        reference_ft,
        angles_deg.to(device),
        f1,
        ctf_flat,
        weight,
        angle_axis,
        window,
        m=m,
        ndim=ndim,
        pad=padding_factor,
        chunk=chunk,
        shells=sigma2_noise.shape[-1],
    )
    shift_error = _translation_errors(f1, weight, shift_axis, freq, n=ori_size, chunk=chunk)
    total = contribution.sum()
    orientability = contribution / total if float(total) > 0 else contribution
    pixels = pixel_size_angst.to(device, torch.float64)
    return AccuracyEstimate(
        acc_rot_deg=float(rot_error.mean()),
        acc_trans_angst=float((shift_error * pixels).mean()),
        orientability=orientability,
    )
