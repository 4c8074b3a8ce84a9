"""The Fourier coefficients in play at one image size, flattened to a vector of length ``k``.

A window of side ``size`` (the current or coarse image size, ``fourier.fourier_crop``
of the full transform) keeps the half-complex coefficients with shell
``round(|k|) <= size // 2`` (RELION's ``Mresol_fine`` / ``Mresol_coarse``), by
default without the DC term (``round(|k|) >= 1``) and without the
Friedel-redundant mates of the ``kx = 0`` line or plane (``fourier.friedel_redundant``:
``kx == 0 and ky < 0``), as RELION scores them. Layout and frequencies:
``fourier.conventions``; frequencies keep the integer index of the full box, so a
shift by ``s`` pixels of a box of side ``box_size`` multiplies coefficient ``k``
by ``exp(-2 pi i k . s / box_size)`` whatever the window's size.

Tensors on the grid of side ``size`` are ``(..., size, .., size // 2 + 1)``;
``gather_window`` flattens their last ``ndim`` axes and keeps the window's
coefficients, ``scatter_window`` puts them back (zeros elsewhere).
"""

import functools
import math
from dataclasses import dataclass

import torch
from jaxtyping import Complex, Float, Int, Shaped
from torch import Tensor

from cryorefine.fourier import frequency_indices, friedel_redundant, rfft_shape
from cryorefine.likelihood.phase_kernel import phase_products

__all__ = [
    "FourierWindow",
    "fourier_window",
    "gather_window",
    "scatter_window",
    "shell_matrix",
    "window_frequencies_xyz",
    "window_phases",
]


@dataclass(frozen=True)
class FourierWindow:
    """Coefficients in play on the half-complex grid of side ``size``.

    Attributes
    ----------
    size
        Side of the grid (even), e.g. the current image size.
    ndim
        2 for images, 3 for volumes.
    flat_index
        Position of each coefficient in the flattened ``(size, .., size // 2 + 1)``
        grid, increasing.
    shell
        ``round(|k|)`` of each coefficient.
    frequencies
        Integer frequency ``(kx, ky[, kz])`` of each coefficient.
    """

    size: int
    ndim: int
    flat_index: Int[Tensor, " k"]
    shell: Int[Tensor, " k"]
    frequencies: Int[Tensor, "k ndim"]

    @property
    def count(self) -> int:
        """Number ``k`` of coefficients."""
        return int(self.flat_index.shape[0])


def fourier_window(
    size: int,
    ndim: int,
    *,
    device: torch.device,
    include_dc: bool = False,
    include_redundant: bool = False,
) -> FourierWindow:
    """The coefficients with ``round(|k|) <= size // 2`` of the grid of side ``size``.

    Parameters
    ----------
    size
        Side of the grid, even.
    ndim
        2 (images) or 3 (volumes).
    device
        Where the index tensors live.
    include_dc
        Keep ``k = 0`` (RELION sums noise and back-projects it, but does not score it).
    include_redundant
        Keep the Friedel mates ``kx == 0, ky < 0`` (what the back-projector
        needs to decide itself which mates it skips).
    """
    if ndim not in (2, 3) or size < 2 or size % 2:
        raise ValueError(f"need an even size >= 2 and ndim 2 or 3, got size {size}, ndim {ndim}")
    return _window(size, ndim, device, include_dc, include_redundant)


@functools.lru_cache(maxsize=64)
def _window(
    size: int, ndim: int, device: torch.device, include_dc: bool, include_redundant: bool
) -> FourierWindow:
    """``fourier_window``, built once per arguments: every batch asks for the same few
    windows, and building one waits for the device (``nonzero``). Its tensors are shared;
    no caller changes them in place."""
    k = frequency_indices(size, ndim, device=device).reshape(-1, ndim)
    shell = torch.round(torch.linalg.vector_norm(k.to(torch.float64), dim=-1)).to(torch.int64)
    keep = shell <= size // 2
    if not include_dc:
        keep &= shell >= 1
    if not include_redundant:
        keep &= ~friedel_redundant(size, ndim, device=device).reshape(-1)
    flat = keep.nonzero().squeeze(1)
    return FourierWindow(
        size=size, ndim=ndim, flat_index=flat, shell=shell[flat], frequencies=k[flat]
    )


def window_frequencies_xyz(window: FourierWindow) -> Int[Tensor, "k 3"]:
    """The window's frequencies as ``(kx, ky, kz)`` (``kz = 0`` for 2D)."""
    if window.ndim == 3:
        return window.frequencies
    return torch.nn.functional.pad(window.frequencies, (0, 1))


def _check_grid(grid: Tensor, window: FourierWindow) -> None:
    want = rfft_shape(window.size, window.ndim)
    if tuple(grid.shape[grid.dim() - window.ndim :]) != want:
        raise ValueError(f"expected a grid ending in {want}, got shape {tuple(grid.shape)}")


def gather_window(grid: Shaped[Tensor, "..."], window: FourierWindow) -> Shaped[Tensor, "..."]:
    """``(..., size, .., nh)`` -> ``(..., k)``: the window's coefficients, any dtype."""
    _check_grid(grid, window)
    lead = grid.shape[: grid.dim() - window.ndim]
    return grid.reshape(*lead, -1)[..., window.flat_index.to(grid.device)]


def scatter_window(values: Shaped[Tensor, "... k"], window: FourierWindow) -> Shaped[Tensor, "..."]:
    """``(..., k)`` -> ``(..., size, .., nh)`` with zeros outside the window (inverse of gather)."""
    shape = rfft_shape(window.size, window.ndim)
    lead = values.shape[:-1]
    out = values.new_zeros(*lead, math.prod(shape))
    out[..., window.flat_index.to(values.device)] = values
    return out.reshape(*lead, *shape)


def window_phases(
    window: FourierWindow,
    shifts_px: Float[Tensor, "... ndim"],
    *,
    box_size: int,
    dtype: torch.dtype = torch.complex64,
) -> Complex[Tensor, "... k"]:
    """``exp(-2 pi i k . s / box_size)`` at the window's coefficients for each shift.

    Multiplying a transform by it moves the content by ``+s`` pixels
    (``fourier.conventions``); equals ``fourier.phase_shift_grid(s, box_size)``
    cropped to ``window.size`` and gathered. ``box_size`` is the side of the
    full box the frequencies belong to (the particle box, not the window).
    The phase is separable, ``prod_d exp(-2 pi i k_d s_d / box_size)``: each
    axis's factors are computed in float64 on the window's frequency range,
    cast to ``dtype`` and multiplied (``phase_kernel.phase_products``: one pass on a
    GPU), so memory is the output's alone and the error is a few units of
    ``dtype``'s rounding.
    """
    ndim = window.frequencies.shape[1]
    if ndim == 0:
        raise ValueError("window_phases needs at least one dimension")
    half = window.size // 2
    at = (window.frequencies + half).to(device=shifts_px.device)  # (k, ndim) into the axis
    axis = torch.arange(-half, half + 1, device=shifts_px.device, dtype=torch.float64)
    # every axis's factors at once, (..., ndim, 2 half + 1): a few operators per call, not
    # per axis (the E-step asks for phases per chunk and fine group)
    angle = shifts_px[..., :ndim, None].to(torch.float64) * axis * (-2.0 * math.pi / box_size)
    factors = torch.polar(torch.ones_like(angle), angle).to(dtype)
    lead = factors.shape[:-2]
    out = phase_products(factors.reshape(-1, ndim, factors.shape[-1]), at)
    return out.reshape(*lead, at.shape[0])


def shell_matrix(
    window: FourierWindow, shells: int, *, dtype: torch.dtype = torch.float64
) -> Float[Tensor, "k s"]:
    """One-hot ``(k, shells)`` matrix: ``values @ shell_matrix`` sums ``(..., k)`` per shell.

    Coefficients whose shell is ``>= shells`` are left out.
    """
    device = window.shell.device
    onehot = window.shell[:, None] == torch.arange(shells, device=device)[None, :]
    return onehot.to(dtype)
