"""One batch's E-step result added to its half set's noise sums (``refine.half_pass``).

RELION sums each particle's weighted squared difference per shell up to the current
size; beyond it, where the E-step compared nothing, the particle's own power times
its weight stands in (``exp_wsum_norm_correction``, REFINE_SPEC §4.5). Once the
current size reaches the box every shell comes from the E-step.
"""

import itertools
import math

import pytest
import torch

from cryorefine.likelihood import fourier_window
from cryorefine.likelihood.plan import BackprojectionSums, ExpectationResult
from cryorefine.likelihood.sums import ShellSums
from cryorefine.refine.half_pass import _add_batch
from cryorefine.refine.half_sums import HalfSetSums
from cryorefine.tomo.particle_batches import ParticleBatch

N = 8
SHELLS = N // 2 + 1
GROUPS = torch.tensor([0, 1, 0])


def _slow_shell_power(image: torch.Tensor) -> list[float]:
    """``sum |F|^2`` per shell ``round(|k|)`` of a half-complex ``(n, n // 2 + 1)`` image in
    float64, one coefficient at a time; the Friedel mates ``kx = 0, ky < 0`` left out."""
    sums = [0.0] * SHELLS
    for y, x in itertools.product(range(N), range(N // 2 + 1)):
        ky = y if y <= N // 2 else y - N
        if x == 0 and ky < 0:
            continue
        shell = math.floor(math.hypot(ky, x) + 0.5)
        if shell < SHELLS:
            sums[shell] += abs(complex(image[y, x])) ** 2
    return sums


def _batch_sums(
    current_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, HalfSetSums, torch.Tensor]:
    """Three particles' E-step residuals and weights, and their masked images, added at
    ``current_size``: those three, the half set's sums and the per-particle totals returned."""
    gen = torch.Generator().manual_seed(31)
    b = GROUPS.shape[0]

    def zeros(*shape: int) -> torch.Tensor:
        return torch.zeros(*shape, dtype=torch.float64)

    residual = torch.rand(b, SHELLS, generator=gen, dtype=torch.float64)
    weight_sums = 0.5 + torch.rand(b, generator=gen, dtype=torch.float64)
    eye = torch.eye(3, dtype=torch.float64).expand(b, 3, 3)
    result = ExpectationResult(
        rotations=eye, angles_deg=zeros(b, 3), origins_px=zeros(b, 2), pmax=zeros(b),
        significant_samples=torch.ones(b, dtype=torch.int64), log_likelihood=zeros(b),
        weight_sums=weight_sums, shell_sums=ShellSums(residual, zeros(b, SHELLS), zeros(b, SHELLS)),
        multiplicity_sums=None, offset_moments_px2=zeros(b), direction_mass=zeros(3),
        backprojection=BackprojectionSums(
            rotations=eye[:0], data=torch.zeros(0, 1, dtype=torch.complex64),
            weight=torch.zeros(0, 1), window=fourier_window(N, 2, device=torch.device("cpu")),
        ),
    )  # fmt: skip
    shape = (b, N, N // 2 + 1)
    masked = torch.complex(torch.randn(shape, generator=gen), torch.randn(shape, generator=gen))
    batch = ParticleBatch(
        rows=torch.arange(b), data_ft=masked, ctf=torch.ones(shape), multiplicity=None,
        ctf_premultiplied=False, rotations=eye, origins_px=zeros(b, 2),
        finite=torch.ones(b, dtype=torch.bool),
    )  # fmt: skip
    sums = HalfSetSums(
        data=torch.zeros(1), weight=torch.zeros(1), noise=zeros(2, SHELLS), multiplicity=None,
        weight_per_group=zeros(2), offset_moments_angst2=0.0, direction_mass=zeros(3),
        pmax_sum=0.0, count=0, scale_sums=zeros(2, 2, SHELLS),
    )  # fmt: skip
    totals = _add_batch(
        sums, result, batch, masked, GROUPS, torch.zeros(b, dtype=torch.int64), None,
        current_size=current_size, shells_for_scales=torch.ones(SHELLS, dtype=torch.bool),
    )  # fmt: skip
    return residual, weight_sums, masked, sums, totals


@pytest.mark.parametrize("current_size", [4, 6])
def test_shells_beyond_the_current_size_take_the_images_power_times_its_weight(current_size):
    residual, weight_sums, masked, sums, totals = _batch_sums(current_size)
    want = residual.clone()
    for p in range(want.shape[0]):
        power = _slow_shell_power(masked[p])
        for shell in range(current_size // 2 + 1, SHELLS):
            want[p, shell] = weight_sums[p] * power[shell]
    # |F|^2 of the complex64 image is taken in float32: abs within 2 units of 2^-24 (its
    # rounding and hypot's), the square one more, summed in float64 over positive terms
    rtol = 6 * 2.0**-24
    torch.testing.assert_close(totals, want.sum(dim=1), rtol=rtol, atol=0)
    per_group = torch.zeros(2, SHELLS, dtype=torch.float64).index_add_(0, GROUPS, want)
    torch.testing.assert_close(sums.noise, per_group, rtol=rtol, atol=0)
    assert not torch.equal(want[:, current_size // 2 + 1 :], residual[:, current_size // 2 + 1 :])


def test_at_the_full_box_every_shell_is_the_e_steps_residual():
    residual, weight_sums, _, sums, totals = _batch_sums(N)
    per_group = torch.zeros(2, SHELLS, dtype=torch.float64).index_add_(0, GROUPS, residual)
    assert torch.equal(sums.noise, per_group)
    assert torch.equal(totals, residual.sum(dim=1))
    weights = torch.zeros(2, dtype=torch.float64).index_add_(0, GROUPS, weight_sums)
    assert torch.equal(sums.weight_per_group, weights)
