"""Fourier-space filters, shifts, phase randomisation and windowing, as RELION does them.

Layout and shift sign: ``fourier.conventions``. ``ft`` arguments are half-complex
``(..., n, .., n // 2 + 1)`` over their last ``ndim`` axes; radii ``|k|`` are in
Fourier pixels (integer frequency index), so they mean the same shell in a
windowed (current-size) array as in the full one. A resolution ``d`` Angstrom of
a box ``N`` with pixel ``p`` is the radius ``N p / d``.

Raised-cosine edges (RELION ``lowPassFilterMap``, ``initialLowPassFilterReferences``)
    low-pass of radius ``R``, width ``w``: 1 for ``|k| < R - w/2``, 0 for
    ``|k| > R + w/2``, ``0.5 + 0.5 cos(pi (|k| - R + w/2) / w)`` between (0.5 at
    ``R``). The initial low-pass of a reference (``--ini_high``) uses
    ``R = N p / ini_high`` unrounded and ``w = 2``; relion_postprocess rounds
    ``R`` to an integer shell first (the caller's choice here).
Windowing (RELION ``windowFourierTransform``)
    A crop keeps the coefficient of each frequency that fits the smaller array;
    a pad copies those with ``|k| <= n_old // 2`` and leaves zeros elsewhere.
    Values are not rescaled: with the forward-normalised transform a
    coefficient is the amplitude of its wave, so the inverse transform of a
    crop of a band-limited image equals the image sampled every ``n / m``
    pixels (same mean and amplitudes), and a pad interpolates.
"""

import functools

import torch
from jaxtyping import Complex, Float, Shaped
from torch import Tensor

from cryorefine.fourier.conventions import frequency_indices, rfft_shape

__all__ = [
    "apply_bfactor",
    "bfactor_envelope",
    "fourier_crop",
    "fourier_pad",
    "fourier_window",
    "high_pass",
    "low_pass",
    "phase_shift_grid",
    "randomise_phases_beyond",
    "shift_fourier",
]


def _side(ft: Tensor, ndim: int) -> int:
    n = ft.shape[-ndim]
    if tuple(ft.shape[-ndim:]) != rfft_shape(n, ndim):
        raise ValueError(f"expected (..., n, .., n // 2 + 1) of {ndim} axes, got {ft.shape}")
    return n


def _radius(n: int, ndim: int, device: torch.device | None) -> Tensor:
    """``|k|`` (float64, Fourier pixels) of every coefficient of the half-complex grid."""
    k = frequency_indices(n, ndim, device=device).to(torch.float64)
    return torch.linalg.vector_norm(k, dim=-1)


def _raised_cosine_low(radius: Tensor, cutoff: float, width: float) -> Tensor:
    """1 inside, 0 outside, cosine edge of ``width`` centred on ``cutoff``."""
    if width <= 0:
        return (radius <= cutoff).to(torch.float64)
    t = ((radius - (cutoff - 0.5 * width)) / width).clamp(0.0, 1.0)
    return 0.5 + 0.5 * torch.cos(torch.pi * t)


def low_pass(
    ft: Shaped[Tensor, "..."],
    *,
    cutoff_shells: float,
    ndim: int,
    edge_width_shells: float = 2.0,
) -> Shaped[Tensor, "..."]:
    """Raised-cosine low-pass of radius ``cutoff_shells`` (module docstring); same dtype."""
    n = _side(ft, ndim)
    filt = _raised_cosine_low(_radius(n, ndim, ft.device), cutoff_shells, edge_width_shells)
    return ft * filt.to(ft.real.dtype)


def high_pass(
    ft: Shaped[Tensor, "..."],
    *,
    cutoff_shells: float,
    ndim: int,
    edge_width_shells: float = 2.0,
) -> Shaped[Tensor, "..."]:
    """One minus the low-pass filter of the same radius and width (RELION's high-pass)."""
    n = _side(ft, ndim)
    filt = 1.0 - _raised_cosine_low(_radius(n, ndim, ft.device), cutoff_shells, edge_width_shells)
    return ft * filt.to(ft.real.dtype)


def bfactor_envelope(
    n: int,
    ndim: int,
    *,
    bfactor_angst2: Float[Tensor, " b"] | float,
    pixel_size_angst: float,
    box_size: int | None = None,
    device: torch.device | None,
    dtype: torch.dtype = torch.float32,
) -> Float[Tensor, "..."]:
    """``exp(-B s^2 / 4)`` on the half-complex grid of side ``n``, ``s = |k| / (box_size p)``.

    ``box_size`` (default ``n``) is the full box the frequencies refer to, for a
    windowed grid. A tensor ``B (b,)`` gives ``(b, n, .., nh)``, a float
    ``(n, .., nh)``. Negative ``B`` sharpens.
    """
    size = n if box_size is None else box_size
    s2 = (_radius(n, ndim, device) / (size * pixel_size_angst)) ** 2
    if isinstance(bfactor_angst2, Tensor):
        b = bfactor_angst2.to(device=device, dtype=torch.float64)
        s2 = s2 * b.reshape(-1, *([1] * ndim))
        return torch.exp(-0.25 * s2).to(dtype)
    return torch.exp(-0.25 * bfactor_angst2 * s2).to(dtype)


def apply_bfactor(
    ft: Complex[Tensor, "..."],
    *,
    bfactor_angst2: float,
    pixel_size_angst: float,
    ndim: int,
    box_size: int | None = None,
) -> Complex[Tensor, "..."]:
    """Multiply by ``exp(-B s^2 / 4)`` and zero beyond Nyquist, as RELION's ``applyBFactorToMap``.

    Coefficients with ``|k| > box_size / 2`` (the corners) become 0.
    """
    n = _side(ft, ndim)
    size = n if box_size is None else box_size
    envelope = bfactor_envelope(
        n,
        ndim,
        bfactor_angst2=bfactor_angst2,
        pixel_size_angst=pixel_size_angst,
        box_size=size,
        device=ft.device,
        dtype=torch.float64,
    )
    envelope = torch.where(_radius(n, ndim, ft.device) <= size / 2, envelope, 0.0)
    return ft * envelope.to(ft.real.dtype)


def _axis_phases(shifts_px: Tensor, n: int, ndim: int) -> list[Tensor]:
    """Per-axis factors ``exp(-2 pi i k_d s_d / n)`` shaped to broadcast over the tensor axes."""
    real = shifts_px.dtype if shifts_px.is_floating_point() else torch.float32
    full = torch.arange(n, device=shifts_px.device, dtype=real)
    full = torch.where(full <= n // 2, full, full - n)
    half = torch.arange(n // 2 + 1, device=shifts_px.device, dtype=real)
    factors = []
    for d in range(ndim):  # d = 0 is x (last tensor axis), 1 is y, 2 is z
        k = half if d == 0 else full
        angle = (-2.0 * torch.pi / n) * shifts_px[..., d, None].to(real) * k
        shape = [1] * ndim
        shape[ndim - 1 - d] = k.shape[0]
        factor = torch.polar(torch.ones_like(angle), angle)
        factors.append(factor.reshape(*angle.shape[:-1], *shape))
    return factors


def phase_shift_grid(shifts_px: Float[Tensor, "t ndim"], n: int) -> Complex[Tensor, "t ..."]:
    """``exp(-2 pi i k . s / n)`` for each translation: ``(t, n, .., n // 2 + 1)``.

    ``shifts_px`` in pixels, ``(x, y[, z])`` order, ``ndim = shifts_px.shape[-1]``.
    Multiplying a transform by it moves the content by ``+s`` (REFINE_SPEC
    section 1.2). Complex dtype follows the shifts (float64 -> complex128).
    """
    ndim = shifts_px.shape[-1]
    factors = _axis_phases(shifts_px, n, ndim)
    grid = factors[0]
    for factor in factors[1:]:
        grid = grid * factor
    return grid


def shift_fourier(
    ft: Complex[Tensor, "..."], shifts_px: Float[Tensor, "... ndim"]
) -> Complex[Tensor, "..."]:
    """Move the content of each transform by ``shifts_px`` (pixels, ``(x, y[, z])``).

    ``ft (*batch, n, .., nh)`` with ``ndim = shifts_px.shape[-1]`` transform
    axes; the leading axes of the two broadcast. The phase is computed in the
    real dtype of ``ft``.
    """
    ndim = shifts_px.shape[-1]
    n = _side(ft, ndim)
    out = ft
    for factor in _axis_phases(shifts_px.to(ft.real.dtype), n, ndim):
        out = out * factor
    return out


def _mirror(x: Tensor, dims: tuple[int, ...]) -> Tensor:
    """Value at frequency ``-k`` (index ``(-i) mod n`` on each of ``dims``)."""
    return torch.roll(torch.flip(x, dims), shifts=(1,) * len(dims), dims=dims)


def randomise_phases_beyond(
    ft: Complex[Tensor, "..."], shell: int, *, ndim: int, generator: torch.Generator
) -> Complex[Tensor, "..."]:
    """Random phases for ``|k| >= shell``, amplitudes kept (RELION's ``randomizePhasesBeyond``).

    Phases are uniform on ``[0, 2 pi)``; coefficients with ``|k| < shell`` are
    returned unchanged. On the planes that hold Friedel pairs (``kx = 0`` and,
    for even ``n``, ``kx = n / 2``) one coefficient of each pair gets a random
    phase and its mate the opposite one, and self-paired coefficients get phase
    0 or pi, so that the result is the transform of a real map (RELION leaves
    that to FFTW's inverse). Random numbers come from ``generator`` on its
    device.
    """
    n = _side(ft, ndim)
    real = ft.real.dtype
    phase = torch.rand(ft.shape, generator=generator, device=generator.device, dtype=real)
    phase = (2.0 * torch.pi * phase).to(ft.device)
    plane_dims = tuple(range(-(ndim - 1), 0))
    planes = [0] + ([n // 2] if n % 2 == 0 else [])
    flat = torch.arange(n ** (ndim - 1), device=ft.device).reshape((n,) * (ndim - 1))
    mate = _mirror(flat, tuple(range(ndim - 1)))
    for x in planes:
        own = phase[..., x]
        mirrored = -_mirror(own, plane_dims)
        sign = torch.where(own < torch.pi, torch.zeros_like(own), torch.full_like(own, torch.pi))
        own = torch.where(flat < mate, own, torch.where(flat > mate, mirrored, sign))
        phase[..., x] = own
    randomised = torch.polar(ft.abs(), phase)
    outside = _radius(n, ndim, ft.device) >= shell
    return torch.where(outside, randomised, ft)


@functools.lru_cache(maxsize=32)
def _axis_indices(n_small: int, n_large: int, device: torch.device) -> Tensor:
    """Index in the large full axis of each frequency of the small one (FFTW order).

    Kept per sizes and device (each batch crops several arrays); callers only read it."""
    with torch.inference_mode(False):  # a normal tensor, whatever the caller's mode
        i = torch.arange(n_small, device=device)
        k = torch.where(i <= n_small // 2, i, i - n_small)
        return k % n_large


def fourier_crop(ft: Shaped[Tensor, "..."], new_size: int, *, ndim: int) -> Shaped[Tensor, "..."]:
    """Keep the frequencies of a box of side ``new_size < n``: ``(..., m, .., m // 2 + 1)``.

    Works on any dtype (transforms, CTFs, weights). See the module docstring.
    """
    n = _side(ft, ndim)
    if new_size > n:
        raise ValueError(f"fourier_crop from {n} to a larger size {new_size}; use fourier_pad")
    out = ft[..., : new_size // 2 + 1]
    index = _axis_indices(new_size, n, ft.device)
    for dim in range(-ndim, -1):
        out = out.index_select(dim, index)
    return out


def fourier_pad(ft: Shaped[Tensor, "..."], new_size: int, *, ndim: int) -> Shaped[Tensor, "..."]:
    """Place a transform of side ``n`` in a larger one of side ``new_size``, zeros elsewhere.

    Only coefficients with ``|k| <= n // 2`` are copied (RELION drops the
    corners so that the larger transform stays symmetric).
    """
    n = _side(ft, ndim)
    if new_size < n:
        raise ValueError(f"fourier_pad from {n} to a smaller size {new_size}; use fourier_crop")
    inside = _radius(n, ndim, ft.device) <= n // 2
    out = torch.where(inside, ft, torch.zeros_like(ft))
    extra = new_size // 2 + 1 - out.shape[-1]
    out = torch.cat([out, out.new_zeros(*out.shape[:-1], extra)], dim=-1)
    index = _axis_indices(n, new_size, ft.device)
    for dim in range(-ndim, -1):
        shape = list(out.shape)
        shape[dim] = new_size
        out = out.new_zeros(shape).index_copy(dim, index, out)
    return out


def fourier_window(ft: Shaped[Tensor, "..."], new_size: int, *, ndim: int) -> Shaped[Tensor, "..."]:
    """Crop or pad to ``new_size`` (RELION's ``windowFourierTransform``); unchanged if equal."""
    n = _side(ft, ndim)
    if new_size == n:
        return ft
    return (
        fourier_crop(ft, new_size, ndim=ndim)
        if new_size < n
        else fourier_pad(ft, new_size, ndim=ndim)
    )
