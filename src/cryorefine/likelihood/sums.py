"""The M-step sums of one batch as matrix products (REFINE_SPEC §4.5).

Notation as ``likelihood.scores``: posterior weights ``w[b, t, r]`` over each
particle's translations and orientations, window coefficients ``X[b, k]``
(origin-shifted), CTF term ``K[b, k]``, projections ``P[r, k]`` (or each
particle's own ``P[b, r, k]``), phases ``S[b, t, k]``.

Back-projection (RELION's ``storeWeightedSums``), per orientation ``r``:
    ``data[r, k] = sum_b sum_t w[b, t, r] Y[b, k] S[b, t, k]`` and
    ``weight[r, k] = sum_b (sum_t w[b, t, r]) V[b, k]``, with
    ``Y = K X / sigma2`` and ``V = K^2 / sigma2``, or for CTF-premultiplied data
    ``Y = X / sigma2`` and ``V = K / sigma2`` (``backprojection_inputs``). With one
    orientation list for all particles these are ``[r x (b t)] @ [(b t) x 2k]`` and
    ``[r x b] @ [b x k]``; with each particle's own list, batched products per
    particle added into the rows of the output (``rows``).
Noise and scale, per particle and shell, without forming ``(b, t, r, k)``:
    ``sum_{t, r} w |K P - X S|^2 = W |X|^2 + K^2 sum_r W_r |P_r|^2
    - 2 Re(K conj(X) sum_t conj(S_t) sum_r w[t, r] P_r)``, each term a matrix
    product, then summed per shell with a one-hot ``[k x shells]`` matrix
    (``window.shell_matrix``). ``W_r = sum_t w``, ``W = sum w``.
Offsets
    ``sum_{t, r} w |origin + t - prior|^2`` per particle (pixels squared).
"""

from dataclasses import dataclass

import torch
from jaxtyping import Complex, Float, Int
from torch import Tensor

from cryorefine.fourier import splat_rotated
from cryorefine.likelihood.scores import matmul_precision, squared_magnitude, working_dtypes
from cryorefine.likelihood.window import FourierWindow, window_frequencies_xyz

__all__ = [
    "ShellSums",
    "backprojection_inputs",
    "backprojection_sums",
    "insert_backprojection",
    "offset_moments",
    "shell_sums",
    "shell_sums_from_products",
    "shell_sums_from_unshifted",
]


def _pairs(z: Tensor) -> Tensor:
    return torch.view_as_real(z.contiguous()).flatten(-2)


def _complex(pairs: Tensor) -> Tensor:
    return torch.view_as_complex(pairs.reshape(*pairs.shape[:-1], -1, 2).contiguous())


def backprojection_inputs(
    data: Complex[Tensor, "b k"],
    ctf: Float[Tensor, "b k"],
    inv_sigma2: Float[Tensor, "b k"],
    *,
    ctf_premultiplied: bool,
) -> tuple[Complex[Tensor, "b k"], Float[Tensor, "b k"]]:
    """``(Y, V)``: ``(K X, K^2) / sigma2``, premultiplied data ``(X, K) / sigma2``.

    ``data`` are the unmasked, origin-shifted coefficients; ``inv_sigma2`` is
    ``1 / sigma2`` without the multiplicity (RELION).
    """
    s = inv_sigma2.to(ctf.dtype)
    if ctf_premultiplied:
        return data * s, ctf * s
    return data * (ctf * s), ctf.square() * s


def backprojection_sums(
    weights: Float[Tensor, "b t r"],
    data_terms: Complex[Tensor, "b k"],
    weight_terms: Float[Tensor, "b k"],
    phases: Complex[Tensor, "b t k"],
    *,
    rows: Int[Tensor, "b r"] | None = None,
    n_rows: int | None = None,
    precision: str = "float32",
) -> tuple[Complex[Tensor, "n k"], Float[Tensor, "n k"]]:
    """Back-projection data and weight per orientation (module docstring).

    Parameters
    ----------
    weights
        Posterior weights (0 for padded or pruned samples).
    data_terms, weight_terms
        ``Y`` and ``V`` from ``backprojection_inputs``.
    phases
        Each particle's translation phases (``expand`` a shared ``(t, k)``).
    rows
        Output row of each particle's orientation ``r``; None: all particles
        share the list and row ``r`` is orientation ``r``.
    n_rows
        Number of output rows (with ``rows``).
    precision
        Working precision of the products (``scores.working_dtypes``).
    """
    real, cplx = working_dtypes(precision)
    b, t, r = weights.shape
    w = weights.to(real)
    shifted = _pairs(data_terms.to(cplx)[:, None, :] * phases.to(cplx))  # (b, t, 2k)
    v = weight_terms.to(real)
    with matmul_precision(precision):
        if rows is None:
            data = w.reshape(b * t, r).T @ shifted.reshape(b * t, -1)
            weight = w.sum(dim=1).T @ v
            return _complex(data), weight
        if n_rows is None:
            raise ValueError("n_rows is needed with rows")
        per_particle = w.transpose(1, 2) @ shifted  # (b, r, 2k)
        data = per_particle.new_zeros(n_rows, per_particle.shape[-1])
        data.index_add_(0, rows.reshape(-1), per_particle.reshape(b * r, -1))
        dense = w.new_zeros(b, n_rows).scatter_add_(1, rows, w.sum(dim=1))
        weight = dense.T @ v
    return _complex(data), weight


@dataclass(frozen=True)
class ShellSums:
    """Weighted sums per particle and shell, float64.

    Attributes
    ----------
    residual_power
        ``sum w |K P - X S|^2`` (RELION's ``wsum_sigma2_noise`` terms).
    signal_product
        ``sum w Re(K P conj(X S))`` (scale correction, ``sumXA``).
    reference_power
        ``sum w |K P|^2`` (scale correction, ``sumA2``).
    """

    residual_power: Float[Tensor, "b s"]
    signal_product: Float[Tensor, "b s"]
    reference_power: Float[Tensor, "b s"]

    def __add__(self, other: "ShellSums") -> "ShellSums":
        """Element-wise sum (partial sums over orientation chunks)."""
        return ShellSums(
            self.residual_power + other.residual_power,
            self.signal_product + other.signal_product,
            self.reference_power + other.reference_power,
        )


def shell_sums(
    weights: Float[Tensor, "b t r"],
    data: Complex[Tensor, "b k"],
    ctf: Float[Tensor, "b k"],
    projections: Complex[Tensor, "b r k"] | Complex[Tensor, "r k"],
    phases: Complex[Tensor, "b t k"],
    shells: Float[Tensor, "k s"],
    *,
    precision: str = "float32",
) -> ShellSums:
    """Noise and scale sums per particle and shell (module docstring), float64.

    ``projections`` is ``(r, k)`` when the particles share their orientation
    list, else ``(b, r, k)``. The sums are linear in ``weights``: the sums over
    chunks of orientations add up (``ShellSums.__add__``).
    """
    real, cplx = working_dtypes(precision)
    b, t, r = weights.shape
    w = weights.to(real)
    p = projections.to(cplx)
    p_power = squared_magnitude(p)
    per_orientation = w.sum(dim=1)  # (b, r)
    with matmul_precision(precision):
        if p.dim() == 2:
            q = (w.reshape(b * t, r) @ _pairs(p)).reshape(b, t, -1)
            power = per_orientation @ p_power
        else:
            q = w @ _pairs(p)
            power = (per_orientation[:, None, :] @ p_power).squeeze(1)
    return shell_sums_from_products(
        data, ctf, phases, q, power, per_orientation.sum(dim=1), shells, precision=precision
    )


def shell_sums_from_products(
    data: Complex[Tensor, "b k"],
    ctf: Float[Tensor, "b k"],
    phases: Complex[Tensor, "b t k"],
    weighted_projections: Float[Tensor, "b t k2"],
    weighted_power: Float[Tensor, "b k"],
    weight_totals: Float[Tensor, " b"],
    shells: Float[Tensor, "k s"],
    *,
    precision: str = "float32",
) -> ShellSums:
    """``shell_sums`` from its orientation products, accumulated by the caller over chunks.

    ``weighted_projections`` is ``Q = sum_r w[b, t, r] P_r`` as real pairs,
    ``weighted_power`` is ``sum_r W_r |P_r|^2`` and ``weight_totals`` is ``W``.
    """
    _, cplx = working_dtypes(precision)
    q = _complex(weighted_projections)
    unshifted = (phases.to(cplx).conj() * q).sum(dim=1)  # sum_t conj(S_t) Q_t, (b, k)
    return shell_sums_from_unshifted(
        data, ctf, unshifted, weighted_power, weight_totals, shells, precision=precision
    )


def shell_sums_from_unshifted(
    data: Complex[Tensor, "b k"],
    ctf: Float[Tensor, "b k"],
    unshifted: Complex[Tensor, "b k"],
    weighted_power: Float[Tensor, "b k"],
    weight_totals: Float[Tensor, " b"],
    shells: Float[Tensor, "k s"],
    *,
    precision: str = "float32",
) -> ShellSums:
    """``shell_sums_from_products`` with the weighted projections already brought back to
    the unshifted particle: ``unshifted = sum_t conj(S_t) Q_t`` (``likelihood.unshifted``
    forms it without the ``(b, t, k)`` arrays)."""
    _, cplx = working_dtypes(precision)
    x = data.to(cplx)
    g = unshifted.to(cplx)
    k_ctf = ctf.to(weighted_power.dtype)
    shells64 = shells.to(torch.float64)
    signal = (k_ctf * (x.real * g.real + x.imag * g.imag)).to(torch.float64) @ shells64
    reference = (k_ctf.square() * weighted_power).to(torch.float64) @ shells64
    x2 = squared_magnitude(x).to(torch.float64)
    residual = (weight_totals.to(torch.float64)[:, None] * x2) @ shells64
    return ShellSums(residual + reference - 2.0 * signal, signal, reference)


def offset_moments(
    translation_weights: Float[Tensor, "b t"],
    origins_px: Float[Tensor, "b ndim"],
    translations_px: Float[Tensor, "b t ndim"],
    priors_px: Float[Tensor, "b ndim"],
) -> Float[Tensor, " b"]:
    """``sum_t W_t |origin + t - prior|^2`` per particle, pixels squared, float64.

    ``translation_weights`` are the posterior weights summed over orientations;
    multiply by the pixel size squared for RELION's Angstrom^2 sums.
    """
    d = origins_px[:, None, :] + translations_px - priors_px[:, None, :]
    d2 = d.to(torch.float64).square().sum(dim=-1)
    return (translation_weights.to(torch.float64) * d2).sum(dim=-1)


def insert_backprojection(
    data: Complex[Tensor, "r k"],
    weight: Float[Tensor, "r k"],
    rotations: Float[Tensor, "r 3 3"],
    window: FourierWindow,
    *,
    accumulator_data: Complex[Tensor, "p p ph"] | Float[Tensor, "p p ph 4"],
    accumulator_weight: Float[Tensor, "p p ph"] | None,
    padding_factor: int = 2,
    max_bytes: int = 2**30,
) -> None:
    """Insert per-orientation sums into the back-projector, in place, a chunk at a time.

    ``window`` is the one the sums live on (usually with DC and the redundant
    mates: ``fourier.insert_slices`` / ``insert_volumes`` skip the mates as RELION).
    ``accumulator_weight`` None: ``accumulator_data`` is packed (``fourier.packed_accumulator``).
    """
    per_orientation = 16 * window.count * data.element_size()  # the torch path's temporaries
    chunk = max(1, max_bytes // per_orientation)
    frequencies = window_frequencies_xyz(window)
    for start in range(0, data.shape[0], chunk):
        part = slice(start, start + chunk)
        splat_rotated(
            data[part],
            weight[part],
            rotations[part],
            frequencies,
            padding_factor=padding_factor,
            accumulator_data=accumulator_data,
            accumulator_weight=accumulator_weight,
            max_radius=float(window.size // 2),
            skip_redundant=True,
            ndim=window.ndim,
        )
