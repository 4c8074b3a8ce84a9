"""likelihood.sums: back-projection, noise/scale and offset sums as matrix products."""

import math

import pytest
import torch
from likelihood_cases import U32, U64

from cryorefine.fourier import insert_slices, insert_volumes, zero_accumulators
from cryorefine.geometry import euler_to_matrix
from cryorefine.likelihood import (
    backprojection_inputs,
    backprojection_sums,
    fourier_window,
    insert_backprojection,
    offset_moments,
    shell_matrix,
    shell_sums,
)


def _gamma(n: int, u: float) -> float:
    return n * u / (1 - n * u)


def _inputs(gen, b=3, t=4, r=5, k=29):
    weights = torch.rand(b, t, r, generator=gen, dtype=torch.float64)
    weights /= weights.sum(dim=(1, 2), keepdim=True)
    data = torch.randn(b, k, dtype=torch.complex128, generator=gen)
    ctf = torch.randn(b, k, dtype=torch.float64, generator=gen)
    inv_sigma2 = torch.rand(b, k, generator=gen, dtype=torch.float64) + 0.5
    phases = torch.exp(2j * math.pi * torch.rand(b, t, k, generator=gen, dtype=torch.float64))
    projections = torch.randn(b, r, k, dtype=torch.complex128, generator=gen)
    return weights, data, ctf, inv_sigma2, phases, projections


def _slow_backprojection(weights, y, v, phases, rows, n_rows):
    b, t, r = weights.shape
    data = torch.zeros(n_rows, y.shape[1], dtype=torch.complex128)
    weight = torch.zeros(n_rows, y.shape[1], dtype=torch.float64)
    for i in range(b):
        for m in range(r):
            row = rows[i][m]
            for j in range(t):
                data[row] += weights[i, j, m] * y[i] * phases[i, j]
                weight[row] += weights[i, j, m] * v[i]
    return data, weight


@pytest.mark.parametrize("premultiplied", [False, True])
def test_backprojection_sums_equal_the_slow_loop(device, premultiplied):
    gen = torch.Generator().manual_seed(0)
    weights, data, ctf, inv_sigma2, phases, _ = _inputs(gen)
    y, v = backprojection_inputs(data, ctf, inv_sigma2, ctf_premultiplied=premultiplied)
    want_y = data * inv_sigma2 if premultiplied else ctf * data * inv_sigma2
    want_v = ctf * inv_sigma2 if premultiplied else ctf**2 * inv_sigma2
    torch.testing.assert_close(y, want_y, rtol=4 * U64, atol=0)
    torch.testing.assert_close(v, want_v, rtol=4 * U64, atol=0)
    rows = torch.tensor([[0, 1, 2, 3, 4], [2, 5, 6, 0, 1], [6, 6, 3, 2, 0]])  # repeats add up
    got_data, got_weight = backprojection_sums(
        *(x.to(device) for x in (weights, y, v, phases)),
        rows=rows.to(device),
        n_rows=7,
        precision="float64",
    )
    want_data, want_weight = _slow_backprojection(weights, y, v, phases, rows.tolist(), 7)
    # sums of b t r = 60 terms of magnitude w |Y| (resp. w |V|): error <= gamma_64 * sum
    scale = (weights.sum(1).reshape(-1) @ torch.ones(15, dtype=torch.float64)) * max(
        y.abs().max().item(), v.abs().max().item()
    )
    atol = _gamma(64, U64) * scale.item()
    torch.testing.assert_close(got_data.cpu(), want_data, rtol=0, atol=atol)
    torch.testing.assert_close(got_weight.cpu(), want_weight, rtol=0, atol=atol)


def test_shared_orientations_are_one_product_over_particles_and_translations():
    gen = torch.Generator().manual_seed(1)
    weights, data, ctf, inv_sigma2, phases, _ = _inputs(gen)
    y, v = backprojection_inputs(data, ctf, inv_sigma2, ctf_premultiplied=False)
    shared = backprojection_sums(weights, y, v, phases, precision="float32")
    rows = torch.arange(5).expand(3, -1)
    want = _slow_backprojection(weights, y, v, phases, rows.tolist(), 5)
    scale = max(y.abs().max().item(), v.abs().max().item())
    for got, ref in zip(shared, want, strict=True):
        # float32: inputs rounded (u each) and 12-term sums: <= gamma_16(u32) * 12 * scale
        torch.testing.assert_close(got.to(ref.dtype), ref, rtol=0, atol=_gamma(16, U32) * scale)


def _slow_shell_sums(weights, data, ctf, projections, phases, shells, n_shells):
    b, t, r = weights.shape
    out = [torch.zeros(b, n_shells, dtype=torch.float64) for _ in range(3)]
    for i in range(b):
        for j in range(t):
            for m in range(r):
                ref = ctf[i] * projections[i, m]
                img = data[i] * phases[i, j]
                w = weights[i, j, m].item()
                for q, shell in enumerate(shells):
                    out[0][i, shell] += w * abs(ref[q] - img[q]) ** 2
                    out[1][i, shell] += w * (ref[q] * img[q].conj()).real
                    out[2][i, shell] += w * abs(ref[q]) ** 2
    return out


@pytest.mark.parametrize("shared", [False, True])
def test_shell_sums_equal_the_slow_loop(device, shared):
    gen = torch.Generator().manual_seed(2)
    window = fourier_window(10, 2, device=torch.device("cpu"), include_dc=True)
    k = window.count
    weights, data, ctf, _, phases, projections = _inputs(gen, k=k)
    if shared:
        projections = projections[0]
    got = shell_sums(
        weights.to(device),
        data.to(device),
        ctf.to(device),
        projections.to(device),
        phases.to(device),
        shell_matrix(window, 6).to(device),
        precision="float64",
    )
    full = projections if not shared else projections.expand(3, -1, -1)
    want = _slow_shell_sums(weights, data, ctf, full, phases, window.shell.tolist(), 6)
    # the expanded square: three sums of t r k terms, each bounded by the magnitude sum
    scale = (data.abs() + ctf.abs() * full.abs().amax(1)).square().sum().item()
    atol = _gamma(4 * 5 * k + 10, U64) * scale
    for name, ref in zip(
        ("residual_power", "signal_product", "reference_power"), want, strict=True
    ):
        torch.testing.assert_close(getattr(got, name).cpu(), ref, rtol=0, atol=atol)


def test_offset_moments_equal_the_slow_loop():
    gen = torch.Generator().manual_seed(3)
    weights = torch.rand(2, 5, generator=gen, dtype=torch.float64)
    origins = torch.randn(2, 3, generator=gen, dtype=torch.float64)
    translations = torch.randn(2, 5, 3, generator=gen, dtype=torch.float64)
    priors = torch.randn(2, 3, generator=gen, dtype=torch.float64)
    got = offset_moments(weights, origins, translations, priors)
    for i in range(2):
        want = sum(
            weights[i, j].item() * ((origins[i] + translations[i, j] - priors[i]) ** 2).sum().item()
            for j in range(5)
        )
        assert abs(got[i].item() - want) <= 20 * U64 * abs(want)


@pytest.mark.parametrize("ndim", [2, 3])
def test_insert_backprojection_scatters_the_window_and_inserts(ndim):
    gen = torch.Generator().manual_seed(4)
    size = 8 if ndim == 2 else 6
    window = fourier_window(
        size, ndim, device=torch.device("cpu"), include_dc=True, include_redundant=True
    )
    data = torch.randn(5, window.count, dtype=torch.complex128, generator=gen)
    weight = torch.rand(5, window.count, generator=gen, dtype=torch.float64)
    rotations = euler_to_matrix(torch.rand(5, 3, generator=gen, dtype=torch.float64) * 90)
    got = zero_accumulators(size, device=torch.device("cpu"))
    insert_backprojection(
        data,
        weight,
        rotations,
        window,
        accumulator_data=got[0],
        accumulator_weight=got[1],
        max_bytes=1,
    )  # one orientation a chunk
    want = zero_accumulators(size, device=torch.device("cpu"))
    shape = (5,) + (size,) * (ndim - 1) + (size // 2 + 1,)
    grid_d = torch.zeros(5, math.prod(shape[1:]), dtype=torch.complex128)
    grid_w = torch.zeros(5, math.prod(shape[1:]), dtype=torch.float64)
    grid_d[:, window.flat_index], grid_w[:, window.flat_index] = data, weight
    insert = insert_slices if ndim == 2 else insert_volumes
    insert(
        grid_d.reshape(shape),
        grid_w.reshape(shape),
        rotations,
        accumulator_data=want[0],
        accumulator_weight=want[1],
    )
    # the same additions, in another order (chunks): float64 sums of 5 terms per voxel
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=8 * 5 * U64 * data.abs().max())
    torch.testing.assert_close(got[1], want[1], rtol=0, atol=8 * 5 * U64)
