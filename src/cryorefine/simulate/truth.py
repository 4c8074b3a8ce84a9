"""The true map of a simulation: read, resampled to the particles' grid, symmetrised; its power.

Resampling (``resample_map``)
    Voxel ``j`` of the new box (centre ``m // 2``, pixel ``p_new``) lies at
    ``x = (j - m // 2) p_new / p_old + n // 2`` in voxels of the old box. The
    map is evaluated there by trigonometric (band-limited) interpolation, one
    axis at a time, and is 0 outside ``[0, n - 1]`` (a real-space pad; a smaller
    box crops). When the new pixel is larger, the map is first low-passed
    (sharp sphere) at the new Nyquist frequency so that nothing aliases. With
    equal pixel sizes the positions are whole voxels and the values are copied
    exactly: this is then a plain pad or crop about the centre.
Symmetrising (``symmetrise_map``)
    The mean of the map turned by every operator of the group (identity,
    rotations and, for groups that have them, mirrors and the inversion). The
    mean over a group is unchanged by any of its operators, so the truth is
    symmetric as a symmetric refinement assumes. Operators that map the voxel
    grid onto itself are applied by copying voxels (exact); the others by the
    projector's 3D rotation (``fourier.rotate_volume``, padding 4, separable
    gridding correction), whose trilinear error, at most ``(1 - L) / L`` of the
    density at offset ``x`` with ``L = prod sinc^2(x_i / 4n)`` (about 3% a
    quarter box from the centre), is what keeps the symmetry from being exact.
Signal power (``signal_power``)
    ``SNR_DEFINITION`` of ``simulate.options``; the shell power of the truth is
    computed with a full (not half-complex) float64 FFT.
"""

import logging
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from cryorefine.errors import InputError
from cryorefine.fourier.conventions import from_fourier, to_fourier
from cryorefine.fourier.filters import low_pass
from cryorefine.fourier.projector import prepare_reference, rotate_volume
from cryorefine.geometry import SymmetryGroup
from cryorefine.io import read_mrc
from cryorefine.simulate.embedded import EMBEDDED_MAP_DESCRIPTION, embedded_map
from cryorefine.simulate.options import SimulationOptions

__all__ = [
    "PADDING_FACTOR",
    "SYMMETRISE_PADDING",
    "prepare_truth",
    "resample_map",
    "shell_power",
    "signal_power",
    "symmetrise_map",
]

#: Padding of every Fourier reference of the simulation (RELION's default ``--pad``).
PADDING_FACTOR = 2

#: Padding of the projector that turns the truth for symmetrising (trilinear error ~ p^-2).
SYMMETRISE_PADDING = 4

logger = logging.getLogger(__name__)

# Operators rotated per call of rotate_volume, bounding memory to ~r n^3 complex values.
_OPERATORS_PER_BATCH = 12


def _interpolation_matrix(
    positions: Float[Tensor, " m"], n: int, *, max_frequency: float
) -> Float[Tensor, "m n"]:
    """Weights of the ``n`` samples (period ``n``) of trigonometric interpolation at ``positions``.

    ``w[j, i] = (1/n) sum_k c_k cos(2 pi k (x_j - i) / n)`` over ``0 <= k <= max_frequency``
    (``c_0 = 1``, ``c_k = 2``; the Nyquist term ``k = n / 2`` has ``c = 1``): at whole
    positions and with all frequencies, ``w[j, i] = 1`` if ``x_j = i`` and 0 otherwise.
    Positions outside ``[0, n - 1]`` (beyond 1e-6) get 0 weights.
    """
    k = torch.arange(n // 2 + 1, dtype=torch.float64, device=positions.device)
    weight = torch.full_like(k, 2.0)
    weight[0] = 1.0
    if n % 2 == 0:
        weight[-1] = 1.0
    weight = torch.where(k <= max_frequency + 1e-9, weight, 0.0)
    i = torch.arange(n, dtype=torch.float64, device=positions.device)
    t = positions[:, None, None] - i[None, :, None]  # (m, n, 1)
    w = (weight * torch.cos(2 * torch.pi * k * t / n)).sum(-1) / n
    inside = (positions >= -1e-6) & (positions <= n - 1 + 1e-6)
    return torch.where(inside[:, None], w, 0.0)


def resample_map(
    volume: Float[Tensor, "n n n"],
    *,
    pixel_size_angst: float,
    new_pixel_size_angst: float,
    new_box_size: int,
) -> Float[Tensor, "m m m"]:
    """The map on a box of ``new_box_size`` voxels of ``new_pixel_size_angst`` (module docstring).

    Computed in float64; returned in the dtype of ``volume``.
    """
    n = volume.shape[-1]
    if volume.shape != (n, n, n):
        raise ValueError(f"volume must be a cube, got shape {tuple(volume.shape)}")
    ratio = new_pixel_size_angst / pixel_size_angst
    work = volume.to(torch.float64)
    max_frequency = n / 2
    if ratio > 1 + 1e-9:
        max_frequency = n / (2 * ratio)  # new Nyquist, in cycles per old box
        ft = low_pass(to_fourier(work, 3), cutoff_shells=max_frequency, ndim=3, edge_width_shells=0)
        work = from_fourier(ft, n, 3)
    j = torch.arange(new_box_size, dtype=torch.float64, device=volume.device)
    positions = (j - new_box_size // 2) * ratio + n // 2
    w = _interpolation_matrix(positions, n, max_frequency=max_frequency)
    out = work @ w.T  # x: (n, n, m)
    out = (out.transpose(1, 2) @ w.T).transpose(1, 2)  # y: (n, m, m)
    out = (out.permute(1, 2, 0) @ w.T).permute(2, 0, 1)  # z: (m, m, m)
    return out.contiguous().to(volume.dtype)


def _signed_permutation(operator: Tensor) -> bool:
    """Whether ``operator`` maps the voxel grid onto itself (entries 0 and +-1 only)."""
    rounded = torch.round(operator)
    return bool(((operator - rounded).abs() < 1e-9).all() and (rounded.abs().sum(-1) == 1).all())


def _turn_on_grid(volume: Tensor, operator: Tensor) -> Tensor:
    """``v(R.T x)`` for a signed permutation ``R``, voxels copied; 0 where ``R.T x`` is outside."""
    n = volume.shape[-1]
    axis = torch.arange(n, device=volume.device) - n // 2
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    offsets = torch.stack([x, y, z], dim=-1).to(operator.dtype)  # (x, y, z) from the centre
    source = torch.round(offsets @ operator).to(torch.int64) + n // 2  # rows: (R.T x)^T = x^T R
    inside = ((source >= 0) & (source < n)).all(dim=-1)
    source = source.clamp(0, n - 1)
    values = volume[source[..., 2], source[..., 1], source[..., 0]]
    return torch.where(inside, values, torch.zeros_like(values))


def symmetrise_map(
    volume: Float[Tensor, "n n n"], operators: Float[Tensor, "g 3 3"]
) -> Float[Tensor, "n n n"]:
    """Mean of the map turned by each operator ``R``: ``(1/g) sum_R v(R.T x)`` (module docstring).

    ``operators`` must form a group (``geometry.point_group(...).operators``).
    Operators that map the grid onto itself (identity, quarter and half turns
    about the axes, axis-plane mirrors, ...) copy voxels exactly; the others
    turn the map through the projector at padding ``SYMMETRISE_PADDING`` with
    the separable gridding correction, in single precision. Returned in the
    dtype of ``volume``.
    """
    n = volume.shape[-1]
    ops = operators.to(device=volume.device, dtype=torch.float64)
    on_grid = [_signed_permutation(op) for op in ops]
    total = torch.zeros_like(volume, dtype=torch.float64)
    for op, exact in zip(ops, on_grid, strict=True):
        if exact:
            total = total + _turn_on_grid(volume.to(torch.float64), op)
    others = ops[[not exact for exact in on_grid]]
    if others.shape[0]:
        reference = prepare_reference(
            volume.to(torch.float32),
            padding_factor=SYMMETRISE_PADDING,
            gridding_correction="separable",
        )
        turned_sum = reference.new_zeros((n, n, n // 2 + 1))
        for start in range(0, others.shape[0], _OPERATORS_PER_BATCH):
            batch = others[start : start + _OPERATORS_PER_BATCH].to(torch.float32)
            turned = rotate_volume(reference, batch, out_size=n, padding_factor=SYMMETRISE_PADDING)
            turned_sum = turned_sum + turned.sum(dim=0)
        total = total + from_fourier(turned_sum, n, 3).to(torch.float64)
    return (total / ops.shape[0]).to(volume.dtype)


def _shells_full(n: int, ndim: int, device: torch.device) -> Tensor:
    """``round(|k|)`` of every coefficient of the full ``n**ndim`` FFT grid (int64)."""
    k = torch.fft.fftfreq(n, d=1.0 / n, device=device, dtype=torch.float64)
    grids = torch.stack(torch.meshgrid(*([k] * ndim), indexing="ij"))
    return torch.round(torch.sqrt((grids * grids).sum(dim=0))).to(torch.int64)


def shell_power(volume: Float[Tensor, "n n n"]) -> Float[Tensor, " s"]:
    """Mean ``|V(k)|^2`` per shell ``0 .. n // 2`` of the forward-normalised 3D FFT (float64)."""
    n = volume.shape[-1]
    ft = torch.fft.fftn(volume.to(torch.float64), norm="forward")
    shells = _shells_full(n, 3, volume.device).reshape(-1)
    keep = shells <= n // 2
    sums = torch.zeros(n // 2 + 1, dtype=torch.float64, device=volume.device)
    counts = torch.zeros_like(sums)
    sums.index_add_(0, shells[keep], (ft.abs() ** 2).reshape(-1)[keep])
    counts.index_add_(0, shells[keep], torch.ones_like(sums[shells[keep]]))
    return sums / counts


def signal_power(volume: Float[Tensor, "n n n"], *, ndim: int) -> float:
    """Mean signal power ``S`` of ``SNR_DEFINITION`` for 2D (projections) or 3D measurements.

    ``ndim = 3``: the mean of ``|V(k)|^2`` over the 3D coefficients with
    ``round(|k|) <= n / 2``. ``ndim = 2``: a projection's transform is ``n V`` on
    a central slice, and over uniformly random orientations its power at 2D
    frequency ``k`` is the 3D shell power at ``|k|``; so ``S = n^2`` times the mean,
    over the 2D coefficients with ``round(|k|) <= n / 2``, of the shell power of
    each coefficient's shell.
    """
    n = volume.shape[-1]
    power = shell_power(volume)
    shells = _shells_full(n, ndim, volume.device).reshape(-1)
    shells = shells[shells <= n // 2]
    mean = float(power[shells].mean())
    return mean * n * n if ndim == 2 else mean


def _read_truth(options: SimulationOptions) -> tuple[np.ndarray, float, str]:
    """The map of ``--map`` (or the embedded one), its voxel size and a description."""
    if options.map_path is None:
        volume, pixel = embedded_map()
        return volume, pixel, "embedded: " + EMBEDDED_MAP_DESCRIPTION
    volume, pixel = read_mrc(options.map_path)
    if volume.ndim != 3 or len(set(volume.shape)) != 1:
        raise InputError(
            f"--map {options.map_path}: the map is {'x'.join(map(str, volume.shape[::-1]))} "
            "voxels; expected a cube (n x n x n)"
        )
    if not pixel > 0:
        raise InputError(
            f"--map {options.map_path}: the MRC header gives no voxel size (cell 0); "
            "set it, e.g. with relion_image_handler --set_angpix"
        )
    return volume, pixel, str(options.map_path)


def prepare_truth(
    options: SimulationOptions, group: SymmetryGroup, *, device: torch.device
) -> tuple[Float[Tensor, "n n n"], dict[str, Any]]:
    """The truth on the particles' grid (``--box``, ``--angpix``), symmetrised unless C1.

    Returns the float64 map on ``device`` and a description for ``simulation.json``.

    Raises
    ------
    InputError
        ``--map`` is not a readable cubic MRC map with a voxel size.
    """
    raw, pixel, source = _read_truth(options)
    volume = torch.from_numpy(np.asarray(raw, dtype=np.float64)).to(device)
    n = volume.shape[-1]
    resampled = abs(pixel - options.pixel_size_angst) > 1e-6 * options.pixel_size_angst
    if resampled or n != options.box_size:
        total = float(volume.abs().sum())
        volume = resample_map(
            volume,
            pixel_size_angst=pixel,
            new_pixel_size_angst=options.pixel_size_angst,
            new_box_size=options.box_size,
        )
        kept = float(volume.abs().sum()) * (options.pixel_size_angst / pixel) ** 3
        if kept < 0.99 * total:
            logger.warning(
                "the truth loses %.1f%% of its density (sum of |v|) to the smaller box %d",
                100 * (1 - kept / total),
                options.box_size,
            )
    symmetrised = group.order > 1
    if symmetrised:
        volume = symmetrise_map(volume, group.operators)
    info = {
        "source": source,
        "source_pixel_size_angst": pixel,
        "source_box_size": n,
        "resampled": bool(resampled),
        "padded_or_cropped": n != options.box_size,
        "symmetrised_over_operators": group.order if symmetrised else 1,
        "symmetrisation": "mean of the map turned by every operator of the group: voxels "
        "copied for operators that map the grid onto itself, fourier.rotate_volume at "
        "padding 4 with separable gridding correction for the others"
        if symmetrised
        else "none (C1)",
    }
    return volume, info
