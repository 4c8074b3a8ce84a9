"""Insertion of tilt transforms as central slices: a slow float64 loop, and analytic cases.

``insert_tilt_images`` computes ``D(k) = (1/n) sum_f vis_f w_f(k) Z_f((R_f k)_xy)`` with
the slab weight ``w_f = max(0, 1 - |k . n_f|)`` and bilinear ``Z_f`` (Friedel mate for
``u_x < 0``). The reference below evaluates that formula voxel by voxel in Python.
"""

import math

import pytest
import torch

from cryorefine.fourier import tilt_series_ctf_weights
from cryorefine.fourier.conventions import frequency_indices
from cryorefine.geometry import euler_to_matrix
from cryorefine.tomo import insert_tilt_images, slab_insertion

F64 = torch.float64
U = 2.0**-53


def _rotations(count: int, gen: torch.Generator) -> torch.Tensor:
    angles = torch.rand(count, 3, generator=gen, dtype=F64) * torch.tensor([360.0, 180, 360])
    return euler_to_matrix(angles)


def _bilinear(image: torch.Tensor, u: torch.Tensor, n: int) -> complex:
    """Value of a (n, n // 2 + 1) half-complex image at frequency u, the obvious way."""
    x, y = float(u[0]), float(u[1])
    flip = x < 0
    if flip:
        x, y = -x, -y
    x0, y0 = math.floor(x), math.floor(y)
    fx, fy = x - x0, y - y0
    total = 0j
    for dx, wx in ((0, 1 - fx), (1, fx)):
        for dy, wy in ((0, 1 - fy), (1, fy)):
            if x0 + dx <= n // 2:
                total += wx * wy * complex(image[(y0 + dy) % n, x0 + dx])
    return total.conjugate() if flip else total


def _slow_insert(images, rotations, visible) -> torch.Tensor:
    b, f, n = images.shape[0], images.shape[1], images.shape[2]
    k_grid = frequency_indices(n, 3).to(F64)  # (n, n, nh, 3)
    out = torch.zeros(b, n, n, n // 2 + 1, dtype=torch.complex128)
    for particle in range(b):
        for tilt in range(f):
            if not visible[particle, tilt]:
                continue
            r = rotations[particle, tilt]
            for iz in range(n):
                for iy in range(n):
                    for ix in range(n // 2 + 1):
                        k = k_grid[iz, iy, ix]
                        w = 1.0 - abs(float(r[2] @ k))
                        if w > 0:
                            value = _bilinear(images[particle, tilt], r[:2] @ k, n)
                            out[particle, iz, iy, ix] += w * value / n
    return out


def _bound(images: torch.Tensor, f: int) -> float:
    # Each voxel: <= 4 f terms |w Z / n| <= max|Z|; products and sums in float64
    # (Higham 3.1: relative error <= (4 f + 2) u per sum), bilinear weights from
    # (R k) computed in another order (relative difference <= 4 u each).
    return (4 * f) * (4 * f + 6) * U * float(images.abs().max())


@pytest.mark.parametrize("shared", [True, False], ids=["shared rotations", "own rotations"])
def test_insertion_matches_the_slow_float64_loop(shared, device):
    gen = torch.Generator().manual_seed(11)
    b, f, n = 2, 3, 8
    images = torch.randn(b, f, n, n // 2 + 1, generator=gen, dtype=torch.complex128)
    if shared:
        rotations = _rotations(f, gen)[None].expand(b, f, 3, 3)
    else:
        rotations = _rotations(b * f, gen).reshape(b, f, 3, 3)
    visible = torch.rand(b, f, generator=gen) > 0.25
    got = insert_tilt_images(images.to(device), rotations.to(device), visible.to(device))
    want = _slow_insert(images, rotations, visible)
    torch.testing.assert_close(got.cpu(), want, rtol=0.0, atol=_bound(images, f))


def test_constant_slices_give_the_multiplicity_of_ctf3d_over_n():
    # Z = 1: bilinear weights sum to 1 inside the Nyquist sphere, so D = sum_f w_f / n,
    # the multiplicity fourier.tilt_series_ctf_weights computes from the same slab.
    gen = torch.Generator().manual_seed(12)
    b, f, n = 2, 7, 12
    rotations = _rotations(b * f, gen).reshape(b, f, 3, 3)
    visible = torch.rand(b, f, generator=gen) > 0.2
    images = torch.ones(b, f, n, n // 2 + 1, dtype=torch.complex128)
    data = insert_tilt_images(images, rotations, visible)
    zeros = torch.zeros(b, f, dtype=F64)
    _, multiplicity, _ = tilt_series_ctf_weights(
        rotations, defocus_u_angst=zeros + 1e4, defocus_v_angst=zeros + 1e4,
        defocus_angle_deg=zeros, voltage_kv=300.0, spherical_aberration_mm=2.7,
        amplitude_contrast=0.1, pixel_size_angst=5.0, box_size=n, dose_e_per_angst2=zeros,
        visible=visible,
    )  # fmt: skip
    k = frequency_indices(n, 3)
    inside = (k * k).sum(dim=-1) <= (n // 2) ** 2
    torch.testing.assert_close(data.real[:, inside], multiplicity[:, inside] / n, rtol=0.0,
                               atol=_bound(images, f))  # fmt: skip
    assert float(data.imag.abs().max()) == 0.0


def test_affine_hermitian_slices_are_inserted_exactly_at_the_rotated_frequency():
    # Z_f(u) = a_f + i b_f . u is Hermitian and affine: bilinear interpolation returns it
    # exactly, so D(k) = sum_f w_f (a_f + i b_f . (R_f k)_xy) / n; a transposed rotation
    # or a wrong Friedel sign would change the imaginary part.
    gen = torch.Generator().manual_seed(13)
    f, n = 5, 16
    rotations = _rotations(f, gen)
    a = torch.rand(f, generator=gen, dtype=F64)
    slope = torch.randn(f, 2, generator=gen, dtype=F64)
    u = frequency_indices(n, 2).to(F64)  # (n, nh, 2)
    imaginary = torch.einsum("yxc,fc->fyx", u, slope)
    images = torch.complex(a[:, None, None].expand_as(imaginary), imaginary)[None]
    data = insert_tilt_images(images, rotations[None], torch.ones(1, f, dtype=torch.bool))[0]
    k = frequency_indices(n, 3).to(F64)
    distance = k @ rotations[:, 2, :].T  # (n, n, nh, f)
    weight = (1.0 - distance.abs()).clamp(min=0.0)
    rotated = torch.einsum("fij,zyxj->zyxfi", rotations[:, :2, :], k)
    want = (weight * torch.complex(a.expand_as(weight), (rotated * slope).sum(-1))).sum(-1) / n
    # corners stay inside the stored rows for |k| < n/2 - 1
    inside = (k * k).sum(dim=-1) < (n // 2 - 1) ** 2
    bound = (4 * f) * (4 * f + 6) * U * float(images.abs().max()) * n
    torch.testing.assert_close(data[inside], want[inside], rtol=0.0, atol=bound)


def test_a_prebuilt_insertion_serves_many_batches_and_refuses_other_rotations():
    gen = torch.Generator().manual_seed(14)
    f, n = 4, 8
    rotations = _rotations(f, gen)
    insertion = slab_insertion(rotations, box_size=n, dtype=F64)
    images = torch.randn(3, f, n, n // 2 + 1, generator=gen, dtype=torch.complex128)
    visible = torch.ones(3, f, dtype=torch.bool)
    expanded = rotations[None].expand(3, f, 3, 3)
    once = insert_tilt_images(images, expanded, visible)
    torch.testing.assert_close(
        insert_tilt_images(images, expanded, visible, insertion=insertion), once,
        rtol=0.0, atol=_bound(images, f),
    )  # fmt: skip
    with pytest.raises(ValueError, match="other tilt rotations"):
        insert_tilt_images(images, _rotations(f, gen)[None].expand(3, f, 3, 3), visible,
                           insertion=insertion)  # fmt: skip
