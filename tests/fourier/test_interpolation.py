"""The fused trilinear interpolation equals the plain 8-corner loop; splatting equals the
point-by-point sum."""

import itertools
import math

import pytest
import torch

from cryorefine.fourier import interpolation
from cryorefine.fourier.interpolation import _interpolate, _interpolate_corners, _splat_tables

U32 = 2.0**-24  # float32 unit roundoff
U64 = 2.0**-53


@pytest.mark.parametrize(("dtype", "unit"), [(torch.float32, U32), (torch.float64, U64)])
@pytest.mark.parametrize("p", [10, 16])
def test_fused_interpolation_equals_the_corner_loop_everywhere_in_the_box(device, dtype, unit, p):
    gen = torch.Generator().manual_seed(p)
    ph = p // 2 + 1
    table = torch.randn(p * p * ph, 2, generator=gen, dtype=dtype).to(device)
    # points over the whole box, x of both signs (Friedel folding), the y/z edges
    # (wrap-around) and |q_x| beyond the half-grid (zero weight)
    q = (torch.rand(4000, 3, generator=gen, dtype=dtype) - 0.5) * p
    q[:50, 1] = p / 2 - torch.rand(50, generator=gen, dtype=dtype)  # last plane: wraps
    q[50:100, 0] = -q[50:100, 0].abs()
    q[100:110] = torch.round(q[100:110])  # grid points
    q[110:140, 0] = p / 2 + torch.rand(30, generator=gen, dtype=dtype)  # upper x corner left out
    q = q.to(device)
    fused = _interpolate(table, q, p, conj_channel=1)
    plain = _interpolate_corners(table, q, p, conj_channel=1)
    # The fused kernel normalises each coordinate to [-1, 1] and back (a few
    # roundings of a value below p): a coordinate error of ~4 p u moves a weight by
    # as much, and the value by at most that times the sum of |corner values|
    # (8 max|table|); the sums themselves differ by ~8 u max|table|.
    bound = (4 * p * 8 + 8) * unit * table.abs().max().item()
    torch.testing.assert_close(fused, plain, rtol=0.0, atol=bound)


def _splat_point_by_point(
    shape: tuple[int, int], q: torch.Tensor, values: torch.Tensor, p: int, conj_channel: int | None
) -> tuple[torch.Tensor, int]:
    """The obvious splat in float64 Python: each point folded (``q_x < 0``: ``-q``, the
    ``conj_channel`` negated), its 8 corners wrapped along y and z, those beyond
    ``kx = p // 2`` left out. Also the most points any voxel received."""
    ph = p // 2 + 1
    grid = torch.zeros((p, p, ph, shape[1]), dtype=torch.float64)
    count = torch.zeros((p, p, ph), dtype=torch.int64)
    for point, value in zip(q.double().tolist(), values.double().tolist(), strict=True):
        if point[0] < 0:
            point = [-c for c in point]
            if conj_channel is not None:
                value[conj_channel] = -value[conj_channel]
        base = [math.floor(c) for c in point]
        frac = [c - b for c, b in zip(point, base, strict=True)]
        for dz, dy, dx in itertools.product((0, 1), repeat=3):
            ix = base[0] + dx
            if ix >= ph:
                continue
            iy, iz = (base[1] + dy + p // 2) % p, (base[2] + dz + p // 2) % p
            w = (frac[0] if dx else 1 - frac[0]) * (frac[1] if dy else 1 - frac[1])
            w *= frac[2] if dz else 1 - frac[2]
            grid[iz, iy, ix] += torch.tensor([w * v for v in value], dtype=torch.float64)
            count[iz, iy, ix] += 1
    return grid.reshape(shape), int(count.max())


@pytest.mark.parametrize(("dtype", "unit"), [(torch.float32, U32), (torch.float64, U64)])
@pytest.mark.parametrize("p", [10, 16])
def test_splatting_data_and_weights_equals_the_point_by_point_sum(device, dtype, unit, p):
    gen = torch.Generator().manual_seed(100 + p)
    ph = p // 2 + 1
    n = 600
    q = (torch.rand(n, 3, generator=gen, dtype=torch.float64) - 0.5) * p
    q[:40, 1] = p / 2 - torch.rand(40, generator=gen, dtype=torch.float64)  # last plane: wraps
    q[40:200, 0] = -q[40:200, 0].abs()  # folded
    q[200:210] = torch.round(q[200:210])  # grid points
    q[210:240, 0] = p / 2 + torch.rand(30, generator=gen, dtype=torch.float64)  # upper x corner
    q = q.to(dtype)  # beyond the half-grid: left out
    data = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    weight = torch.rand(n, 1, generator=gen, dtype=torch.float64)
    tables = [torch.zeros(p * p * ph, c, dtype=dtype, device=device) for c in (2, 1)]
    _splat_tables(
        q.to(device), p, [(tables[0], data.to(device), 1), (tables[1], weight.to(device), None)]
    )
    for table, values, conj in zip(tables, (data, weight), (1, None), strict=True):
        plain, most = _splat_point_by_point(tuple(table.shape), q, values, p, conj)
        # Each of a voxel's ``most`` terms w v: the values cast (u), 1 - frac (u), the
        # weight's two products (2u) and w v (u) rounded, then summed ((most + 3) u,
        # Higham 2002, sec. 4.2): (most + 8) u times the sum of |w v| <= most max|v|.
        bound = (most + 8) * unit * most * values.abs().max().item()
        torch.testing.assert_close(table.cpu().double(), plain, rtol=0.0, atol=bound)


def test_points_in_chunks_get_the_values_they_get_in_one_batch(monkeypatch):
    """``_interpolate`` hands many points to ``grid_sample`` as a batch of chunks (the CPU's
    threads share the batch); a count that is no multiple of the chunk is padded and cut."""
    gen = torch.Generator().manual_seed(7)
    p = 16
    table = torch.randn(p * p * (p // 2 + 1), 2, generator=gen, dtype=torch.float64)
    q = (torch.rand(5, 4_003, 3, generator=gen, dtype=torch.float64) - 0.5) * p
    monkeypatch.setattr(interpolation, "_MIN_CHUNK_POINTS", 1_000)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    chunked = _interpolate(table, q, p, conj_channel=1)  # 8 chunks of 2,502 points
    monkeypatch.setattr(interpolation, "_MIN_CHUNK_POINTS", 10**9)
    whole = _interpolate(table, q, p, conj_channel=1)  # one batch
    assert chunked.shape == whole.shape == (5, 4_003, 2)
    assert torch.equal(chunked, whole)
    plain = _interpolate_corners(table, q, p, conj_channel=1)
    bound = (4 * p * 8 + 8) * U64 * table.abs().max().item()  # as the test above
    torch.testing.assert_close(chunked, plain, rtol=0.0, atol=bound)
