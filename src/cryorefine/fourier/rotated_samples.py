"""Values of a padded Fourier grid at rotated frequencies, and their adjoint insertion.

The core of the projector and the back-projector for any list of integer
frequencies ``k`` (a window's, or every kept one of a box): frequency ``k`` of
an output with rotation ``A`` samples, or is splatted at, ``q = A.T @ k *
padding_factor`` of a padded centred half-grid (layout and Friedel fold:
``fourier.interpolation``). On a CUDA device with Triton the fused kernels of
``fourier.trilinear_kernels`` run for single-precision inputs (float32
coordinates and values; the accumulators keep their own dtype); elsewhere, and
for double-precision inputs, the torch path of ``fourier.interpolation``.
Inside ``fourier.texture.reference_texture`` a reference is sampled by the
GPU's texture units instead (8-bit interpolation fractions, as RELION's GPU code,
of float16 texels).
"""

import torch
from jaxtyping import Complex, Float, Int
from torch import Tensor

from cryorefine.fourier import trilinear_kernels
from cryorefine.fourier.interpolation import (
    _interpolate,
    _real_dtype,
    _splat_tables,
    padded_size,
)
from cryorefine.fourier.texture import registered_texture, sample_texture

__all__ = ["sample_rotated", "splat_rotated"]


def _redundant(frequencies: Tensor, ndim: int) -> Tensor:
    """The Friedel-redundant mates of the ``kx = 0`` line (2D) or plane (3D)."""
    kx, ky, kz = frequencies.unbind(-1)
    if ndim == 2:
        return (kx == 0) & (ky < 0)
    return (kx == 0) & ((kz < 0) | ((kz == 0) & (ky < 0)))


def _within(frequencies: Tensor, max_radius: float) -> Tensor:
    return (frequencies.to(torch.float64).square().sum(dim=-1)) <= max_radius**2


def sample_rotated(
    reference_ft: Complex[Tensor, "p p ph"],
    rotations: Float[Tensor, "r 3 3"],
    frequencies: Int[Tensor, "k 3"],
    *,
    padding_factor: int,
    max_radius: float,
    scale: float = 1.0,
    out: Complex[Tensor, "r k"] | None = None,
    powers: Float[Tensor, "r k"] | None = None,
) -> Complex[Tensor, "r k"]:
    """Trilinear values of ``reference_ft`` at ``A.T @ k * padding_factor``, times ``scale``.

    Parameters
    ----------
    reference_ft
        Padded centred half-grid (``prepare_reference``).
    rotations
        RELION's matrices ``A``.
    frequencies
        Integer ``(kx, ky, kz)`` of the unpadded box (``kz = 0`` for 2D slices).
    padding_factor
        The one ``reference_ft`` was made with.
    max_radius
        Frequencies with ``|k| > max_radius`` get 0.
    scale
        Factor on every value (``extract_slices``: the unpadded size).
    out
        Where to write the values (contiguous, ``(r, k)``, ``reference_ft``'s dtype and
        device), or None for a new array. The GPU kernels write into it directly: no
        copy of the values (``passes.RowProjector.with_values`` fills its table so).
    powers
        Where to write ``re^2 + im^2`` of each value (contiguous, ``(r, k)``, the real
        dtype of ``reference_ft``), or None. The texture kernel writes them as it writes
        the values: no second read of them.

    Returns
    -------
    Tensor
        ``(r, k)`` in ``reference_ft``'s dtype: ``out`` where given.
    """
    padded_size(reference_ft.shape)  # a (p, p, p // 2 + 1) half-grid, or ValueError
    device = reference_ft.device
    if out is not None:
        shape = (rotations.shape[0], frequencies.shape[0])
        if out.shape != shape or out.dtype != reference_ft.dtype or not out.is_contiguous():
            raise ValueError(f"out must be a contiguous {reference_ft.dtype} {shape} array, got "
                             f"{out.dtype} {tuple(out.shape)}")  # fmt: skip
        if out.device != device:
            raise ValueError(f"out must be on {device}, got {out.device}")
    if powers is not None:
        shape = (rotations.shape[0], frequencies.shape[0])
        real = _real_dtype(reference_ft.dtype)
        if powers.shape != shape or powers.dtype != real or not powers.is_contiguous():
            raise ValueError(f"powers must be a contiguous {real} {shape} array, got "
                             f"{powers.dtype} {tuple(powers.shape)}")  # fmt: skip
        if powers.device != device:
            raise ValueError(f"powers must be on {device}, got {powers.device}")
    frequencies = frequencies.to(device)
    texture = registered_texture(reference_ft)
    if texture is not None:  # inside fourier.texture.reference_texture: the texture units
        return sample_texture(
            texture,
            rotations,
            frequencies,
            padding_factor=padding_factor,
            max_radius=max_radius,
            scale=scale,
            out=out,
            powers=powers,
        )
    values = _sampled(reference_ft, rotations, frequencies, padding_factor, max_radius, scale, out)
    if powers is not None:
        torch.sum(torch.view_as_real(values).square(), dim=-1, out=powers)
    return values


def _sampled(
    reference_ft: Tensor,
    rotations: Tensor,
    frequencies: Tensor,
    padding_factor: int,
    max_radius: float,
    scale: float,
    out: Tensor | None,
) -> Tensor:
    """``sample_rotated``'s values by the trilinear kernel or, where it does not apply, torch."""
    device, p = reference_ft.device, padded_size(reference_ft.shape)
    if trilinear_kernels.available(reference_ft) and reference_ft.dtype == torch.complex64:
        return trilinear_kernels.sample_kernel(
            reference_ft,
            rotations.to(device),
            frequencies,
            padding_factor=padding_factor,
            max_radius=max_radius,
            scale=scale,
            out=out,
        )
    real_dtype = _real_dtype(reference_ft.dtype)
    q = (frequencies.to(real_dtype) * padding_factor) @ rotations.to(device, real_dtype)
    table = torch.view_as_real(reference_ft.contiguous()).reshape(-1, 2)
    values = _interpolate(table, q, p, conj_channel=1)
    values = values * _within(frequencies, max_radius)[:, None].to(values.dtype)
    if scale != 1:
        values = values * scale
    values = torch.view_as_complex(values.contiguous())
    return values if out is None else out.copy_(values)


def splat_rotated(
    data: Complex[Tensor, "r k"],
    weights: Float[Tensor, "r k"],
    rotations: Float[Tensor, "r 3 3"],
    frequencies: Int[Tensor, "k 3"],
    *,
    padding_factor: int,
    accumulator_data: Complex[Tensor, "p p ph"] | Float[Tensor, "p p ph 4"],
    accumulator_weight: Float[Tensor, "p p ph"] | None,
    max_radius: float,
    skip_redundant: bool,
    ndim: int,
) -> None:
    """Add ``data`` and ``weights`` at ``A.T @ k * padding_factor`` into the accumulators.

    The adjoint of ``sample_rotated`` (trilinear weights; conjugated at ``-q``
    where ``q_x < 0``). Frequencies beyond ``max_radius`` are left out, and with
    ``skip_redundant`` the Friedel-redundant mates (``_redundant``) as RELION
    does. The accumulators (contiguous, e.g. ``zero_accumulators``) are updated
    in place; values are cast to their dtype. With ``accumulator_weight`` None,
    ``accumulator_data`` is a packed float32 ``(p, p, ph, 4)`` accumulator of
    (re, im, weight, unused) (``fourier.packed_accumulator``).
    """
    packed = accumulator_weight is None
    if packed and (
        accumulator_data.dtype != torch.float32
        or not accumulator_data.is_contiguous()
        or accumulator_data.data_ptr() % 16
    ):  # the vector reductions add 16 aligned bytes per voxel
        raise ValueError("a packed accumulator is a contiguous float32 (p, p, ph, 4) grid")
    p = padded_size(accumulator_data.shape[:3] if packed else accumulator_data.shape)
    device = accumulator_data.device
    frequencies = frequencies.to(device)
    single = data.dtype == torch.complex64 and weights.dtype == torch.float32
    if trilinear_kernels.available(accumulator_data) and single:
        trilinear_kernels.splat_kernel(
            accumulator_data,
            accumulator_weight,
            rotations.to(device),
            frequencies,
            data,
            weights,
            padding_factor=padding_factor,
            max_radius=max_radius,
            skip_redundant=skip_redundant,
            ndim=ndim,
        )
        return
    keep = _within(frequencies, max_radius)
    if skip_redundant:
        keep &= ~_redundant(frequencies, ndim)
    columns = keep.nonzero().squeeze(1)
    real_dtype = accumulator_data.dtype if packed else _real_dtype(accumulator_data.dtype)
    kept = frequencies[columns].to(real_dtype) * padding_factor
    q = kept @ rotations.to(device, real_dtype)
    if packed:  # views of the packed channels: index_add_ writes through them
        rows = accumulator_data.view(-1, 4)
        table, weight_table = rows[:, :2], rows[:, 2:3]
    else:
        table = torch.view_as_real(accumulator_data).reshape(-1, 2)
        weight_table = accumulator_weight.reshape(-1, 1)
    data_values = torch.view_as_real(data[:, columns].contiguous())
    _splat_tables(q, p, [(table, data_values, 1), (weight_table, weights[:, columns, None], None)])
