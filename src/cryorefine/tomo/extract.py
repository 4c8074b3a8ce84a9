"""RELION-4 pseudo-subtomograms from tilt images: each tilt inserted as a central slice in 3D.

The 3D half of ``relion_tomo_subtomo`` (REFINE_SPEC section 7.1); the 2D half (boxes,
binning, CTF) is ``tomo.tilt_images``. Layout: ``fourier.conventions``.

Insertion (``insert_tilt_images``)
    For particle ``b`` with tilt rotations ``R_f`` (particle box frame to tilt
    image, ``ParticleTilts.rotations``) and 2D transforms ``Z_f`` (box ``n``)::

        D(k) = (1 / n) sum_f vis_f w_f(k) Z_f((R_f k)_xy)

    ``w_f(k) = max(0, 1 - |k . n_f|)`` is the slab of ``fourier.ctf3d`` (whose
    support function lists the voxels each slice reaches, and their weights: the
    same slab as the CTF^2 and multiplicity volumes); ``Z_f(u)`` at the
    non-integer frequency ``u`` is bilinear in the four nearest coefficients of
    the 2D half-complex grid, through the Friedel mate ``conj Z(-u)`` where
    ``u_x < 0``. This is RELION's backward (gather) insertion of a slice
    (``FourierBackprojection::backprojectSlice_noSF``). It is linear in ``Z``:
    for particles that share their tilt rotations (``slab_insertion``) it is
    built once as a sparse matrix and applied to a batch by two sparse matrix
    products (real and imaginary parts; the Friedel conjugation flips the sign
    of the latter); otherwise each (particle, tilt) slab is visited in chunks.
    The ``1 / n`` makes 2D slices 3D coefficients: a projection's transform is ``n`` times the 3D
    transform on its slice (``tomo.tilt_images``). For noise-free tilt images,
    ``Z_f = CTF_f D_f n V_A`` on slice ``f``, so ``D = sum_f w_f (CTF_f D_f)^2 V_A =
    ctf2 V_A`` wherever ``V_A`` is constant across the slab: RELION-4's model,
    the one ``simulate.pseudo_subtomograms`` computes directly.
Volumes (``pseudo_subtomogram_volumes``)
    ``ctf2`` and ``multiplicity`` from ``fourier.tilt_series_ctf_weights`` with
    the same tilts (CTF evaluated at each voxel's own frequency, where RELION
    interpolates its 2D CTF^2 image; with ``use_ctf`` off ``ctf2 = multiplicity``).
    ``D`` is set to 0 beyond Nyquist (``|k| > n / 2``) and where the multiplicity
    is below ``MULTIPLICITY_THRESHOLD``, as RELION's refinement does on reading;
    the data are returned in real space (what ``_data.mrc`` holds) and the
    weights as CTF^2 stacked on multiplicity along z, ``(2 n, n, n // 2 + 1)``
    (``_weights.mrc``, REFINE_SPEC section 2.2).
"""

import math
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Complex, Float
from torch import Tensor

from cryorefine.fourier.conventions import frequency_indices, from_fourier, rfft_shape
from cryorefine.fourier.ctf3d import slab_support, tilt_series_ctf_weights
from cryorefine.tomo.tilt_geometry import ParticleTilts

__all__ = [
    "MULTIPLICITY_THRESHOLD",
    "SlabInsertion",
    "insert_tilt_images",
    "pseudo_subtomogram_volumes",
    "slab_insertion",
]

#: Voxels reached by less slice weight than this carry no data (RELION's ``--subtomo_multi_thr``).
MULTIPLICITY_THRESHOLD = 0.01

#: Half-width of the slab, in voxels (RELION's trilinear reach; ``fourier.ctf3d``).
_SLAB_WIDTH_PX = 1.0


def _bilinear(u: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor]:
    """Flat indices ``(4, s)`` into the ``(n, n // 2 + 1)`` half grid, weights ``(4, s)``, flips.

    Points with ``u_x < 0`` are folded to ``-u`` (their value is then conjugated).
    Rows are periodic (FFTW order); a corner beyond ``kx = n // 2`` has weight 0.
    """
    flip = u[:, 0] < 0
    u = torch.where(flip[:, None], -u, u)
    base = torch.floor(u)
    frac = u - base
    base = base.to(torch.int64)
    nh = n // 2 + 1
    indices, weights = [], []
    for dy in (0, 1):
        row = torch.remainder(base[:, 1] + dy, n)
        wy = frac[:, 1] if dy else 1.0 - frac[:, 1]
        for dx in (0, 1):
            column = base[:, 0] + dx
            w = wy * (frac[:, 0] if dx else 1.0 - frac[:, 0])
            weights.append(torch.where(column < nh, w, torch.zeros_like(w)))
            indices.append(row * nh + column.clamp(max=nh - 1))
    return torch.stack(indices), torch.stack(weights), flip


@dataclass(frozen=True)
class SlabInsertion:
    """The insertion of one set of tilt rotations as a sparse linear map (``slab_insertion``).

    ``D = (real @ Re Z, imag @ Im Z)`` over images flattened to ``(i * n * nh, b)``:
    each entry is a slab weight times a bilinear weight over ``n``, and ``imag``
    carries the sign of the Friedel conjugation.

    Attributes
    ----------
    real, imag
        Sparse COO ``(n * n * nh, i * n * nh)``, real dtype.
    rotations
        The ``(i, 3, 3)`` tilt rotations it was built for.
    box_size
        ``n``.
    """

    real: Tensor
    imag: Tensor
    rotations: Float[Tensor, "i 3 3"]
    box_size: int


def slab_insertion(
    rotations: Float[Tensor, "i 3 3"], *, box_size: int, dtype: torch.dtype = torch.float32
) -> SlabInsertion:
    """The insertion (module docstring) of tilt images of ``rotations`` shared by many particles.

    Built once (slab of ``fourier.ctf3d``, bilinear corners), applied to any
    number of particles as two sparse matrix products; on the device of
    ``rotations``, values in ``dtype``.
    """
    n, f = box_size, rotations.shape[0]
    nn, voxels = n * (n // 2 + 1), math.prod(rfft_shape(n, 3))
    rotations = rotations.to(torch.float64)
    source, flat, weight, k = slab_support(rotations, n, _SLAB_WIDTH_PX)
    u = torch.einsum("sij,sj->si", rotations[source][:, :2, :], k)
    index, corner_weight, flip = _bilinear(u, n)
    indices = torch.stack([flat.expand(4, -1).reshape(-1), (source * nn + index).reshape(-1)])
    values = (weight * corner_weight / n).reshape(-1)
    sign = torch.where(flip, -1.0, 1.0).expand(4, -1).reshape(-1)

    def sparse(v: Tensor) -> Tensor:
        # checked explicitly (an unset choice warns on some torch versions)
        with torch.sparse.check_sparse_tensor_invariants(enable=True):
            matrix = torch.sparse_coo_tensor(indices, v.to(dtype), (voxels, f * nn))
        return matrix.coalesce()  # sorted, repeated entries (zero-weight corners) summed

    return SlabInsertion(sparse(values), sparse(values * sign), rotations, n)


def _apply(insertion: SlabInsertion, images_ft: Tensor, visible: Tensor) -> Tensor:
    """``D (b, voxels)`` of images ``(b, i, n, nh)`` (invisible tilts left out)."""
    b = images_ft.shape[0]
    real = images_ft.real.dtype
    columns = (images_ft * visible[..., None, None].to(real)).reshape(b, -1).T
    parts = [
        torch.sparse.mm(matrix.to(real), part.contiguous())
        for matrix, part in ((insertion.real, columns.real), (insertion.imag, columns.imag))
    ]
    return torch.complex(*parts).T


def _pairwise(
    flat_images: Tensor,
    rotations: Tensor,
    visible: Tensor,
    out: Tensor,
    n: int,
    max_chunk_elements: int,
) -> None:
    """``out (b, voxels) += ...`` for tilt rotations ``(b, i, 3, 3)`` of each particle's own."""
    b, f = visible.shape
    voxels = out.shape[1]
    pairs_images = flat_images.reshape(b * f, -1)
    pair_rotations = rotations.reshape(b * f, 3, 3)
    pair_visible = visible.reshape(b * f)
    real = flat_images.real.dtype
    per_pair = 4 * n * n * (math.ceil(2.0 * math.sqrt(3.0) * _SLAB_WIDTH_PX) + 2)
    step = max(1, max_chunk_elements // per_pair)
    target = out.view(-1)
    for first in range(0, b * f, step):
        chunk = slice(first, min(b * f, first + step))
        source, flat, weight, k = slab_support(pair_rotations[chunk], n, _SLAB_WIDTH_PX)
        pair = source + first
        u = torch.einsum("sij,sj->si", pair_rotations[pair][:, :2, :], k)
        index, corner_weight, flip = _bilinear(u, n)
        values = torch.zeros(pair.shape[0], dtype=flat_images.dtype, device=u.device)
        for corner in range(4):
            values += corner_weight[corner].to(real) * pairs_images[pair, index[corner]]
        values = torch.where(flip, values.conj(), values)
        scale = weight.to(real) * pair_visible[pair].to(real) / n
        particle = torch.div(pair, f, rounding_mode="floor")
        target.index_add_(0, particle * voxels + flat, values * scale)


def insert_tilt_images(
    images_ft: Complex[Tensor, "b i n nh"],
    tilt_rotations: Float[Tensor, "b i 3 3"],
    visible: Bool[Tensor, "b i"],
    *,
    insertion: SlabInsertion | None = None,
    max_chunk_elements: int = 2**23,
) -> Complex[Tensor, "b n n nh"]:
    """Each particle's tilt transforms as central slices of one 3D transform (module docstring).

    Parameters
    ----------
    images_ft
        ``Z_f``: 2D half-complex transforms of box ``n`` (``tomo.tilt_images``).
    tilt_rotations
        ``R_f S``: particle box frame to tilt image (``ParticleTilts.rotations``).
    visible
        Tilts that contribute (``ParticleTilts.visible``).
    insertion
        ``slab_insertion`` of the rotations every particle here has (one
        tomogram, one subtomogram frame), built once for many calls; None: built
        here when the particles share their rotations.
    max_chunk_elements
        Memory budget, in (tilt image, slab voxel) pairs, of particles with
        rotations of their own (no step per particle).

    Returns
    -------
    Tensor
        ``D``, ``(b, n, n, n // 2 + 1)``, complex dtype of ``images_ft``, on its device.
    """
    b, f, n = images_ft.shape[0], images_ft.shape[1], images_ft.shape[2]
    device = images_ft.device
    rotations = tilt_rotations.to(device, torch.float64)
    use = visible.to(device)
    shape = (b, *rfft_shape(n, 3))
    if b == 0:
        return images_ft.new_zeros(shape)
    if insertion is None and torch.equal(rotations, rotations[:1].expand_as(rotations)):
        insertion = slab_insertion(rotations[0], box_size=n, dtype=images_ft.real.dtype)
    if insertion is not None:
        if insertion.box_size != n or not torch.equal(insertion.rotations.to(device), rotations[0]):
            raise ValueError("insertion was built for other tilt rotations or another box")
        return _apply(insertion, images_ft, use).reshape(shape)
    out = torch.zeros(b, math.prod(shape[1:]), dtype=images_ft.dtype, device=device)
    _pairwise(images_ft.reshape(b, f, -1), rotations, use, out, n, max_chunk_elements)
    return out.reshape(shape)


def pseudo_subtomogram_volumes(
    images_ft: Complex[Tensor, "b i n nh"],
    tilts: ParticleTilts,
    *,
    voltage_kv: float,
    spherical_aberration_mm: float,
    amplitude_contrast: float,
    pixel_size_angst: float,
    use_ctf: bool = True,
    insertion: SlabInsertion | None = None,
    max_chunk_elements: int = 2**23,
) -> tuple[Float[Tensor, "b n n n"], Float[Tensor, "b n2 n nh"]]:
    """Pseudo-subtomograms (real space) and their CTF^2 || multiplicity volumes (module docstring).

    ``images_ft`` are the CTF-premultiplied transforms ``Z_f`` (``tilt_images.premultiply``,
    ``crop_boxes``) of box ``n`` at pixel ``pixel_size_angst``; ``tilts`` the
    particles' tilts (their rotations, CTF, dose and visibility). Returned in the
    real dtype of ``images_ft``, on its device.
    """
    n = images_ft.shape[-2]
    device = images_ft.device
    real = images_ft.real.dtype
    data = insert_tilt_images(
        images_ft,
        tilts.rotations,
        tilts.visible,
        insertion=insertion,
        max_chunk_elements=max_chunk_elements,
    )
    ctf2, multiplicity, _ = tilt_series_ctf_weights(
        tilts.rotations.to(device),
        defocus_u_angst=tilts.defocus_u_angst.to(device),
        defocus_v_angst=tilts.defocus_v_angst.to(device),
        defocus_angle_deg=tilts.defocus_angle_deg.to(device),
        voltage_kv=voltage_kv,
        spherical_aberration_mm=spherical_aberration_mm,
        amplitude_contrast=amplitude_contrast,
        pixel_size_angst=pixel_size_angst,
        box_size=n,
        dose_e_per_angst2=tilts.dose_e_per_angst2.to(device),
        bfactor_angst2=tilts.bfactor_angst2.to(device),
        scale=tilts.scale.to(device),
        visible=tilts.visible.to(device),
        max_chunk_elements=max_chunk_elements,
    )
    ctf2, multiplicity = ctf2.to(real), multiplicity.to(real)
    if not use_ctf:
        ctf2 = multiplicity
    k = frequency_indices(n, 3, device=device)
    inside = (k * k).sum(dim=-1) <= (n // 2) ** 2
    keep = inside & (multiplicity >= MULTIPLICITY_THRESHOLD)
    data = torch.where(keep, data, torch.zeros_like(data))
    return from_fourier(data, n, 3), torch.cat([ctf2, multiplicity], dim=1)
