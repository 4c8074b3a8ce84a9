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
How it is computed
    Only the voxels a slab reaches are visited: for each slice, along the axis
    ``j`` where ``|n_f|`` is largest, the plane crosses each line of the other
    two axes at ``c0``, and the voxels with ``|k . n_f| < slab_width_px`` lie in
    ``|k_j - c0| < slab_width_px / |n_{f,j}| <= sqrt(3) slab_width_px``: a few
    candidates per line instead of the whole grid. The CTF and dose weight of
    the module ``fourier.ctf`` are evaluated in factored form: with
    ``u = (x, y)`` and ``a`` the astigmatism angle,
    ``dU (u . e)^2 + dV (u . e_perp)^2 = m |u|^2 + h cos 2a (x^2 - y^2) + h sin 2a (2 x y)``
    (``m = (dU + dV) / 2``, ``h = (dU - dV) / 2``), so the phase is a product of
    five per-image coefficients with five per-voxel features, and the
    logarithm of the B-factor and dose envelope one of two with two. When every
    particle of a call has the same tilt matrices (one tomogram, subtomogram
    angles 0) the slices' voxels and features are found once and shared: each
    tilt is then one matrix product of ``(voxels, 5) x (5, particles)``.
"""

import math

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from cryorefine.fourier.conventions import rfft_shape
from cryorefine.fourier.ctf import electron_wavelength_angst

__all__ = ["slab_support", "tilt_series_ctf_weights"]

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


def _coefficients(params: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Per-image coefficients ``(b, f, 5)`` of the phase and ``(b, f, 2)`` of the log envelope.

    Features they multiply (``_features``): ``(|u|^2, x^2 - y^2, 2 x y, |u|^4, 1)`` and
    ``(|u|^2, 1 / Ne(|u|))``; RELION's ``gamma = -K1 (...) + K2 |u|^4 - K3`` (module
    ``fourier.ctf``).
    """
    lam = electron_wavelength_angst(params["voltage_kv"])
    k1 = math.pi * lam
    k2 = 0.5 * math.pi * params["spherical_aberration_mm"] * 1e7 * lam**3
    q0 = params["amplitude_contrast"]
    k3 = torch.atan(q0 / torch.sqrt(1.0 - q0 * q0))
    mean = 0.5 * (params["defocus_u_angst"] + params["defocus_v_angst"])
    half = 0.5 * (params["defocus_u_angst"] - params["defocus_v_angst"])
    twice = 2.0 * torch.deg2rad(params["defocus_angle_deg"])
    phase = torch.stack(
        [-k1 * mean, -k1 * half * torch.cos(twice), -k1 * half * torch.sin(twice), k2, -k3], -1
    )
    envelope = torch.stack([-0.25 * params["bfactor_angst2"], -0.5 * params["dose"]], dim=-1)
    return phase, envelope


def _features(rotations: Tensor, k: Tensor, frequency_scale: float) -> tuple[Tensor, Tensor]:
    """Phase ``(s, 5)`` and envelope ``(s, 2)`` features of voxels ``k`` seen by ``rotations``."""
    frequency = torch.einsum("sij,sj->si", rotations[:, :2, :], k) * frequency_scale
    x, y = frequency[:, 0], frequency[:, 1]
    u2 = x * x + y * y
    # Grant & Grigorieff's 1 / Ne(k), Ne = 0.245 k^-1.665 + 2.81 (k = 0: Ne = inf, 0).
    inverse_critical = 1.0 / (0.245 * torch.pow(torch.sqrt(u2), -1.665) + 2.81)
    phase = torch.stack([u2, x * x - y * y, 2.0 * x * y, u2 * u2, torch.ones_like(u2)], dim=-1)
    return phase, torch.stack([u2, inverse_critical], dim=-1)


def _weighted_ctf(phase: Tensor, envelope: Tensor, scale: Tensor) -> Tensor:
    """``CTF D`` from the contracted phase and log envelope (``fourier.ctf``'s formula)."""
    return -torch.sin(phase) * torch.exp(envelope) * scale


def slab_support(
    rotations: Tensor, box_size: int, slab_width_px: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Voxels each slice reaches: slice index, flat voxel index, tent weight, frequency ``k``.

    Candidates along the dominant axis of each normal (module docstring); the
    distance of a candidate ``k_j`` is ``n_j (k_j - c0)``. Entries are ordered by
    slice; flat index ``(iz * n + iy) * nh + kx``.
    """
    n, nh, device = box_size, box_size // 2 + 1, rotations.device
    normals = rotations[:, 2, :]
    dominant = normals.abs().argmax(dim=-1)
    free = torch.tensor([[1, 2], [0, 2], [0, 1]], device=device)[dominant]  # (p, 2), sorted
    line = torch.arange(-n // 2 + 1, n // 2 + 1, dtype=torch.float64, device=device)
    n_free = normals.gather(1, free)
    n_dom = normals.gather(1, dominant[:, None])[:, :, None]  # (p, 1, 1)
    c0 = -(line[None, :, None] * n_free[:, 0, None, None] + line * n_free[:, 1, None, None])
    c0 = c0 / n_dom
    reach = slab_width_px / n_dom.abs()
    # Integers in (c0 - reach, c0 + reach): at most ceil(2 reach); one spare for rounding.
    count = math.ceil(2.0 * slab_width_px / float(n_dom.abs().min())) + 2
    steps = torch.arange(count, dtype=torch.float64, device=device)
    along = (torch.floor(c0 - reach)[..., None] + steps).contiguous()  # (p, n, n, c)
    distance = n_dom[..., None] * (along - c0[..., None])
    weight = (1.0 - distance.abs() / slab_width_px).clamp(min=0.0)
    lowest = torch.where(dominant == 0, 0, -n // 2 + 1).to(torch.float64)[:, None, None, None]
    inside = (along >= lowest) & (along <= n // 2)
    # x is the first free axis unless dominant: then only kx >= 0 is stored.
    inside &= ((dominant != 0)[:, None] & (line < 0)[None]).logical_not()[:, :, None, None]
    source, i, j, c = torch.nonzero((weight > 0) & inside, as_tuple=True)
    k = torch.zeros(source.shape[0], 3, dtype=torch.float64, device=device)
    k.scatter_(1, dominant[source, None], along[source, i, j, c, None])
    k.scatter_(1, free[source, :1], line[i, None])
    k.scatter_(1, free[source, 1:], line[j, None])
    index = k.to(torch.int64)
    flat = ((index[:, 2] % n) * n + index[:, 1] % n) * nh + index[:, 0]
    return source, flat, weight[source, i, j, c], k


def _shared_sums(
    rotations: Tensor,
    phase_coefficients: Tensor,
    envelope_coefficients: Tensor,
    scale: Tensor,
    use: Tensor,
    *,
    box_size: int,
    pixel_size_angst: float,
    slab_width_px: float,
    max_chunk_elements: int,
) -> Tensor:
    """Sums ``(3, b, voxels)`` when all particles share the ``(f, 3, 3)`` tilt matrices."""
    b, f = use.shape
    voxels = math.prod(rfft_shape(box_size, 3))
    source, flat, weight, k = slab_support(rotations, box_size, slab_width_px)
    phase_features, envelope_features = _features(
        rotations[source], k, 1.0 / (box_size * pixel_size_angst)
    )
    counts = torch.bincount(source, minlength=f).tolist()
    starts = [0, *torch.tensor(counts).cumsum(0).tolist()]
    sums = torch.empty(3, b, voxels, dtype=torch.float64, device=rotations.device)
    step = max(1, max_chunk_elements // max(1, max(counts)))
    for first in range(0, b, step):
        rows = slice(first, min(b, first + step))
        total = torch.zeros(3, voxels, rows.stop - first, dtype=torch.float64, device=sums.device)
        for tilt in range(f):
            part = slice(starts[tilt], starts[tilt + 1])
            ctf = _weighted_ctf(
                phase_features[part] @ phase_coefficients[rows, tilt].T,
                envelope_features[part] @ envelope_coefficients[rows, tilt].T,
                scale[rows, tilt],
            )  # (s, b)
            w = weight[part, None] * use[rows, tilt]
            _accumulate(total, (flat[part],), w, ctf)
        sums[:, rows] = total.transpose(1, 2)
    return sums


def _accumulate(total: Tensor, index: tuple[Tensor], w: Tensor, ctf: Tensor) -> None:
    """Add ``w CTF^2``, ``w`` and ``w CTF`` at ``index`` of ``total[0]``, ``[1]``, ``[2]``."""
    weighted = w * ctf
    # index_put_ with accumulate: a sorted segment sum, far faster on the CPU than index_add_.
    total[0].index_put_(index, weighted * ctf, accumulate=True)
    total[1].index_put_(index, w, accumulate=True)
    total[2].index_put_(index, weighted, accumulate=True)


def _pairwise_sums(
    rotations: Tensor,
    phase_coefficients: Tensor,
    envelope_coefficients: Tensor,
    scale: Tensor,
    use: Tensor,
    *,
    box_size: int,
    pixel_size_angst: float,
    slab_width_px: float,
    max_chunk_elements: int,
) -> Tensor:
    """Sums ``(3, b, voxels)`` of particles with tilt matrices ``(b * f, 3, 3)`` of their own."""
    b, f = use.shape
    voxels = math.prod(rfft_shape(box_size, 3))
    sums = torch.zeros(3, b * voxels, dtype=torch.float64, device=rotations.device)
    phase_coefficients = phase_coefficients.reshape(b * f, 5)
    envelope_coefficients = envelope_coefficients.reshape(b * f, 2)
    scale, use = scale.reshape(-1), use.reshape(-1)
    per_pair = 4 * box_size * box_size * (math.ceil(2.0 * math.sqrt(3.0) * slab_width_px) + 2)
    step = max(1, max_chunk_elements // per_pair)
    for first in range(0, b * f, step):
        pairs = slice(first, min(b * f, first + step))
        source, flat, weight, k = slab_support(rotations[pairs], box_size, slab_width_px)
        pair = source + first
        phase_features, envelope_features = _features(
            rotations[pair], k, 1.0 / (box_size * pixel_size_angst)
        )
        ctf = _weighted_ctf(
            (phase_features * phase_coefficients[pair]).sum(dim=-1),
            (envelope_features * envelope_coefficients[pair]).sum(dim=-1),
            scale[pair],
        )
        index = torch.div(pair, f, rounding_mode="floor") * voxels + flat
        _accumulate(sums, (index,), weight * use[pair], ctf)
    return sums.reshape(3, b, voxels)


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

    Formulas, conventions, the slab model and how the voxels are visited:
    module docstring. Work is done in chunks bounded by ``max_chunk_elements``
    (no step per particle). Computed and summed in float64; results are
    returned in the dtype of ``defocus_u_angst`` on the device of ``tilt_matrices``.

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
        Memory budget of a step: (tilt image, candidate voxel) pairs, or with
        shared tilt matrices (particle, voxel of one slice) pairs; float64 each.

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
    like = defocus_u_angst.to(device=device, dtype=torch.float64)
    params = {
        "defocus_u_angst": like,
        "defocus_v_angst": _per_tilt(defocus_v_angst, 0.0, like),
        "defocus_angle_deg": _per_tilt(defocus_angle_deg, 0.0, like),
        "voltage_kv": _per_tilt(voltage_kv, 0.0, like),
        "spherical_aberration_mm": _per_tilt(spherical_aberration_mm, 0.0, like),
        "amplitude_contrast": _per_tilt(amplitude_contrast, 0.0, like),
        "bfactor_angst2": _per_tilt(bfactor_angst2, 0.0, like),
        "dose": _per_tilt(dose_e_per_angst2, 0.0, like),
    }
    phase, envelope = _coefficients(params)
    weights = (
        _per_tilt(scale, 1.0, like),
        torch.ones_like(like) if visible is None else visible.to(device, torch.float64),
    )
    rotations = tilt_matrices.to(torch.float64)
    shared = b > 0 and torch.equal(rotations, rotations[:1].expand_as(rotations))
    sums = (_shared_sums if shared else _pairwise_sums)(
        rotations[0] if shared else rotations.reshape(b * f, 3, 3),
        phase,
        envelope,
        *weights,
        box_size=box_size,
        pixel_size_angst=pixel_size_angst,
        slab_width_px=slab_width_px,
        max_chunk_elements=max_chunk_elements,
    )
    ctf2, multiplicity, ctf_sum = sums.reshape(3, b, *rfft_shape(box_size, 3))
    ctf_mean = ctf_sum / multiplicity.clamp(min=_MULTIPLICITY_EPS)
    return ctf2.to(out_dtype), multiplicity.to(out_dtype), ctf_mean.to(out_dtype)
