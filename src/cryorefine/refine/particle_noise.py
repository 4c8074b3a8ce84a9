"""Background noise of each particle drawn from (seed, particle row) alone.

The E-step fills the masked-out background of each image with noise of the
current spectrum (RELION without ``--zero_mask``). Drawn from one running
generator, that noise would depend on which particles share a batch, in which
order the batches come, and on which rank: a parallel run would then differ
from a single-process one. Here every number is a function of the iteration's
seed, the particle's row in the particle table and the number's index:
a counter-based generator (SplitMix64's finaliser applied to a counter, as in
Steele, Lea & Flood 2014) feeding the Box-Muller transform. The draws are
therefore the same whatever the batch, the rank or the device (integer
arithmetic is exact everywhere; ``log``/``cos`` may differ in the last bit
between CPU and GPU).
"""

import math

import torch
from jaxtyping import Float, Int
from torch import Tensor

from cryorefine.fourier import from_fourier, rfft_shape, shell_values_to_grid

__all__ = ["counter_normals", "counter_uniforms", "iteration_noise_seed", "particle_noise_images"]

# SplitMix64 constants written as signed 64-bit integers (torch has no uint64 shifts).
_GAMMA = 0x9E3779B97F4A7C15 - (1 << 64)
_MIX_1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_MIX_2 = 0x94D049BB133111EB - (1 << 64)


def _shift_right(x: Tensor, bits: int) -> Tensor:
    """Logical right shift of int64 (``>>`` is arithmetic on signed integers)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _finalise(z: Tensor) -> Tensor:
    """SplitMix64's output function: a bijection of 64-bit words (wrapping products)."""
    z = (z ^ _shift_right(z, 30)) * _MIX_1
    z = (z ^ _shift_right(z, 27)) * _MIX_2
    return z ^ _shift_right(z, 31)


def _to_int64(value: int) -> int:
    """``value`` modulo 2**64, as a signed 64-bit integer."""
    value %= 1 << 64
    return value - (1 << 64) if value >= 1 << 63 else value


def counter_uniforms(keys: Int[Tensor, " b"], count: int, *, seed: int) -> Float[Tensor, "b c"]:
    """Uniform numbers in (0, 1), float64, that depend only on (seed, key, index).

    Row ``i`` holds ``count`` numbers for ``keys[i]``; the same key gives the
    same row whatever else is in ``keys``. Each number is ``(w >> 11 + 1/2) /
    2**53`` for the 64-bit word ``w = mix(mix(seed' + key * gamma) + (j + 1) *
    gamma)``, ``mix`` being SplitMix64's finaliser: 53 random bits, never 0 or 1.
    Follows the device of ``keys``.
    """
    stream = _finalise(keys.to(torch.int64) * _GAMMA + _to_int64(seed * 0x2545F4914F6CDD1D))
    index = torch.arange(1, count + 1, dtype=torch.int64, device=keys.device)
    words = _finalise(stream[:, None] + index[None, :] * _GAMMA)
    return (_shift_right(words, 11).to(torch.float64) + 0.5) * 2.0**-53


def counter_normals(keys: Int[Tensor, " b"], count: int, *, seed: int) -> Float[Tensor, "b c"]:
    """Standard normal numbers, float64, that depend only on (seed, key, index).

    Box-Muller on pairs of ``counter_uniforms``: numbers ``2j`` and ``2j + 1``
    of a row are ``r cos(2 pi u2)`` and ``r sin(2 pi u2)`` with
    ``r = sqrt(-2 ln u1)``, ``(u1, u2)`` the row's uniforms ``2j``, ``2j + 1``.
    """
    pairs = (count + 1) // 2
    uniforms = counter_uniforms(keys, 2 * pairs, seed=seed).reshape(-1, pairs, 2)
    radius = torch.sqrt(-2.0 * torch.log(uniforms[..., 0]))
    angle = (2.0 * math.pi) * uniforms[..., 1]
    normals = torch.stack((radius * torch.cos(angle), radius * torch.sin(angle)), dim=-1)
    return normals.reshape(keys.shape[0], 2 * pairs)[:, :count]


def particle_noise_images(
    sigma2_noise: Float[Tensor, "b s"],
    rows: Int[Tensor, " b"],
    box_size: int,
    ndim: int,
    *,
    seed: int,
) -> Float[Tensor, "b ..."]:
    """Real-space Gaussian noise with each particle's spectrum, ``(b, n, .., n)``.

    As ``fourier.noise_images`` (real and imaginary parts of each coefficient of
    shell ``i`` drawn from ``N(0, sigma2_noise[i])``, 0 beyond the curve,
    unnormalised inverse transform), with the draws of particle ``rows[j]``
    taken from ``counter_normals`` under ``seed``. Follows the device of
    ``sigma2_noise``.
    """
    std = shell_values_to_grid(torch.sqrt(sigma2_noise.clamp(min=0.0)), box_size, ndim)
    shape = (*rfft_shape(box_size, ndim), 2)
    draws = counter_normals(rows.to(sigma2_noise.device), math.prod(shape), seed=seed)
    draws = draws.to(sigma2_noise.dtype).reshape(rows.shape[0], *shape)
    return from_fourier(torch.view_as_complex(draws) * std, box_size, ndim)


def iteration_noise_seed(random_seed: int, iteration: int) -> int:
    """The seed of an iteration's background noise: a function of ``--random_seed`` and it only.

    Nothing is drawn from the run's generator, so every rank derives the same
    seed and the generator's sequence does not depend on ``--zero_mask``.
    """
    key = torch.tensor([max(random_seed, 0)], dtype=torch.int64)
    return int(_finalise(key * _GAMMA + iteration)[0])
