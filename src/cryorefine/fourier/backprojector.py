"""Back-projector: insert 2D slices or 3D volumes into padded Fourier accumulators.

Accumulators are padded centred half-grids (layout: ``fourier.interpolation``)
of side ``p = padding_factor * ori_size``: complex data ``B`` and real weight
``W``, RELION's ``BackProjector::data`` and ``weight``. Float64 /
complex128 accumulators are recommended (RELION sums in double); inserted
values are cast to the accumulators' dtype before they are added, so float32
accumulators work too.

Insertion is the exact adjoint of the projector's trilinear interpolation:
pixel ``k`` (``|k| <= max_radius``) of a slice with rotation ``A`` adds its
value, times the trilinear weights, at the 8 grid points around
``q = A.T @ (k, 0) * padding_factor`` (conjugated at ``-q`` if ``q_x < 0``);
the weight channel adds ``weights`` the same way. With
``skip_redundant=False`` this gives
``Re <extract_slices(x, A), y> = ori_size * Re <x, insert_slices(y, A)>``
(and the same without the factor for volumes). By default the Friedel-redundant
coefficients of the ``kx = 0`` line (plane) are skipped, as RELION does, so
that after ``symmetrise`` every Fourier component of an image counts once.

Data are not divided by anything here: insert ``CTF * X / sigma2`` and
``CTF^2 / sigma2`` (RELION's ``storeWeightedSums``), then ``symmetrise`` and
``reconstruct``.
"""

import torch
from jaxtyping import Complex, Float
from torch import Tensor

from cryorefine.fourier.interpolation import _kept_frequencies, padded_size
from cryorefine.fourier.rotated_samples import splat_rotated

__all__ = [
    "add_packed",
    "insert_slices",
    "insert_volumes",
    "packed_accumulator",
    "zero_accumulators",
]


def zero_accumulators(
    ori_size: int,
    *,
    padding_factor: int = 2,
    device: torch.device,
    dtype: torch.dtype = torch.float64,
) -> tuple[Complex[Tensor, "p p ph"], Float[Tensor, "p p ph"]]:
    """Empty data and weight accumulators of side ``p = padding_factor * ori_size``.

    ``dtype`` is the real dtype (float64 or float32); data get the matching complex dtype.
    """
    p = padding_factor * ori_size
    complex_dtype = torch.complex128 if dtype == torch.float64 else torch.complex64
    data = torch.zeros((p, p, p // 2 + 1), dtype=complex_dtype, device=device)
    weight = torch.zeros((p, p, p // 2 + 1), dtype=dtype, device=device)
    return data, weight


def packed_accumulator(
    ori_size: int, *, padding_factor: int = 2, device: torch.device
) -> Float[Tensor, "p p ph 4"]:
    """An empty float32 accumulator of (re, im, weight, unused) per padded half-grid voxel.

    ``fourier.splat_rotated`` adds into it with one vector reduction per corner
    on GPUs that have them, against three double atomics into the float64
    accumulators; ``add_packed`` moves its sums into those.
    """
    p = padding_factor * ori_size
    return torch.zeros((p, p, p // 2 + 1, 4), dtype=torch.float32, device=device)


def add_packed(
    packed: Float[Tensor, "p p ph 4"],
    accumulator_data: Complex[Tensor, "p p ph"],
    accumulator_weight: Float[Tensor, "p p ph"],
) -> None:
    """Add a packed accumulator's sums into the data and weight accumulators; zero it.

    In place, with no temporary grid (float32 to float64 is exact).
    """
    torch.view_as_real(accumulator_data).add_(packed[..., :2])
    accumulator_weight.add_(packed[..., 2])
    packed.zero_()


def _insert(
    data_ft: Tensor,
    weights: Tensor,
    rotations: Tensor,
    *,
    ndim: int,
    padding_factor: int,
    accumulator_data: Tensor,
    accumulator_weight: Tensor,
    max_radius: float | int | None,
    skip_redundant: bool,
) -> None:
    p = padded_size(accumulator_data.shape)
    if accumulator_weight.shape != accumulator_data.shape:
        raise ValueError(
            f"accumulator shapes differ: data {tuple(accumulator_data.shape)}, "
            f"weight {tuple(accumulator_weight.shape)}"
        )
    if not (accumulator_data.is_contiguous() and accumulator_weight.is_contiguous()):
        raise ValueError("accumulators must be contiguous (they are updated in place)")
    n = data_ft.shape[1]
    if n > p // padding_factor:
        raise ValueError(f"data size {n} exceeds the accumulators' size {p // padding_factor}")
    radius = n // 2 if max_radius is None else max_radius
    flat, freq = _kept_frequencies(n, ndim, float(radius), data_ft.device, skip_redundant)
    splat_rotated(
        data_ft.reshape(data_ft.shape[0], -1)[:, flat],
        weights.reshape(weights.shape[0], -1)[:, flat],
        rotations,
        freq,
        padding_factor=padding_factor,
        accumulator_data=accumulator_data,
        accumulator_weight=accumulator_weight,
        max_radius=float(radius),
        skip_redundant=False,  # the kept frequencies already leave the mates out
        ndim=ndim,
    )


def insert_slices(
    data_ft: Complex[Tensor, "b n nh"],
    weights: Float[Tensor, "b n nh"],
    rotations: Float[Tensor, "b 3 3"],
    *,
    padding_factor: int = 2,
    accumulator_data: Complex[Tensor, "p p ph"],
    accumulator_weight: Float[Tensor, "p p ph"],
    max_radius: float | int | None = None,
    skip_redundant: bool = True,
) -> tuple[Complex[Tensor, "p p ph"], Float[Tensor, "p p ph"]]:
    """Back-project 2D Fourier slices into the accumulators, in place (``backproject2Dto3D``).

    Parameters
    ----------
    data_ft
        Half-complex slices in FFTW order (``fourier.conventions``), side ``n``
        at most ``ori_size``; e.g. ``CTF * X / sigma2``.
    weights
        Real weight of each pixel, e.g. ``CTF^2 / sigma2``.
    rotations
        RELION's matrices ``A`` of each slice.
    padding_factor
        ``p = padding_factor * ori_size``.
    accumulator_data, accumulator_weight
        From ``zero_accumulators``; updated in place and returned.
    max_radius
        Pixels with ``|k| > max_radius`` are skipped; default ``n // 2``.
    skip_redundant
        Skip pixels ``kx = 0, ky < 0`` (``friedel_redundant``), as RELION
        does. ``False`` makes this the exact adjoint of ``extract_slices``
        (up to the factor ``ori_size``).
    """
    _insert(
        data_ft,
        weights,
        rotations,
        ndim=2,
        padding_factor=padding_factor,
        accumulator_data=accumulator_data,
        accumulator_weight=accumulator_weight,
        max_radius=max_radius,
        skip_redundant=skip_redundant,
    )
    return accumulator_data, accumulator_weight


def insert_volumes(
    data_ft: Complex[Tensor, "b n n nh"],
    weights: Float[Tensor, "b n n nh"],
    rotations: Float[Tensor, "b 3 3"],
    *,
    padding_factor: int = 2,
    accumulator_data: Complex[Tensor, "p p ph"],
    accumulator_weight: Float[Tensor, "p p ph"],
    max_radius: float | int | None = None,
    skip_redundant: bool = True,
) -> tuple[Complex[Tensor, "p p ph"], Float[Tensor, "p p ph"]]:
    """Back-rotate 3D Fourier volumes into the accumulators, in place (RELION's ``backrotate3D``).

    The adjoint of ``rotate_volume``: voxel ``k`` lands at ``A.T @ k *
    padding_factor``. For 3D pseudo-subtomograms insert ``X / sigma2`` and
    ``CTF^2 / sigma2`` (the premultiplied data and their CTF² volume).

    Parameters
    ----------
    data_ft
        Half-complex volumes in FFTW order, side ``n`` at most ``ori_size``.
    weights
        Real weight of each voxel.
    rotations
        RELION's matrices ``A`` of each volume.
    padding_factor
        ``p = padding_factor * ori_size``.
    accumulator_data, accumulator_weight
        From ``zero_accumulators``; updated in place and returned.
    max_radius
        Voxels with ``|k| > max_radius`` are skipped; default ``n // 2``.
    skip_redundant
        Skip the redundant half of the ``kx = 0`` plane (``kz < 0``, and
        ``kz = 0, ky < 0``). ``False`` makes this the exact adjoint of
        ``rotate_volume``.
    """
    _insert(
        data_ft,
        weights,
        rotations,
        ndim=3,
        padding_factor=padding_factor,
        accumulator_data=accumulator_data,
        accumulator_weight=accumulator_weight,
        max_radius=max_radius,
        skip_redundant=skip_redundant,
    )
    return accumulator_data, accumulator_weight
