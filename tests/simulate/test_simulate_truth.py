"""The truth: resampled to the particles' grid, symmetrised, and its signal power."""

import math

import numpy as np
import pytest
import torch
from simulation_blobs import blob_volume, grid, trilinear_excess

from cryorefine.geometry import point_group
from cryorefine.simulate import resample_map, signal_power, symmetrise_map
from cryorefine.simulate.truth import SYMMETRISE_PADDING

N = 32
CENTRES = np.array([[3.0, 0.5, -1.0], [-2.5, 2.0, 1.5], [0.5, -3.0, 2.5]])
SIGMA = np.array([1.8, 2.2, 2.0])
AMPLITUDE = np.array([1.0, 0.8, 1.3])


def _blobs(n: int, scale: float = 1.0) -> torch.Tensor:
    """The blobs on a grid of voxels ``scale`` times larger (same physical object)."""
    volume = blob_volume(CENTRES / scale, SIGMA / scale, AMPLITUDE, n)
    return torch.from_numpy(volume)


def test_same_pixel_pad_and_crop_copy_voxels_about_the_centre() -> None:
    gen = torch.Generator().manual_seed(0)
    volume = torch.randn(10, 10, 10, generator=gen, dtype=torch.float64)
    padded = resample_map(volume, pixel_size_angst=2.0, new_pixel_size_angst=2.0, new_box_size=16)
    # Voxel n // 2 = 5 goes to m // 2 = 8: offset 3 on every axis; zeros elsewhere.
    torch.testing.assert_close(padded[3:13, 3:13, 3:13], volume, rtol=0, atol=1e-12)
    padded[3:13, 3:13, 3:13] = 0
    assert padded.abs().max() < 1e-12
    cropped = resample_map(volume, pixel_size_angst=2.0, new_pixel_size_angst=2.0, new_box_size=6)
    torch.testing.assert_close(cropped, volume[2:8, 2:8, 2:8], rtol=0, atol=1e-12)


@pytest.mark.parametrize(("scale", "m"), [(1.5, 24), (0.75, 40)])
def test_resampling_gives_the_same_blobs_on_the_new_grid(scale: float, m: int) -> None:
    volume = _blobs(N)
    got = resample_map(volume, pixel_size_angst=1.0, new_pixel_size_angst=scale, new_box_size=m)
    want = _blobs(m, scale)
    # Band-limited interpolation of the samples is exact for content inside the old
    # Nyquist band; what differs: (1) for a larger pixel, the content beyond the new
    # Nyquist sphere that is filtered away, at most sum |F(k)| over it (inverse transform
    # with norm="forward"); (2) the aliasing of both samplings and the blobs' tails
    # beyond the old box, bounded by the Gaussian spectrum at half a cycle per voxel
    # (new voxels: half a cycle per voxel at sigma / scale) times the mass, 26 aliases.
    ft = np.fft.fftn(volume.numpy(), norm="forward")
    k = np.fft.fftfreq(N, 1 / N)
    radius = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None] ** 2)
    cut = np.abs(ft)[radius > N / (2 * scale)].sum() if scale > 1 else 0.0
    mass = (AMPLITUDE * (2 * math.pi * SIGMA**2) ** 1.5).sum()
    smallest = min(SIGMA.min(), SIGMA.min() / scale)
    alias = 2 * 26 * math.exp(-2 * math.pi**2 * smallest**2 / 4) * mass / min(N, m) ** 3
    torch.testing.assert_close(got, want, rtol=0, atol=cut + alias + 1e-12)


def _quarter_turn(volume: torch.Tensor) -> torch.Tensor:
    """v(R.T x) for R the quarter turn about z: (x, y) -> (-y, x), about voxel n // 2."""
    n = volume.shape[-1]
    offsets = grid(n, 3)
    source = np.rint(offsets @ np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]])).astype(int) + n // 2
    inside = ((source >= 0) & (source < n)).all(-1)
    source = np.clip(source, 0, n - 1)
    values = volume.numpy()[source[..., 2], source[..., 1], source[..., 0]]
    return torch.from_numpy(np.where(inside, values, 0.0))


def test_symmetrised_map_is_exactly_invariant_under_grid_operators() -> None:
    volume = _blobs(N)
    operators = point_group("C4", device="cpu").operators
    symmetric = symmetrise_map(volume, operators)
    # C4 maps the grid onto itself: voxels copied, no interpolation, so equal to float64
    # rounding, except on the outer planes in x and y, whose turned sources (x or y =
    # -n/2 turned to +n/2) lie outside the box.
    inner = (slice(None), slice(1, -1), slice(1, -1))
    turned = _quarter_turn(symmetric)
    torch.testing.assert_close(turned[inner], symmetric[inner], rtol=0, atol=1e-15)
    want = sum(_quarter_turn_power(volume, i) for i in range(4)) / 4
    torch.testing.assert_close(symmetric[inner], want[inner], rtol=0, atol=1e-15)


def _quarter_turn_power(volume: torch.Tensor, times: int) -> torch.Tensor:
    for _ in range(times):
        volume = _quarter_turn(volume)
    return volume


def test_symmetrised_map_is_the_mean_of_the_turned_blobs() -> None:
    volume = _blobs(N)
    group = point_group("C3", device="cpu")
    got = symmetrise_map(volume, group.operators)
    rotations = group.operators.numpy()
    want = np.mean(
        [blob_volume(CENTRES @ r.T, SIGMA, AMPLITUDE, N) for r in rotations], axis=0
    )  # v(R.T x) has its blobs at R c
    # Two operators of C3 are interpolated at padding 4 (identity copied): per Fourier
    # coefficient at most trilinear_excess / n^3 each, averaged with weight 1/3 each; by
    # Parseval the RMS over voxels is at most sqrt(#coefficients) = n^(3/2) times that.
    # Float32 (single precision for the projector) adds 2^-23 of the sum |v| / n^3 each.
    per_coefficient = (
        2
        / 3
        * (
            trilinear_excess(volume.numpy(), SYMMETRISE_PADDING)
            + 2.0**-23 * volume.abs().sum().item()
        )
        / N**3
    )
    rms = float(np.sqrt(((got.numpy() - want) ** 2).mean()))
    assert rms <= N**1.5 * per_coefficient
    # Informative: the map before symmetrising is far outside the bound.
    assert float(np.sqrt(((volume.numpy() - want) ** 2).mean())) > 3 * N**1.5 * per_coefficient


def test_signal_power_of_a_flat_spectrum_is_one_per_coefficient() -> None:
    # A map whose every Fourier coefficient has modulus 1: 3D shell power 1, so the 3D S
    # is 1 and the 2D S (n^2 times the shell power) is n^2, whatever the phases.
    gen = torch.Generator().manual_seed(1)
    n = 16
    ft = torch.fft.fftn(torch.randn(n, n, n, generator=gen, dtype=torch.float64))
    flat = torch.fft.ifftn(ft / ft.abs(), norm="forward").real
    volume = torch.fft.fftshift(flat)
    assert signal_power(volume, ndim=3) == pytest.approx(1.0, rel=1e-12)
    assert signal_power(volume, ndim=2) == pytest.approx(n * n, rel=1e-12)


def test_signal_power_is_the_shell_average_over_the_nyquist_disc() -> None:
    volume = _blobs(16)
    power = np.abs(np.fft.fftn(volume.numpy(), norm="forward")) ** 2
    k = np.fft.fftfreq(16, 1 / 16)
    shells = np.rint(np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None] ** 2))
    per_shell = [power[shells == s].mean() for s in range(9)]
    disc = np.rint(np.sqrt(k[:, None] ** 2 + k[None, :] ** 2))
    values = [16 * 16 * per_shell[int(s)] for s in disc.ravel() if s <= 8]
    assert signal_power(volume, ndim=2) == pytest.approx(np.mean(values), rel=1e-12)
    assert signal_power(volume, ndim=3) == pytest.approx(power[shells <= 8].mean(), rel=1e-12)
