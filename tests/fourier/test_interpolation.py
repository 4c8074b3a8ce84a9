"""The fused trilinear interpolation equals the plain 8-corner loop."""

import pytest
import torch

from cryorefine.fourier.interpolation import _interpolate, _interpolate_corners

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
    q = q.to(device)
    fused = _interpolate(table, q, p, conj_channel=1)
    plain = _interpolate_corners(table, q, p, conj_channel=1)
    # The fused kernel normalises each coordinate to [-1, 1] and back (a few
    # roundings of a value below p): a coordinate error of ~4 p u moves a weight by
    # as much, and the value by at most that times the sum of |corner values|
    # (8 max|table|); the sums themselves differ by ~8 u max|table|.
    bound = (4 * p * 8 + 8) * unit * table.abs().max().item()
    torch.testing.assert_close(fused, plain, rtol=0.0, atol=bound)
