"""3D CTF weights of a particle from its tilt series (RELION-4 pseudo-subtomograms, classic STA).

In the particle's box frame, tilt image ``f`` of a particle is a central slice
perpendicular to ``n_f``, the projection direction of that tilt: row 2 of the
3x3 matrix ``R_f`` that maps particle-frame coordinates ``(x, y, z)`` to the
tilt image's ``(x, y, z)`` (REFINE_SPEC sections 7.1 and 7.4). A voxel ``k`` of
the 3D half-complex grid (integer frequency, ``fourier.conventions``) is seen by
tilt ``f`` at the 2D frequency ``(R_f k)_xy / (n p)`` (1/Angstrom), where the
tilt's CTF and dose weight are evaluated.

Slice thickness
    RELION inserts each tilt's 2D transform into the 3D grid by trilinear
    interpolation, so a slice touches the voxels within one voxel of its plane.
    Here a tent weight over the distance from the plane stands in for that
    interpolation kernel::

        w_f(k) = max(0, 1 - |k . n_f| / slab_width_px)

    It is 1 on the plane and 0 from ``slab_width_px`` voxels away. (Trilinear
    weights are a product over three axes; the tent is their one-dimensional
    counterpart along the normal, which makes every voxel's weight a closed
    formula of its own frequency.)
Sums (per particle, over visible tilts)
    ``ctf2 = sum_f w_f (CTF_f D_f)^2`` (the CTF-squared volume of RELION-4
    pseudo-subtomograms), ``multiplicity = sum_f w_f``, and
    ``ctf_mean = sum_f w_f CTF_f D_f / max(multiplicity, eps)`` (the signed,
    slice-averaged CTF of classic subtomograms; 0 where no slice reaches, the
    missing wedge), with ``D_f`` the dose weight of the tilt.
"""

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from cryorefine.fourier.conventions import frequency_indices, rfft_shape
from cryorefine.fourier.ctf import ctf_at_frequencies, dose_weight_at_frequencies

__all__ = ["tilt_series_ctf_weights"]

#: Floor of the multiplicity in the denominator of ``ctf_mean``.
_MULTIPLICITY_EPS = 1e-6


def _per_tilt(value: Tensor | float | None, default: float, like: Tensor) -> Tensor:
    """A per-tilt parameter as float64 ``(b, f)`` (a float or a ``(b,)`` tensor is broadcast)."""
    if value is None:
        value = default
    out = torch.as_tensor(value, dtype=torch.float64, device=like.device)
    if out.ndim == 1:
        out = out[:, None]
    return out.expand(like.shape)


def tilt_series_ctf_weights(
    tilt_matrices: Float[Tensor, "b f 3 3"],
    *,
    defocus_u_angst: Float[Tensor, "b f"],
    defocus_v_angst: Float[Tensor, "b f"],
    defocus_angle_deg: Float[Tensor, "b f"],
    voltage_kv: Float[Tensor, " b"] | float,
    spherical_aberration_mm: Float[Tensor, " b"] | float,
    amplitude_contrast: Float[Tensor, " b"] | float,
    pixel_size_angst: float,
    box_size: int,
    dose_e_per_angst2: Float[Tensor, "b f"],
    bfactor_angst2: Float[Tensor, "b f"] | None = None,
    scale: Float[Tensor, "b f"] | None = None,
    visible: Bool[Tensor, "b f"] | None = None,
    slab_width_px: float = 1.0,
    max_chunk_elements: int = 2**23,
) -> tuple[Float[Tensor, "b n n nh"], Float[Tensor, "b n n nh"], Float[Tensor, "b n n nh"]]:
    """CTF-squared, multiplicity and mean CTF of each particle's tilt series on the 3D grid.

    Formulas, conventions and the slab model: module docstring. The (particle,
    tilt) pairs of the batch are processed in chunks of
    ``max_chunk_elements // (n * n * nh)`` tilt images (one step per chunk, not
    per particle); within a chunk the CTF is evaluated only where a slice
    reaches (``w_f > 0``: about ``2 slab_width_px / n`` of the grid per tilt).
    Sums are float64; results are returned in the dtype of ``defocus_u_angst``
    on the device of ``tilt_matrices``.

    Parameters
    ----------
    tilt_matrices
        ``R_f`` per particle and tilt: particle-frame ``(x, y, z)`` to tilt-image
        ``(x, y, z)`` (rotations; row 2 is the projection direction).
    defocus_u_angst, defocus_v_angst, defocus_angle_deg
        Per-tilt defocus of the particle (Angstrom, positive underfocus) and
        astigmatism angle (degrees from the tilt image's x axis).
    voltage_kv, spherical_aberration_mm, amplitude_contrast
        Per particle or one for all.
    pixel_size_angst, box_size
        Pixel size and side ``n`` of the particle box; ``nh = n // 2 + 1``.
    dose_e_per_angst2
        Accumulated dose of each tilt (Grant & Grigorieff weight, ``fourier.ctf``).
    bfactor_angst2, scale
        Per-tilt CTF B-factor and scale (``rlnCtfBfactor``, ``rlnCtfScalefactor``);
        0 and 1 when omitted.
    visible
        Tilts that contribute (``rlnTomoVisibleFrames``); all when omitted.
    slab_width_px
        Half-width of the tent along the slice normal, in voxels.
    max_chunk_elements
        Memory budget of a chunk, in (tilt image, voxel) pairs (float64 each).

    Returns
    -------
    ctf2, multiplicity, ctf_mean
        ``(b, n, n, nh)`` each, half-complex layout of ``fourier.conventions``.
    """
    if slab_width_px <= 0:
        raise ValueError(f"slab_width_px must be positive, got {slab_width_px}")
    b, f = tilt_matrices.shape[:2]
    device = tilt_matrices.device
    out_dtype = defocus_u_angst.dtype
    grid = frequency_indices(box_size, 3, device=device).reshape(-1, 3).to(torch.float64)
    voxels = grid.shape[0]
    like = defocus_u_angst.to(device=device, dtype=torch.float64)
    params = {
        "defocus_u_angst": like,
        "defocus_v_angst": _per_tilt(defocus_v_angst, 0.0, like),
        "defocus_angle_deg": _per_tilt(defocus_angle_deg, 0.0, like),
        "voltage_kv": _per_tilt(voltage_kv, 0.0, like),
        "spherical_aberration_mm": _per_tilt(spherical_aberration_mm, 0.0, like),
        "amplitude_contrast": _per_tilt(amplitude_contrast, 0.0, like),
        "bfactor_angst2": _per_tilt(bfactor_angst2, 0.0, like),
        "scale": _per_tilt(scale, 1.0, like),
        "dose": _per_tilt(dose_e_per_angst2, 0.0, like),
    }
    use = torch.ones(b, f, dtype=torch.bool, device=device) if visible is None else visible
    pairs = {name: value.reshape(-1) for name, value in params.items()}
    rotations = tilt_matrices.to(torch.float64).reshape(b * f, 3, 3)
    use_pairs = use.to(device).reshape(-1)
    sums = torch.zeros(3, b * voxels, dtype=torch.float64, device=device)
    chunk = max(1, max_chunk_elements // voxels)
    for start in range(0, b * f, chunk):
        part = slice(start, min(b * f, start + chunk))
        _accumulate_chunk(
            sums,
            rotations[part],
            {name: value[part] for name, value in pairs.items()},
            use_pairs[part],
            grid,
            particle_of_pair=torch.arange(part.start, part.stop, device=device) // f,
            frequency_scale=1.0 / (box_size * pixel_size_angst),
            slab_width_px=slab_width_px,
        )
    ctf2, multiplicity, ctf_sum = sums.reshape(3, b, *rfft_shape(box_size, 3))
    ctf_mean = ctf_sum / multiplicity.clamp(min=_MULTIPLICITY_EPS)
    return ctf2.to(out_dtype), multiplicity.to(out_dtype), ctf_mean.to(out_dtype)


def _accumulate_chunk(
    sums: Tensor,
    rotations: Tensor,
    params: dict[str, Tensor],
    use: Tensor,
    grid: Tensor,
    *,
    particle_of_pair: Tensor,
    frequency_scale: float,
    slab_width_px: float,
) -> None:
    """Add one chunk of (particle, tilt) slices to ``sums`` (ctf2, multiplicity, ctf sum; flat)."""
    voxels = grid.shape[0]
    distance = torch.einsum("pj,vj->pv", rotations[:, 2, :], grid)  # k . n_f
    weight = (1.0 - distance.abs() / slab_width_px).clamp(min=0.0) * use[:, None]
    pair, voxel = torch.nonzero(weight > 0, as_tuple=True)
    w = weight[pair, voxel]
    # 2D frequency seen by the tilt: rows 0 and 1 of R_f applied to k, in 1/Angstrom.
    frequency = torch.einsum("hij,hj->hi", rotations[pair, :2, :], grid[voxel])
    frequency = frequency * frequency_scale
    at = {name: value[pair] for name, value in params.items()}
    ctf = ctf_at_frequencies(
        frequency,
        defocus_u_angst=at["defocus_u_angst"],
        defocus_v_angst=at["defocus_v_angst"],
        defocus_angle_deg=at["defocus_angle_deg"],
        voltage_kv=at["voltage_kv"],
        spherical_aberration_mm=at["spherical_aberration_mm"],
        amplitude_contrast=at["amplitude_contrast"],
        bfactor_angst2=at["bfactor_angst2"],
        scale=at["scale"],
    )
    weighted_ctf = ctf * dose_weight_at_frequencies(frequency, at["dose"])
    flat = particle_of_pair[pair] * voxels + voxel
    sums[0].index_add_(0, flat, w * weighted_ctf * weighted_ctf)
    sums[1].index_add_(0, flat, w)
    sums[2].index_add_(0, flat, w * weighted_ctf)
