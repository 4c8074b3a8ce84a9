"""`fourier.rescale`: a map resampled to another pixel size (Fourier crop/pad) and boxed.

Analytic: a band-limited sum of Gaussians rescaled from 4 to 2 A/px equals the same
Gaussians sampled at 2 A/px, and back at 4 A/px equals itself, each within a bound
computed from the Gaussians' own spectrum. Float64 references: the trigonometric
interpolant (or its band-limited subsampling) written as explicit DFT matrices.
"""

import math

import numpy as np
import pytest
import torch

from cryorefine.fourier import rescale_map, rescaled_size, window_map

F64 = torch.float64
U64 = 2.0**-53


def _gaussians(gen: torch.Generator, count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Centres within 20 A of the box centre (x, y, z), widths 8-10 A, amplitudes 0.5-1.5."""
    centres = (torch.rand(count, 3, generator=gen, dtype=F64) - 0.5) * 2 * 20.0 / math.sqrt(3)
    sigmas = 8.0 + 2.0 * torch.rand(count, generator=gen, dtype=F64)
    amplitudes = 0.5 + torch.rand(count, generator=gen, dtype=F64)
    return centres, sigmas, amplitudes


def _sampled(centres, sigmas, amplitudes, *, n: int, pixel: float) -> torch.Tensor:
    """The Gaussians made periodic over the box (side L = n pixel), sampled on (z, y, x).

    Voxel ``n // 2`` is the origin. A Gaussian is a product of 1D Gaussians, and so is
    its periodic sum: per axis, the images one box away are added; those two or more
    boxes away are >= 2L - L/2 - 20 A = 220 A from every voxel (L = 160 A below),
    where exp(-220**2 / (2 * 10**2)) underflows to 0.
    """
    axis = (torch.arange(n, dtype=F64) - n // 2) * pixel
    images = torch.tensor([-1.0, 0.0, 1.0], dtype=F64) * n * pixel
    volume = torch.zeros(n, n, n, dtype=F64)
    for mu, s, a in zip(centres, sigmas, amplitudes, strict=True):
        x, y, z = (  # (n,) periodic 1D Gaussian along each axis
            torch.exp(-((axis[:, None] - mu[i] - images) ** 2) / (2 * s**2)).sum(dim=1)
            for i in range(3)
        )
        volume += a * z[:, None, None] * y[None, :, None] * x[None, None, :]
    return volume


def _kept(k: torch.Tensor, n: int, *, radius: bool) -> torch.Tensor:
    """Frequencies (.., 3) a grid of side ``n`` carries: ``|k_i| < n/2`` (and ``|k| <= n/2``)."""
    inside = (k.abs() < n / 2).all(dim=-1)
    if radius:
        inside &= torch.linalg.vector_norm(k.to(F64), dim=-1) <= n // 2
    return inside


def _spectrum_outside(sigmas, amplitudes, *, length: float, n_kept: int, radius: bool) -> float:
    """Sum over k in Z^3 outside the kept set of |c(k)| (Fourier series of the periodic sum).

    One Gaussian a exp(-|r - mu|^2 / (2 s^2)) over a period L has
    |c(k)| = a (2 pi)^(3/2) (s / L)^3 exp(-2 pi^2 s^2 |k|^2 / L^2): the sum over all of
    Z^3 is a cube of a 1D sum, from which the kept set is taken away. Beyond
    |k_i| = 2 n_kept (80 here) the exponent is below -2 pi^2 8^2 80^2 / 160^2 = -316:
    nothing left in float64.
    """
    side = torch.arange(-2 * n_kept, 2 * n_kept + 1, dtype=F64)
    inner = torch.arange(-(n_kept // 2), n_kept // 2 + 1)
    k = torch.cartesian_prod(inner, inner, inner)
    k2_kept = (k[_kept(k, n_kept, radius=radius)].to(F64) ** 2).sum(dim=-1)
    total = 0.0
    for s, a in zip(sigmas, amplitudes, strict=True):
        scale = a * (2 * math.pi) ** 1.5 * (s / length) ** 3
        rate = 2 * math.pi**2 * s**2 / length**2
        everywhere = torch.exp(-rate * side**2).sum() ** 3
        kept = torch.exp(-rate * k2_kept).sum()
        total += float(scale * (everywhere - kept))
    return total


def test_rescaled_size_rounds_to_an_even_side_as_relion_image_handler():
    assert rescaled_size(96, pixel_size_angst=2.7, new_pixel_size_angst=10.8) == 24
    assert rescaled_size(32, pixel_size_angst=4.0, new_pixel_size_angst=2.0) == 64
    assert rescaled_size(20, pixel_size_angst=4.0, new_pixel_size_angst=3.0) == 26  # 26.7 -> 27
    assert rescaled_size(25, pixel_size_angst=1.0, new_pixel_size_angst=1.0) == 25  # unchanged
    with pytest.raises(ValueError, match="positive"):
        rescaled_size(32, pixel_size_angst=4.0, new_pixel_size_angst=0.0)
    with pytest.raises(ValueError, match="would have 0 px"):
        rescaled_size(4, pixel_size_angst=1.0, new_pixel_size_angst=10.0)


def test_gaussians_at_4_angst_rescaled_to_2_angst_equal_the_gaussians_sampled_at_2_angst(device):
    centres, sigmas, amplitudes = _gaussians(torch.Generator().manual_seed(1), 4)
    coarse = _sampled(centres, sigmas, amplitudes, n=40, pixel=4.0)
    want = _sampled(centres, sigmas, amplitudes, n=80, pixel=2.0)
    got = rescale_map(coarse.to(device), pixel_size_angst=4.0, new_pixel_size_angst=2.0).cpu()
    # Both grids sample one periodic function with coefficients c(k) (L = 160 A). The
    # 40-grid's transform is sum_m c(k + 40 m), the 80-grid's sum_m c(k + 80 m); the
    # rescaled map keeps the first on K = {|k_i| < 20, |k| <= 20}. Every term of the
    # difference is one |c(k')| with k' outside K, each k' at most twice: error <= 2 tail.
    # Rounding: float64 FFTs, error ~ log2(N) u per unit of sum |F| <= sum of amplitudes.
    tail = _spectrum_outside(sigmas, amplitudes, length=160.0, n_kept=40, radius=True)
    rounding = 10 * math.log2(80**3) * U64 * float(amplitudes.sum()) * 27
    assert got.shape == (80, 80, 80)
    assert tail < 1e-5 * float(amplitudes.min())  # the map is band-limited: the test has teeth
    torch.testing.assert_close(got, want, rtol=0.0, atol=2 * tail + rounding)


def test_gaussians_rescaled_from_4_to_2_and_back_to_4_angst_equal_themselves(device):
    centres, sigmas, amplitudes = _gaussians(torch.Generator().manual_seed(2), 5)
    coarse = _sampled(centres, sigmas, amplitudes, n=40, pixel=4.0).to(device)
    fine = rescale_map(coarse, pixel_size_angst=4.0, new_pixel_size_angst=2.0)
    back = rescale_map(fine, pixel_size_angst=2.0, new_pixel_size_angst=4.0).cpu()
    # Pad then crop gives back the 40-grid's coefficients on K and zeros elsewhere, so the
    # error is at most the sum of |F| outside K; F(k) = sum_m c(k + 40 m): <= the tail.
    tail = _spectrum_outside(sigmas, amplitudes, length=160.0, n_kept=40, radius=True)
    rounding = 20 * math.log2(80**3) * U64 * float(amplitudes.sum()) * 27
    torch.testing.assert_close(back, coarse.cpu(), rtol=0.0, atol=tail + rounding)


def _dft_matrix(n_out: int, n_in: int, kept: np.ndarray) -> np.ndarray:
    """E[j, k] = exp(2 pi i k (j - n_out // 2) / n_out) for the kept frequencies k of n_in."""
    j = np.arange(n_out) - n_out // 2
    return np.exp(2j * np.pi * np.outer(j, kept) / n_out)


def _reference_resample(volume: np.ndarray, n_out: int) -> np.ndarray:
    """Slow, obvious float64 resampling: full DFT, keep K, evaluate on the new grid.

    K: frequencies strictly inside the smaller grid's Nyquist on every axis and, when
    padding, with |k| <= n_in // 2 (the crop keeps a cube, the pad a ball).
    """
    n_in = volume.shape[0]
    spectrum = np.fft.fftn(np.fft.ifftshift(volume)) / volume.size  # F(k), FFTW order
    freq = np.rint(np.fft.fftfreq(n_in) * n_in).astype(int)
    small = min(n_in, n_out)
    kz, ky, kx = np.meshgrid(freq, freq, freq, indexing="ij")
    keep = (np.abs(kz) < small / 2) & (np.abs(ky) < small / 2) & (np.abs(kx) < small / 2)
    if n_out > n_in:
        keep &= np.sqrt(kz**2 + ky**2 + kx**2) <= n_in // 2
    e = _dft_matrix(n_out, n_in, freq)
    out = np.einsum("az,by,cx,zyx->abc", e, e, e, np.where(keep, spectrum, 0))
    return out.real


@pytest.mark.parametrize(("n_in", "n_out", "old", "new"), [(10, 20, 4.0, 2.0), (16, 10, 2.5, 4.0)])
def test_rescale_of_random_map_matches_explicit_dft_reference(device, n_in, n_out, old, new):
    gen = torch.Generator().manual_seed(n_in)
    volume = torch.randn(n_in, n_in, n_in, generator=gen, dtype=F64)
    got = rescale_map(volume.to(device), pixel_size_angst=old, new_pixel_size_angst=new).cpu()
    want = _reference_resample(volume.numpy(), n_out)
    # Both evaluate sum over <= n_in**3 coefficients with |F| <= max|x| (forward-normalised);
    # float64 rounding grows like log2(N) u per FFT and like N u for the explicit sums.
    atol = 4 * n_in**3 * U64 * float(volume.abs().max()) * math.log2(n_in**3)
    assert got.shape == (n_out,) * 3
    torch.testing.assert_close(got, torch.from_numpy(want), rtol=0.0, atol=atol)


@pytest.mark.parametrize(("n", "m"), [(12, 8), (12, 7), (11, 16), (9, 9)])
def test_window_map_keeps_the_centre_voxel_and_pads_with_zeros(device, n, m):
    gen = torch.Generator().manual_seed(n + m)
    volume = torch.randn(n, n, n, generator=gen, dtype=F64).to(device)
    got = window_map(volume, new_box=m).cpu()
    want = torch.zeros(m, m, m, dtype=F64)
    for j in range(m):  # output voxel j is input voxel j - m // 2 + n // 2, one axis at a time
        for i in range(m):
            for h in range(m):
                src = [v - m // 2 + n // 2 for v in (j, i, h)]
                if all(0 <= v < n for v in src):
                    want[j, i, h] = volume[src[0], src[1], src[2]].cpu()
    assert torch.equal(got, want)  # a copy: exact
    assert got[m // 2, m // 2, m // 2] == volume[n // 2, n // 2, n // 2]


def test_rescale_map_with_new_box_is_rescale_then_window(device):
    gen = torch.Generator().manual_seed(7)
    volume = torch.randn(12, 12, 12, generator=gen, dtype=torch.float32).to(device)
    got = rescale_map(volume, pixel_size_angst=4.0, new_pixel_size_angst=2.0, new_box=20)
    want = window_map(
        rescale_map(volume, pixel_size_angst=4.0, new_pixel_size_angst=2.0), new_box=20
    )
    assert got.dtype == torch.float32
    assert got.device == volume.device
    assert torch.equal(got, want)
    same = rescale_map(volume, pixel_size_angst=4.0, new_pixel_size_angst=4.0)
    assert torch.equal(same, volume)  # equal pixel sizes: no resampling at all
