"""Trilinear interpolation in, and splatting into, a padded centred half-grid.

Layout of every padded Fourier grid of the projector and back-projector
(``reference_ft``, ``accumulator_data``, ``accumulator_weight``): a tensor of
shape ``(p, p, ph)``, ``ph = p // 2 + 1``, indexed ``(z, y, x)``, where element
``[iz, iy, ix]`` holds frequency ``K = (ix, iy - p // 2, iz - p // 2)`` in
padded-grid units (vectors in ``(x, y, z)`` order). Only ``kx >= 0`` is stored,
as in RELION's projector; a value at ``kx < 0`` is the complex conjugate of the
value at ``-K``. Along y and z the grid is periodic (index ``p`` is index 0,
frequency ``-p / 2``), as a discrete Fourier transform is.

Trilinear interpolation at a point ``q`` with ``q_x < 0`` interpolates at
``-q`` and conjugates, as RELION does; splatting is its exact adjoint for the
real inner product ``Re <a, b>``: a value inserted at ``q_x < 0`` is
conjugated and spread over the corners of ``-q``. Corners beyond ``kx = p // 2``
count as zero (they are only reached with weight 0 for points inside the
Nyquist sphere).
"""

from collections.abc import Iterator, Sequence
from functools import lru_cache

import torch
from jaxtyping import Float, Int
from torch import Tensor

from cryorefine.fourier.conventions import frequency_indices

__all__ = [
    "centred_half_frequencies",
    "padded_size",
]


def padded_size(shape: tuple[int, ...] | torch.Size) -> int:
    """Side ``p`` of a ``(p, p, p // 2 + 1)`` half-grid of ``shape``; ``ValueError`` otherwise."""
    if len(shape) != 3 or shape[0] != shape[1] or shape[2] != shape[0] // 2 + 1:
        raise ValueError(f"expected a (p, p, p // 2 + 1) half-grid, got shape {tuple(shape)}")
    return int(shape[0])


def centred_half_frequencies(
    p: int, *, device: torch.device | None = None
) -> Int[Tensor, "p p ph 3"]:
    """Integer frequency ``(kx, ky, kz)`` of every element of a ``(p, p, ph)`` centred half-grid."""
    full = torch.arange(p, device=device) - p // 2
    half = torch.arange(p // 2 + 1, device=device)
    kz, ky, kx = torch.meshgrid(full, full, half, indexing="ij")
    return torch.stack([kx, ky, kz], dim=-1)


def _real_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.empty((), dtype=dtype).real.dtype if dtype.is_complex else dtype


@lru_cache(maxsize=64)
def _kept_frequencies(
    n: int, ndim: int, max_radius: float, device: torch.device, skip_redundant: bool = False
) -> tuple[Int[Tensor, " k"], Int[Tensor, "k 3"]]:
    """Flat indices and ``(x, y, z)`` frequencies of the coefficients with ``|k| <= max_radius``.

    ``skip_redundant`` leaves out one of each Friedel pair of the ``kx = 0``
    line (2D: ``ky < 0``) or plane (3D: ``kz < 0``, and ``kz = 0, ky < 0``).
    Cached per arguments, so the hot path syncs with the device once per
    shape; callers must not modify the returned tensors.
    """
    k = frequency_indices(n, ndim, device=device).reshape(-1, ndim)
    keep = (k * k).sum(dim=-1) <= max_radius * max_radius
    if skip_redundant:
        redundant = (k[:, 0] == 0) & (k[:, 1] < 0)
        if ndim == 3:
            redundant = (k[:, 0] == 0) & ((k[:, 2] < 0) | ((k[:, 2] == 0) & (k[:, 1] < 0)))
        keep &= ~redundant
    flat = keep.nonzero().squeeze(1)
    freq = k[flat]
    if ndim == 2:
        freq = torch.cat([freq, torch.zeros_like(freq[:, :1])], dim=1)
    return flat, freq


def _fold(q: Float[Tensor, "... 3"]) -> tuple[Tensor, Tensor, Tensor]:
    """Friedel fold (``q_x < 0`` -> ``-q``), then integer corner and fractional part."""
    flip = q[..., 0] < 0
    q = torch.where(flip[..., None], -q, q)
    base = torch.floor(q)
    return base.to(torch.int64), q - base, flip


def _corners(base: Tensor, frac: Tensor, p: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Flat index and trilinear weight of each of the 8 corners (weight 0 beyond ``kx = p//2``).

    Each axis's two corners (wrapped along y and z, clamped along x) and weights are
    formed once; a corner's index is the sum of its axes' offsets into the flat grid.
    """
    ph = p // 2 + 1
    planes = [  # (offset, weight) of the lower and upper corner along z, then y
        [
            (torch.remainder(base[..., axis] + (d + p // 2), p) * stride,
             frac[..., axis] if d else 1 - frac[..., axis])
            for d in (0, 1)
        ]
        for axis, stride in ((2, p * ph), (1, ph))
    ]  # fmt: skip
    columns = []
    for dx in (0, 1):
        ix = base[..., 0] + dx
        wx = frac[..., 0] if dx else 1 - frac[..., 0]
        columns.append((ix.clamp(max=ph - 1), torch.where(ix < ph, wx, 0.0)))
    for iz, wz in planes[0]:
        for iy, wy in planes[1]:
            row, wzy = iz + iy, wz * wy
            for ix, wx in columns:
                yield row + ix, wzy * wx


_CHUNKS_PER_THREAD = 4  # grid_sample batch entries per CPU thread (load balance)
_MIN_CHUNK_POINTS = 4096  # no chunk smaller than this


def _interpolate(
    table: Float[Tensor, "P c"], q: Float[Tensor, "... 3"], p: int, *, conj_channel: int | None
) -> Tensor:
    """Trilinear values ``(..., c)`` of a flattened half-grid ``table`` at points ``q``.

    Channel ``conj_channel`` (the imaginary part) changes sign where ``q_x < 0``.
    One fused ``grid_sample``, the points in chunks that the CPU's threads share
    (each point's value the same whatever the chunks; ``align_corners=True``: grid
    index ``i`` sits at ``-1 + 2 i / (size - 1)``) on the centred half-grid with its ``y`` and ``z``
    planes ``0`` repeated at index ``p``, which is ``_corners``'s wrap-around:
    the same 8 corners and weights, up to the rounding of the normalised
    coordinates (float32: ~1e-5 pixel).
    """
    ph = p // 2 + 1
    c = table.shape[1]
    grid = table.reshape(p, p, ph, c).permute(3, 0, 1, 2)  # (c, z, y, x)
    grid = torch.cat([grid, grid[:, :1]], dim=1)
    grid = torch.cat([grid, grid[:, :, :1]], dim=2).unsqueeze(0).contiguous()
    flip = q[..., 0] < 0
    folded = torch.where(flip[..., None], -q, q)
    scale = q.new_tensor([2.0 / (ph - 1), 2.0 / p, 2.0 / p])
    offset = q.new_tensor([-1.0, 0.0, 0.0])  # (y + p / 2) * 2 / p - 1 = y * 2 / p
    points = (folded * scale + offset).reshape(-1, 3).to(table.dtype)
    # grid_sample's CPU kernel shares out its batch between threads: there the points go
    # in as a batch of chunks over one grid (expanded, not copied), each point sampled alike
    n = points.shape[0]
    threads = torch.get_num_threads() if points.device.type == "cpu" else 0
    chunks = max(1, min(_CHUNKS_PER_THREAD * threads, n // _MIN_CHUNK_POINTS))
    per_chunk = -(-n // chunks)
    if chunks * per_chunk != n:
        points = torch.cat([points, points.new_zeros(chunks * per_chunk - n, 3)])
    values = torch.nn.functional.grid_sample(
        grid.expand(chunks, -1, -1, -1, -1),
        points.reshape(chunks, 1, 1, per_chunk, 3),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=True,
    )  # (chunks, c, 1, 1, per_chunk)
    out = values.permute(0, 2, 3, 4, 1).reshape(-1, c)[:n].reshape(*q.shape[:-1], c)
    if conj_channel is not None:
        out[..., conj_channel] = torch.where(flip, -out[..., conj_channel], out[..., conj_channel])
    return out


def _interpolate_corners(
    table: Float[Tensor, "P c"], q: Float[Tensor, "... 3"], p: int, *, conj_channel: int | None
) -> Tensor:
    """Trilinear values ``(..., c)`` of a flattened half-grid ``table`` at points ``q``.

    Channel ``conj_channel`` (the imaginary part) changes sign where ``q_x < 0``.
    The 8 corners one at a time: exact at grid points (``symmetrise`` with the
    identity is the Hermitian sum to the last bit), and the plain reference
    that ``_interpolate`` is tested against.
    """
    base, frac, flip = _fold(q)
    out = torch.zeros((*q.shape[:-1], table.shape[1]), dtype=table.dtype, device=table.device)
    for index, weight in _corners(base, frac, p):
        out += weight.to(table.dtype)[..., None] * table[index]
    if conj_channel is not None:
        sign = torch.where(flip, -1.0, 1.0).to(table.dtype)
        out[..., conj_channel] *= sign
    return out


def _splat(
    table: Float[Tensor, "P c"],
    q: Float[Tensor, "... 3"],
    values: Float[Tensor, "... c"],
    p: int,
    *,
    conj_channel: int | None,
) -> None:
    """Add ``values`` at ``q`` into ``table`` with trilinear weights (adjoint of interpolation)."""
    _splat_tables(q, p, [(table, values, conj_channel)])


def _splat_tables(
    q: Float[Tensor, "... 3"],
    p: int,
    targets: Sequence[tuple[Tensor, Tensor, int | None]],
) -> None:
    """``_splat`` of each ``(table (P, c), values (..., c), conj_channel)`` at the same points.

    The corners and weights of ``q`` are formed once for all targets (the data and the
    weights of a back-projection).
    """
    base, frac, flip = _fold(q)
    flat_values = []
    for table, values, conj_channel in targets:
        values = values.to(table.dtype)
        if conj_channel is not None:
            sign = torch.where(flip, -1.0, 1.0).to(table.dtype)
            values = values.clone()
            values[..., conj_channel] *= sign
        flat_values.append(values.reshape(-1, table.shape[1]))
    for index, weight in _corners(base, frac, p):
        index = index.reshape(-1)
        for (table, _, _), values in zip(targets, flat_values, strict=True):
            table.index_add_(0, index, weight.reshape(-1, 1).to(table.dtype) * values)
