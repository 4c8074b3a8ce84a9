"""Boxes, binning, sub-pixel centring, CTF and crop of particles in tilt images (tilt_images)."""

import math

import torch

from cryorefine.fourier import ctf_at_frequencies, dose_weight_at_frequencies
from cryorefine.fourier.conventions import frequency_indices, from_fourier, to_fourier
from cryorefine.fourier.filters import fourier_crop, shift_fourier
from cryorefine.geometry import euler_to_matrix
from cryorefine.tomo import (
    CIRCLE_EDGE_PX,
    ParticleTilts,
    boxes_to_fourier,
    crop_boxes,
    cut_boxes,
    premultiply,
)

F64 = torch.float64
U = 2.0**-53


def _band_limited(shape: tuple[int, ...], n: int, gen: torch.Generator, ndim: int):
    """Random real images of side n whose transform is 0 from |k| >= n/2 - 1 (no Nyquist)."""
    images = torch.randn(*shape, *([n] * ndim), generator=gen, dtype=F64)
    ft = to_fourier(images, ndim)
    k = frequency_indices(n, ndim)
    ft = torch.where((k * k).sum(dim=-1) < (n // 2 - 1) ** 2, ft, torch.zeros_like(ft))
    return from_fourier(ft, n, ndim), ft


def test_boxes_are_the_image_pixels_around_the_rounded_position_and_zero_outside():
    gen = torch.Generator().manual_seed(21)
    f, h, w, s = 3, 20, 24, 6
    images = torch.randn(f, h, w, generator=gen, dtype=F64)
    positions = torch.tensor([[[2.5, 3.49], [23.6, 19.5], [-1.2, 10.0]]], dtype=F64)
    boxes, remainders = cut_boxes(images, positions, box_size=s)
    for tilt in range(f):
        cx, cy = (math.floor(float(v) + 0.5) for v in positions[0, tilt])
        for j in range(s):
            for i in range(s):
                y, x = cy - s // 2 + j, cx - s // 2 + i
                inside = 0 <= y < h and 0 <= x < w
                want = float(images[tilt, y, x]) if inside else 0.0
                assert float(boxes[0, tilt, j, i]) == want
        assert torch.equal(remainders[0, tilt], positions[0, tilt] - torch.tensor([cx, cy]))
    assert bool((remainders.abs() <= 0.5).all())


def test_a_subpixel_placed_particle_comes_back_centred():
    # A band-limited box moved by r (a phase) and pasted with its centre on round(c):
    # cutting at c and moving by -r gives back its transform (the phases cancel).
    gen = torch.Generator().manual_seed(22)
    s, f = 16, 4
    box, box_ft = _band_limited((f,), s, gen, 2)
    positions = torch.rand(1, f, 2, generator=gen, dtype=F64) * 20 + 10
    centre = torch.floor(positions + 0.5)
    moved = from_fourier(shift_fourier(box_ft, positions[0] - centre[0]), s, 2)
    images = torch.zeros(f, 48, 48, dtype=F64)
    for tilt in range(f):
        x0, y0 = (int(v) - s // 2 for v in centre[0, tilt])
        images[tilt, y0 : y0 + s, x0 : x0 + s] = moved[tilt]
    boxes, remainders = cut_boxes(images, positions, box_size=s)
    got = boxes_to_fourier(boxes, remainders, binning=1.0, box_size=s)
    # float64: two FFTs and two phases of s^2-term sums (Higham 3.1)
    torch.testing.assert_close(got[0], box_ft, rtol=0.0, atol=8 * s * s * U * box.abs().max())


def test_binning_keeps_n_times_the_3d_transform_on_the_slice():
    # A band-limited map of box 2n at pixel p, projected (summed) along z: binned by 2
    # to box n, the transform equals n V on the kz = 0 slice, V the 3D transform of the
    # map at pixel 2p (its Fourier crop), as for a projection made at the binned pixel.
    gen = torch.Generator().manual_seed(23)
    n = 12
    volume, volume_ft = _band_limited((), 2 * n, gen, 3)
    projection = volume.sum(dim=0)[None]  # (1, 2n, 2n), tensor axes (z, y, x)
    positions = torch.full((1, 1, 2), float(n), dtype=F64)
    boxes, remainders = cut_boxes(projection, positions, box_size=2 * n)
    got = boxes_to_fourier(boxes, remainders, binning=2.0, box_size=n)[0, 0]
    binned_v = fourier_crop(volume_ft, n, ndim=3)
    want = n * binned_v[0]  # kz = 0
    bound = 8 * (2 * n) ** 3 * U * float(volume.abs().max())
    torch.testing.assert_close(got, want, rtol=0.0, atol=bound)


def _tilts(b: int, f: int, gen: torch.Generator) -> ParticleTilts:
    def draw(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(b, f, generator=gen, dtype=F64)

    return ParticleTilts(
        position_px=torch.zeros(b, f, 2, dtype=F64),
        depth_px=torch.zeros(b, f, dtype=F64),
        rotations=euler_to_matrix(torch.zeros(b, f, 3, dtype=F64)),
        defocus_u_angst=draw(8000, 30000),
        defocus_v_angst=draw(8000, 30000),
        defocus_angle_deg=draw(-90, 90),
        dose_e_per_angst2=draw(0, 100),
        bfactor_angst2=draw(0, 200),
        scale=draw(0.5, 1.0),
        visible=torch.ones(b, f, dtype=torch.bool),
    )


def test_premultiply_is_minus_ctf_times_dose_weight_per_particle_and_tilt():
    gen = torch.Generator().manual_seed(24)
    b, f, n, pixel = 2, 3, 10, 5.4
    tilts = _tilts(b, f, gen)
    transforms = torch.randn(b, f, n, n // 2 + 1, generator=gen, dtype=torch.complex128)
    got = premultiply(transforms, tilts, voltage_kv=300.0, spherical_aberration_mm=2.7,
                      amplitude_contrast=0.07, pixel_size_angst=pixel)  # fmt: skip
    frequencies = frequency_indices(n, 2).to(F64) / (n * pixel)
    for i in range(b):
        for j in range(f):
            ctf = ctf_at_frequencies(
                frequencies,
                defocus_u_angst=float(tilts.defocus_u_angst[i, j]),
                defocus_v_angst=float(tilts.defocus_v_angst[i, j]),
                defocus_angle_deg=float(tilts.defocus_angle_deg[i, j]),
                voltage_kv=300.0, spherical_aberration_mm=2.7, amplitude_contrast=0.07,
                bfactor_angst2=float(tilts.bfactor_angst2[i, j]), scale=float(tilts.scale[i, j]),
            )  # fmt: skip
            dose = dose_weight_at_frequencies(frequencies, float(tilts.dose_e_per_angst2[i, j]))
            want = -ctf * dose * transforms[i, j]
            # the same float64 formula, evaluated in another order: a few u of |Z| (|CTF| <= 1)
            bound = 16 * U * float(transforms.abs().max())
            torch.testing.assert_close(got[i, j], want, rtol=0.0, atol=bound)
    kept = premultiply(transforms, tilts, voltage_kv=300.0, spherical_aberration_mm=2.7,
                       amplitude_contrast=0.07, pixel_size_angst=pixel, invert_contrast=False,
                       use_ctf=False)  # fmt: skip
    assert torch.equal(kept, transforms)


def test_crop_is_relions_circle_crop_then_a_centred_window():
    gen = torch.Generator().manual_seed(25)
    n, m = 24, 16
    images = torch.randn(2, 1, n, n, generator=gen, dtype=F64)
    got = from_fourier(crop_boxes(to_fourier(images, 2), crop_size=m), m, 2)
    want = torch.empty(2, 1, m, m, dtype=F64)
    radius = m / 2
    for b in range(2):
        image = images[b, 0]
        outside = [float(image[y, x]) for y in range(n) for x in range(n)
                   if math.hypot(x - n // 2, y - n // 2) > radius]  # fmt: skip
        mean = sum(outside) / len(outside)
        for y in range(m):
            for x in range(m):
                yy, xx = y + n // 2 - m // 2, x + n // 2 - m // 2
                r = math.hypot(xx - n // 2, yy - n // 2)
                if r < radius - CIRCLE_EDGE_PX:
                    c = 1.0
                elif r < radius:
                    c = 0.5 - 0.5 * math.cos(math.pi * (radius - r) / CIRCLE_EDGE_PX)
                else:
                    c = 0.0
                want[b, 0, y, x] = c * (float(image[yy, xx]) - mean)
    # two FFTs of n^2 terms and a mean of n^2 terms, float64
    torch.testing.assert_close(got, want, rtol=0.0, atol=8 * n * n * U * images.abs().max())
    plain = from_fourier(crop_boxes(to_fourier(images, 2), crop_size=m, circle=False), m, 2)
    window = images[..., n // 2 - m // 2 : n // 2 + m // 2, n // 2 - m // 2 : n // 2 + m // 2]
    torch.testing.assert_close(plain, window, rtol=0.0, atol=8 * n * n * U * images.abs().max())
