"""Scores of every (particle, translation, orientation) as matrix products.

For particle ``b`` with window coefficients ``X[b, k]`` (complex, already
shifted by its origin), CTF term ``K[b, k]`` and score weight ``w[b, k]``
(``1 / (2 sigma2)``, RELION's ``Minvsigma2 / 2``), reference projections
``P[r, k]`` and phase factors ``S[t, k]`` of the trial translations:

    diff2[b, t, r] = sum_k w |K P[r] - X S[t]|^2
                   = sum_k w |X|^2                       (|S| = 1)
                   + sum_k (w K^2)[b, k] |P[r, k]|^2      [b x k] @ [k x r]
                   - 2 sum_k Re(conj(Z[b, t, k]) P[r, k]),  Z = w K X S

and ``Re(conj(Z) P) = Re Z Re P + Im Z Im P`` is a real dot product of length
``2k``, so the cross term is ``[(b t) x 2k] @ [2k x r]`` (``torch.view_as_real``
interleaves real and imaginary parts the same way in both factors). For
per-particle orientation lists (``..._per_particle``: ``P[b, r, k]``) the same
products are batched over ``b``.

The normalised cross-correlation of RELION's ``--firstiter_cc`` uses the same
three terms: ``cc = -sum w Re(K P conj(X S)) / (sqrt(sum w K^2 |P|^2) sqrt(sum w |X|^2))``,
with ``w = 1`` for RELION's (its sums run over the whole windowed array; the
window's coefficients give the same value where the reference is zero outside
``size // 2``, up to the constant image power of the corners).

Precision: ``"float32"`` (default) and ``"float64"`` compute in that real
dtype; ``"tf32"`` computes in float32 with TF32 matrix products allowed
(``torch.set_float32_matmul_precision("high")``) for the duration of the call
only. Scores come back in the working dtype.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Complex, Float
from torch import Tensor

from cryorefine.likelihood import squares

__all__ = [
    "AUTO_PRECISION",
    "CROSS_BLOCK",
    "PRECISIONS",
    "DataTerms",
    "Precision",
    "as_real_pairs",
    "cross_correlation_per_particle",
    "cross_correlation_scores",
    "data_terms",
    "matmul_precision",
    "orientation_terms",
    "per_particle_cross",
    "resolve_precision",
    "scores_from_cross",
    "scores_from_terms",
    "squared_differences",
    "squared_differences_per_particle",
    "squared_magnitude",
    "working_dtypes",
]

Precision = Literal["float32", "float64", "tf32"]
PRECISIONS: tuple[str, ...] = ("float32", "float64", "tf32")

AUTO_PRECISION = {True: "tf32", False: "float32"}
"""``"auto"`` on a GPU (True) and on the CPU (False). tf32 on the GPU: on the
tutorial-shaped job (H100) it took 677 s against 964 s in float32 with the same figures
against the truth (16.2 A, 2.52 against 2.54 degrees), and it changed the best pose of
2.0 % of particles against float64 (float32: 0.9 %), each by about one fine step
(``docs/performance.md``)."""


def resolve_precision(precision: str, device: torch.device) -> str:
    """``precision`` itself, or for ``"auto"`` the device's (``AUTO_PRECISION``)."""
    return AUTO_PRECISION[device.type == "cuda"] if precision == "auto" else precision


def working_dtypes(precision: str) -> tuple[torch.dtype, torch.dtype]:
    """``(real, complex)`` dtypes that ``precision`` computes in."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "float64":
        return torch.float64, torch.complex128
    return torch.float32, torch.complex64


@contextmanager
def matmul_precision(precision: str) -> Iterator[None]:
    """Allow TF32 matrix products inside the block for ``"tf32"``; restore the setting after."""
    working_dtypes(precision)  # validates
    if precision != "tf32":
        yield
        return
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def squared_magnitude(z: Complex[Tensor, "..."]) -> Float[Tensor, "..."]:
    """``|z|^2``, real, of ``z``'s shape: the modulus squared in place.

    Two passes over contiguous memory (8 + 4 bytes per value read, 4 + 4 written),
    where squaring the strided ``z.real`` and ``z.imag`` views and adding them is
    three passes, two of them strided (24 read, 12 written). The modulus is a
    ``hypot`` (within 3 ulp on CUDA, 1 on the CPU): an ulp is at most ``eps`` of a
    value, so the square is within ``2 * 3 + 1/2`` times ``eps`` of ``|z|^2``, relative.
    Contiguous complex64 arrays on a GPU take one pass instead
    (``squares.kernel_squared_magnitude``: 8 bytes read and 4 written per value, within
    ``2 u + u^2`` of ``|z|^2``, ``u = eps / 2``).
    """
    if squares.kernel_applies(z):
        return squares.kernel_squared_magnitude(z)
    return z.abs().square_()


def as_real_pairs(z: Complex[Tensor, "... k"]) -> Float[Tensor, "... k2"]:
    """``(..., k)`` complex -> ``(..., 2k)`` real, ``(Re, Im)`` interleaved."""
    return torch.view_as_real(z.contiguous()).flatten(-2)


@dataclass(frozen=True)
class DataTerms:
    """The particle side of the products, computed once per pass.

    Attributes
    ----------
    data_power
        ``sum_k w |X|^2`` per particle.
    ctf_power
        ``w K^2``.
    shifted
        ``Z = w K X S`` as real pairs ``(b, t, 2k)``.
    precision
        Working precision (module docstring).
    """

    data_power: Float[Tensor, " b"]
    ctf_power: Float[Tensor, "b k"]
    shifted: Float[Tensor, "b t k2"]
    precision: str


def data_terms(
    data: Complex[Tensor, "b k"],
    ctf: Float[Tensor, "b k"],
    weight: Float[Tensor, "b k"],
    phases: Complex[Tensor, "t k"] | Complex[Tensor, "b t k"],
    *,
    precision: str = "float32",
) -> DataTerms:
    """The particle side of ``squared_differences``, to pair with many orientation chunks."""
    real, cplx = working_dtypes(precision)
    x = data.to(cplx)
    w = weight.to(real)
    k_ctf = ctf.to(real)
    data_power = (w * squared_magnitude(x)).sum(-1)
    z = (w * k_ctf * x)[:, None, :] * phases.to(cplx)  # (b, t, k)
    return DataTerms(data_power, w * k_ctf.square(), as_real_pairs(z), precision)


def orientation_terms(
    terms: DataTerms, projections: Complex[Tensor, "r k"] | Complex[Tensor, "b r k"]
) -> tuple[Float[Tensor, "b r"], Float[Tensor, "b t r"]]:
    """``(sum w K^2 |P|^2 (b, r), sum Re(conj(Z) P) (b, t, r))`` for one chunk of orientations."""
    _, cplx = working_dtypes(terms.precision)
    p = projections.to(cplx)
    p_power = squared_magnitude(p)
    p_pairs = as_real_pairs(p)
    b, t, _ = terms.shifted.shape
    with matmul_precision(terms.precision):
        if p.dim() == 2:  # shared orientations: one [(b t) x 2k] @ [2k x r] product
            ref_power = terms.ctf_power @ p_power.T
            cross = (terms.shifted.reshape(b * t, -1) @ p_pairs.T).reshape(b, t, -1)
        else:  # per-particle orientations: batched over b
            ref_power = (terms.ctf_power[:, None, :] @ p_power.transpose(1, 2)).squeeze(1)
            cross = terms.shifted @ p_pairs.transpose(1, 2)
    return ref_power, cross


CROSS_BLOCK = 8192
"""``per_particle_cross``'s block of the real coefficient axis: batched products over a
few particles walk their long ``2k`` with one thread block per output tile, so each is
cut into blocks of this many, one batched product per particle over its blocks."""


def per_particle_cross(
    shifted: Float[Tensor, "b t k2"],
    projections: Float[Tensor, "b r k2"],
    *,
    precision: str = "float32",
    block: int | None = None,
) -> Float[Tensor, "b t r"]:
    """``sum_k Re(conj(Z) P)`` of each particle's own rows: ``Z[b] @ P[b]^T``, as real pairs.

    With at least two whole blocks in ``2k`` (``block`` default ``CROSS_BLOCK``),
    the first ``blocks * block`` coefficients are a batch of ``blocks`` products
    per particle on strided views (no copies), summed, and the rest is one
    product batched over the particles; otherwise one product batched over the
    particles.
    """
    block = CROSS_BLOCK if block is None else block
    if block <= 0:
        raise ValueError(f"block must be positive, got {block}")
    b, _, n = shifted.shape
    blocks = n // block
    with matmul_precision(precision):
        if blocks <= 1:
            return shifted @ projections.transpose(1, 2)
        main = blocks * block
        if main < n:
            out = shifted[:, :, main:] @ projections[:, :, main:].transpose(1, 2)
        else:
            out = shifted.new_zeros((b, shifted.shape[1], projections.shape[1]))
        for i in range(b):
            z = shifted[i, :, :main].unflatten(-1, (blocks, block)).transpose(0, 1)
            p = projections[i, :, :main].unflatten(-1, (blocks, block)).transpose(0, 1)
            out[i] += (z @ p.transpose(1, 2)).sum(dim=0)
    return out


def _terms(
    data: Tensor,
    ctf: Tensor,
    weight: Tensor,
    projections: Tensor,
    phases: Tensor,
    precision: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(sum w |X|^2 (b,), sum w K^2 |P|^2 (b, r), sum Re(conj(Z) P) (b, t, r))``."""
    terms = data_terms(data, ctf, weight, phases, precision=precision)
    return (terms.data_power, *orientation_terms(terms, projections))


def scores_from_terms(
    terms: DataTerms,
    projections: Complex[Tensor, "r k"] | Complex[Tensor, "b r k"],
    *,
    cross_correlation: bool = False,
) -> Float[Tensor, "b t r"]:
    """``squared_differences`` (or the cross-correlation) from precomputed ``DataTerms``.

    For the cross-correlation the terms must have been made with ``weight`` 1.
    """
    ref_power, cross = orientation_terms(terms, projections)
    return scores_from_cross(
        terms.data_power, ref_power, cross, cross_correlation=cross_correlation
    )


def scores_from_cross(
    data_power: Float[Tensor, " b"],
    ref_power: Float[Tensor, "b r"],
    cross: Float[Tensor, "b t r"],
    *,
    cross_correlation: bool = False,
) -> Float[Tensor, "b t r"]:
    """The score from its three sums (module docstring); ``cross`` may be overwritten."""
    if cross_correlation:
        return _cc(data_power, ref_power, cross)
    return _combine(data_power, ref_power, cross)


def _combine(data_power: Tensor, ref_power: Tensor, cross: Tensor) -> Tensor:
    """``data_power + ref_power - 2 cross`` in place of ``cross``."""
    return cross.mul_(-2.0).add_(ref_power[:, None, :]).add_(data_power[:, None, None])


def squared_differences(
    data: Complex[Tensor, "b k"],
    ctf: Float[Tensor, "b k"],
    weight: Float[Tensor, "b k"],
    projections: Complex[Tensor, "r k"],
    phases: Complex[Tensor, "t k"],
    *,
    precision: str = "float32",
) -> Float[Tensor, "b t r"]:
    """``sum_k w |K P[r] - X S[t]|^2`` for every particle, translation and orientation.

    Parameters
    ----------
    data
        Window coefficients ``X`` of each particle (shifted by its origin).
    ctf
        ``K`` of the model ``X = K P`` (CTF, or CTF^2 for premultiplied data).
    weight
        ``w``: ``1 / (2 sigma2)`` (divided by the multiplicity for RELION-4), 0 to ignore.
    projections
        ``P``: reference projections (slices or rotated volumes) on the window.
    phases
        ``S``: ``window_phases`` of the trial translations.
    precision
        ``"float32"``, ``"float64"`` or ``"tf32"`` (module docstring).
    """
    data_power, ref_power, cross = _terms(data, ctf, weight, projections, phases, precision)
    return _combine(data_power, ref_power, cross)


def squared_differences_per_particle(
    data: Complex[Tensor, "b k"],
    ctf: Float[Tensor, "b k"],
    weight: Float[Tensor, "b k"],
    projections: Complex[Tensor, "b r k"],
    phases: Complex[Tensor, "b t k"],
    *,
    precision: str = "float32",
) -> Float[Tensor, "b t r"]:
    """``squared_differences`` with each particle's own orientations and translations.

    ``projections[b]`` and ``phases[b]`` are particle ``b``'s lists (pad with
    anything and mask the scores); shared phases may be passed ``expand``-ed.
    """
    data_power, ref_power, cross = _terms(data, ctf, weight, projections, phases, precision)
    return _combine(data_power, ref_power, cross)


def _cc(data_power: Tensor, ref_power: Tensor, cross: Tensor) -> Tensor:
    tiny = torch.finfo(cross.dtype).tiny
    norm = (
        ref_power.clamp_min(tiny).sqrt()[:, None, :]
        * data_power.clamp_min(tiny).sqrt()[:, None, None]
    )
    return -cross / norm


def cross_correlation_scores(
    data: Complex[Tensor, "b k"],
    ctf: Float[Tensor, "b k"],
    projections: Complex[Tensor, "r k"],
    phases: Complex[Tensor, "t k"],
    *,
    weight: Float[Tensor, "b k"] | None = None,
    precision: str = "float32",
) -> Float[Tensor, "b t r"]:
    """Negative normalised cross-correlation (RELION's ``--firstiter_cc`` score; lower is better).

    ``-sum w Re(K P conj(X S)) / (sqrt(sum w K^2 |P|^2) sqrt(sum w |X|^2))``, in
    [-1, 1]; ``weight`` None means 1 (RELION's). A zero projection scores 0.
    """
    w = torch.ones_like(ctf) if weight is None else weight
    return _cc(*_terms(data, ctf, w, projections, phases, precision))


def cross_correlation_per_particle(
    data: Complex[Tensor, "b k"],
    ctf: Float[Tensor, "b k"],
    projections: Complex[Tensor, "b r k"],
    phases: Complex[Tensor, "b t k"],
    *,
    weight: Float[Tensor, "b k"] | None = None,
    precision: str = "float32",
) -> Float[Tensor, "b t r"]:
    """``cross_correlation_scores`` with each particle's own orientations and translations."""
    w = torch.ones_like(ctf) if weight is None else weight
    return _cc(*_terms(data, ctf, w, projections, phases, precision))
