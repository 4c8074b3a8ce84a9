"""3D CTF weights of a tilt series: analytic slices, the missing wedge, and a per-voxel loop."""

import math

import pytest
import torch

from cryorefine.fourier.conventions import frequency_indices
from cryorefine.fourier.ctf import ctf_2d, dose_weight
from cryorefine.fourier.ctf3d import tilt_series_ctf_weights

F64 = torch.float64
OPTICS = {"voltage_kv": 300.0, "spherical_aberration_mm": 2.7, "amplitude_contrast": 0.1}


def _tilt_about_y(angles_deg: torch.Tensor) -> torch.Tensor:
    """Rotations by each angle about y, ``(f, 3, 3)``: row 2 is ``(-sin t, 0, cos t)``."""
    t = torch.deg2rad(angles_deg.to(F64))
    c, s, zero, one = torch.cos(t), torch.sin(t), torch.zeros_like(t), torch.ones_like(t)
    rows = [torch.stack([c, zero, s], -1), torch.stack([zero, one, zero], -1)]
    rows.append(torch.stack([-s, zero, c], -1))
    return torch.stack(rows, dim=-2)


def _random_rotations(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(*shape, 3, 3, generator=gen, dtype=F64))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[..., None, :]
    return q * torch.det(q)[..., None, None]  # proper rotations


def _weights(rotations, *, du, dv=None, angle=None, dose=None, **options):
    b, f = rotations.shape[:2]
    zeros = torch.zeros(b, f, dtype=F64, device=rotations.device)
    return tilt_series_ctf_weights(
        rotations,
        defocus_u_angst=zeros + du,
        defocus_v_angst=zeros + (du if dv is None else dv),
        defocus_angle_deg=zeros + (0.0 if angle is None else angle),
        dose_e_per_angst2=zeros + (0.0 if dose is None else dose),
        **{**OPTICS, "pixel_size_angst": 2.0, "box_size": 16, **options},
    )


@pytest.mark.parametrize("slab_width_px", [1.0, 1.5])
def test_untilted_image_fills_the_kz0_plane_with_its_2d_ctf(device, slab_width_px):
    n, p = 16, 2.0
    rotation = torch.eye(3, dtype=F64, device=device)[None, None]
    ctf2, multiplicity, ctf_mean = _weights(
        rotation, du=18000.0, dv=15000.0, angle=30.0, slab_width_px=slab_width_px
    )
    kz = frequency_indices(n, 3, device=device)[..., 2]
    want_2d = ctf_2d(
        defocus_u_angst=torch.tensor([18000.0], dtype=F64, device=device),
        defocus_v_angst=torch.tensor([15000.0], dtype=F64, device=device),
        defocus_angle_deg=torch.tensor([30.0], dtype=F64, device=device),
        pixel_size_angst=p,
        box_size=n,
        **OPTICS,
    )[0]
    # On the plane the tent is exactly 1 and the 2D frequency is (kx, ky) itself.
    assert torch.equal(multiplicity[0, 0], torch.ones_like(multiplicity[0, 0]))
    # The phase is summed from its terms in another order than ctf_2d's: each ordering
    # is within a few ulps of its largest term, K1 dU |u|^2 at the corner |u|^2 = 1/8
    # A^-2, so |d gamma| <= 16 u K1 dU / 8 and |d ctf| <= |d gamma|; ctf^2 twice that.
    wavelength = 12.2643247 / math.sqrt(300e3 * (1 + 0.978466e-6 * 300e3))
    phase_error = 16 * 2.0**-52 * math.pi * wavelength * 18000.0 / 8
    torch.testing.assert_close(ctf2[0, 0], want_2d**2, rtol=0.0, atol=2 * phase_error)
    torch.testing.assert_close(ctf_mean[0, 0], want_2d, rtol=0.0, atol=phase_error)
    # |kz| = 1 gets the tent's value 1 - 1 / slab_width; nothing at |kz| >= 2.
    tent = max(0.0, 1.0 - 1.0 / slab_width_px)
    off = multiplicity[0][kz[..., 0, 0].abs() == 1]
    assert torch.allclose(off, torch.full_like(off, tent), rtol=1e-15, atol=0.0)
    assert torch.all(multiplicity[0][kz[..., 0, 0].abs() >= 2] == 0)
    assert torch.all(ctf2[0][kz[..., 0, 0].abs() >= 2] == 0)


def test_plus_minus_60_degree_series_leaves_the_missing_wedge_empty(device):
    n, slab = 16, 1.0
    angles = torch.arange(-60.0, 60.0 + 1e-9, 3.0, dtype=F64)  # 41 tilts
    rotations = _tilt_about_y(angles)[None].to(device)
    _, multiplicity, ctf_mean = _weights(rotations, du=20000.0, slab_width_px=slab)
    k = frequency_indices(n, 3, device=device).to(F64)
    kx, ky, kz = k[..., 0].abs(), k[..., 1], k[..., 2].abs()
    # A voxel at angle phi < 30 deg from kz lies at distance >= |kz| sin 30 - |kx| cos 30
    # from every slice (the nearest is the +-60 deg one): with the tent of half-width
    # `slab` nothing reaches where |kz| >= tan(60 deg) |kx| + slab / cos(60 deg).
    wedge = kz >= math.tan(math.radians(60.0)) * kx + slab / math.cos(math.radians(60.0))
    assert wedge.sum() > 50
    assert torch.all(multiplicity[0][wedge] == 0)
    assert torch.all(ctf_mean[0][wedge] == 0)
    # Inside the fan |kz| <= tan(60) |kx|, neighbouring slices 3 deg apart leave gaps of
    # width rho sin(1.5 deg) < 1 voxel for rho < 38 > 16 sqrt(2): every voxel is reached.
    fan = kz <= math.tan(math.radians(60.0)) * kx
    assert torch.all(multiplicity[0][fan] > 0)
    # The tilt axis (0, ky, 0) lies in all 41 planes.
    axis = (kx == 0) & (kz == 0)
    assert torch.all(multiplicity[0][axis] == 41.0)
    assert ky[axis].unique().numel() == n


def test_kx0_plane_is_friedel_symmetric(device):
    gen = torch.Generator().manual_seed(4)
    n = 16
    rotations = _random_rotations((3, 5), gen).to(device)
    du = 12000 + 20000 * torch.rand(3, 5, generator=gen, dtype=F64)
    dv = du + 3000 * (torch.rand(3, 5, generator=gen, dtype=F64) - 0.5)
    angle = 360 * torch.rand(3, 5, generator=gen, dtype=F64)
    dose = 60 * torch.rand(3, 5, generator=gen, dtype=F64)
    outputs = tilt_series_ctf_weights(
        rotations,
        defocus_u_angst=du.to(device),
        defocus_v_angst=dv.to(device),
        defocus_angle_deg=angle.to(device),
        dose_e_per_angst2=dose.to(device),
        pixel_size_angst=2.0,
        box_size=n,
        **OPTICS,
    )
    inner = torch.arange(n, device=device)
    inner = inner[inner != n // 2]  # the Nyquist row is stored once, as +n/2
    mirror = (-inner) % n
    for values in outputs:
        plane = values[:, :, :, 0]
        got = plane[:, inner][:, :, inner]
        want = plane[:, mirror][:, :, mirror]
        # -k gives exactly negated 3-term dot products up to their rounding (3 u relative);
        # the CTF is even in (x, y); so the two sides agree to a few ulps of O(1) values.
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert outputs[1][:, :, :, 0].sum() > 0


def test_dose_weighting_lowers_high_frequencies(device):
    n, p, dose = 16, 2.0, 40.0
    rotation = torch.eye(3, dtype=F64, device=device)[None, None]
    plain, _, _ = _weights(rotation, du=15000.0)
    dosed, _, _ = _weights(rotation, du=15000.0, dose=dose)
    # On the plane: ratio = (Grant & Grigorieff weight)^2 of the same 2D frequency.
    dose_tensor = torch.tensor([dose], dtype=F64, device=device)
    want = dose_weight(dose_tensor, pixel_size_angst=p, box_size=n)
    reached = plain[0, 0] > 1e-6
    ratio = dosed[0, 0][reached] / plain[0, 0][reached]
    torch.testing.assert_close(ratio, (want[0] ** 2)[reached], rtol=1e-12, atol=0.0)
    radius = frequency_indices(n, 2, device=device).to(F64).norm(dim=-1)[reached]
    assert ratio[radius == 0].item() == 1.0
    assert ratio[radius >= 7].max() < ratio[(radius > 0) & (radius <= 2)].min() < 1.0
    # A random tilt series: every weight shrinks or stays.
    gen = torch.Generator().manual_seed(8)
    rotations = _random_rotations((2, 6), gen).to(device)
    plain, _, _ = _weights(rotations, du=15000.0)
    dosed, _, _ = _weights(rotations, du=15000.0, dose=dose)
    assert torch.all(dosed <= plain)
    assert dosed.sum() < 0.9 * plain.sum()


def _slow_ctf(freq_x, freq_y, *, du, dv, angle_deg, bfactor, scale, dose):
    """Textbook CTF and dose weight at one frequency (1/Angstrom), with Python floats."""
    kv, cs, q0 = 300e3, 2.7e7, 0.1
    lam = 12.2643247 / math.sqrt(kv * (1 + 0.978466e-6 * kv))
    s2 = freq_x * freq_x + freq_y * freq_y
    theta = math.atan2(freq_y, freq_x)
    df = 0.5 * (du + dv) + 0.5 * (du - dv) * math.cos(2 * (theta - math.radians(angle_deg)))
    chi = math.pi * lam * df * s2 - 0.5 * math.pi * cs * lam**3 * s2 * s2 + math.asin(q0)
    ctf = scale * math.exp(-bfactor * s2 / 4) * math.sin(chi)
    if s2 > 0:
        ctf *= math.exp(-dose / (2 * (0.245 * math.sqrt(s2) ** -1.665 + 2.81)))
    return ctf


@pytest.mark.parametrize("shared", [False, True])
def test_matches_a_per_voxel_loop_on_a_box_of_8(device, shared):
    # shared: one tomogram's tilts for every particle (the slices are found once).
    gen = torch.Generator().manual_seed(21 + shared)
    b, f, n, p, slab = 3, 4, 8, 3.0, 1.3
    rotations = _random_rotations((1, f) if shared else (b, f), gen).expand(b, f, 3, 3)
    params = {
        "du": 10000 + 20000 * torch.rand(b, f, generator=gen, dtype=F64),
        "dv": 10000 + 20000 * torch.rand(b, f, generator=gen, dtype=F64),
        "angle_deg": 360 * torch.rand(b, f, generator=gen, dtype=F64) - 180,
        "bfactor": 100 * torch.rand(b, f, generator=gen, dtype=F64),
        "scale": 0.5 + torch.rand(b, f, generator=gen, dtype=F64),
        "dose": 80 * torch.rand(b, f, generator=gen, dtype=F64),
    }
    visible = torch.rand(b, f, generator=gen) > 0.3
    visible[0, 0] = False
    got = tilt_series_ctf_weights(
        rotations.to(device),
        defocus_u_angst=params["du"].to(device),
        defocus_v_angst=params["dv"].to(device),
        defocus_angle_deg=params["angle_deg"].to(device),
        dose_e_per_angst2=params["dose"].to(device),
        bfactor_angst2=params["bfactor"].to(device),
        scale=params["scale"].to(device),
        visible=visible.to(device),
        pixel_size_angst=p,
        box_size=n,
        slab_width_px=slab,
        max_chunk_elements=100,  # one tilt image (or particle) a chunk: none may interact
        **OPTICS,
    )
    want = torch.zeros(3, b, n, n, n // 2 + 1, dtype=F64)
    axis = [i if i <= n // 2 else i - n for i in range(n)]
    for i in range(b):
        for iz, kz in enumerate(axis):
            for iy, ky in enumerate(axis):
                for kx in range(n // 2 + 1):
                    ctf2 = mult = total = 0.0
                    for t in range(f):
                        r = rotations[i, t].tolist()
                        dist = r[2][0] * kx + r[2][1] * ky + r[2][2] * kz
                        w = max(0.0, 1.0 - abs(dist) / slab)
                        if not visible[i, t] or w == 0.0:
                            continue
                        fx = (r[0][0] * kx + r[0][1] * ky + r[0][2] * kz) / (n * p)
                        fy = (r[1][0] * kx + r[1][1] * ky + r[1][2] * kz) / (n * p)
                        c = _slow_ctf(fx, fy, **{k: float(v[i, t]) for k, v in params.items()})
                        ctf2, mult, total = ctf2 + w * c * c, mult + w, total + w * c
                    mean = total / mult if mult > 0 else 0.0
                    want[:, i, iz, iy, kx] = torch.tensor([ctf2, mult, mean], dtype=F64)
    # Both float64; the phase chi < 1e3 rad is evaluated in different orders (~10 u |chi|).
    for values, reference in zip(got, want, strict=True):
        torch.testing.assert_close(values.cpu(), reference, rtol=0.0, atol=1e-10)
    assert want[1].count_nonzero() > 100
