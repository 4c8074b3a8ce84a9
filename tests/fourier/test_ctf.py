"""CTF, dose weights and 3D CTF volumes against closed formulas written out here."""

import math

import pytest
import torch

from cryorefine.errors import InputError
from cryorefine.fourier.ctf import (
    ctf_2d,
    ctf_volume_to_half_complex,
    dose_weight,
    electron_wavelength_angst,
)

F64 = torch.float64


def _wavelength(voltage_kv: float) -> float:
    """Relativistic de Broglie wavelength from CODATA constants (Angstrom)."""
    h, m, e, c = 6.62607015e-34, 9.1093837015e-31, 1.602176634e-19, 299792458.0
    volts = voltage_kv * 1e3
    return h / math.sqrt(2 * m * e * volts * (1 + e * volts / (2 * m * c * c))) * 1e10


def _gamma(kx, ky, n, p, du, dv, angle_deg, kv, cs_mm, q0, phase_deg):
    """Phase of the CTF at integer frequency (kx, ky), written from the textbook form.

    chi = pi lambda df(theta) s^2 - pi/2 Cs lambda^3 s^4 + phase + arcsin(Q0),
    df(theta) = (dU + dV)/2 + (dU - dV)/2 cos(2 (theta - angle)); RELION's gamma = -chi.
    """
    lam = 12.2643247 / math.sqrt(kv * 1e3 * (1 + 0.978466e-6 * kv * 1e3))
    sx, sy = kx / (n * p), ky / (n * p)
    s2 = sx * sx + sy * sy
    theta = math.atan2(sy, sx)
    df = 0.5 * (du + dv) + 0.5 * (du - dv) * math.cos(2 * (theta - math.radians(angle_deg)))
    chi = math.pi * lam * df * s2 - 0.5 * math.pi * cs_mm * 1e7 * lam**3 * s2 * s2
    return -(chi + math.radians(phase_deg) + math.asin(q0))


def _one(value: float, device) -> torch.Tensor:
    return torch.tensor([value], dtype=F64, device=device)


def _ctf(device, *, du, dv, angle=0.0, kv=300.0, cs=2.7, q0=0.1, phase=0.0, **options):
    return ctf_2d(
        defocus_u_angst=_one(du, device),
        defocus_v_angst=_one(dv, device),
        defocus_angle_deg=_one(angle, device),
        voltage_kv=kv,
        spherical_aberration_mm=cs,
        amplitude_contrast=q0,
        phase_shift_deg=phase,
        **{"pixel_size_angst": 1.5, "box_size": 32, **options},
    )[0]


def _defocus_for_zero(radius_px, order, *, n=32, p=1.5, kv=300.0, cs=2.7, q0=0.1):
    """Defocus (A) that puts the zero gamma = -order * pi of a round CTF at radius_px."""
    lam = 12.2643247 / math.sqrt(kv * 1e3 * (1 + 0.978466e-6 * kv * 1e3))
    u2 = (radius_px / (n * p)) ** 2
    k2 = 0.5 * math.pi * cs * 1e7 * lam**3
    return (k2 * u2 * u2 - math.asin(q0) + order * math.pi) / (math.pi * lam * u2)


def test_wavelength_agrees_with_relativistic_formula_from_codata():
    for kv in (100.0, 200.0, 300.0):
        got = float(electron_wavelength_angst(kv))
        # RELION's 12.2643247 is CODATA 2018's h / sqrt(2 m e) = 12.2642597 A V^0.5
        # plus 5.3e-6 (older constants); its 0.978466e-6 differs from e / (2 m c^2) by
        # 1e-5 relative inside a term <= 0.3 of the root: together < 7e-6 relative.
        assert got == pytest.approx(_wavelength(kv), rel=1e-5)
    # Textbook 300 kV value 0.01969 A, quoted to 4 significant digits.
    assert float(electron_wavelength_angst(300.0)) == pytest.approx(0.01969, abs=5e-6)


def test_ctf_matches_closed_formula_for_a_batch_of_particles(device):
    gen = torch.Generator().manual_seed(11)
    b, n, p = 4, 32, 1.3
    du = 5000 + 30000 * torch.rand(b, generator=gen, dtype=F64)
    dv = du + 4000 * (torch.rand(b, generator=gen, dtype=F64) - 0.5)  # both signs
    angle = 360 * torch.rand(b, generator=gen, dtype=F64) - 180
    kv = torch.tensor([300.0, 200.0, 300.0, 100.0], dtype=F64)
    cs = torch.tensor([2.7, 0.01, 1.4, 2.0], dtype=F64)
    q0 = torch.tensor([0.1, 0.07, 0.2, 0.0], dtype=F64)
    phase = torch.tensor([0.0, 90.0, 30.0, 0.0], dtype=F64)
    bfac = torch.tensor([0.0, 50.0, -20.0, 120.0], dtype=F64)
    scale = torch.tensor([1.0, 0.9, 1.2, 0.5], dtype=F64)
    got = ctf_2d(
        defocus_u_angst=du.to(device),
        defocus_v_angst=dv.to(device),
        defocus_angle_deg=angle.to(device),
        voltage_kv=kv.to(device),
        spherical_aberration_mm=cs.to(device),
        amplitude_contrast=q0.to(device),
        phase_shift_deg=phase.to(device),
        bfactor_angst2=bfac.to(device),
        scale=scale.to(device),
        pixel_size_angst=p,
        box_size=n,
    )
    assert got.shape == (b, n, n // 2 + 1)
    assert got.dtype == F64
    assert got.device.type == device.type
    rows = torch.randint(0, n, (40,), generator=gen).tolist()
    cols = torch.randint(0, n // 2 + 1, (40,), generator=gen).tolist()
    for i in range(b):
        args = (du[i], dv[i], angle[i], kv[i], cs[i], q0[i], phase[i])
        for row, col in zip(rows, cols, strict=True):
            ky = row if row <= n // 2 else row - n
            gamma = _gamma(col, ky, n, p, *(float(a) for a in args))
            s2 = (col * col + ky * ky) / (n * p) ** 2
            want = -float(scale[i]) * math.exp(-float(bfac[i]) * s2 / 4) * math.sin(gamma)
            # |gamma| < 1e3 rad here; two float64 evaluations differ by ~10 u |gamma| ~ 1e-12.
            assert float(got[i, row, col]) == pytest.approx(want, abs=1e-10)


def test_round_ctf_is_zero_on_the_analytic_radius(device):
    # gamma(|k| = 5) = -pi exactly by construction of the defocus: zero on (5,0), (3,4), (0,5).
    df = _defocus_for_zero(5, 1)
    ctf = _ctf(device, du=df, dv=df)
    n = 32
    for kx, ky in [(5, 0), (3, 4), (4, -3), (0, 5), (0, -5)]:
        # |sin(gamma)| <= |gamma error| ~ 10 u * pi; allow 1e-12.
        assert abs(float(ctf[ky % n, kx])) < 1e-12
    for kx, ky in [(4, 0), (6, 0), (4, 4), (2, 4)]:
        assert abs(float(ctf[ky % n, kx])) > 0.05


@pytest.mark.parametrize("order_v", [2, 5])  # dV < dU, then dV > dU
def test_defocus_u_lies_along_the_defocus_angle(device, order_v):
    # U's first zero at radius 5 along (3, 4) (angle 53.13 deg); V's zero of order
    # order_v at radius 10 along the perpendicular (8, -6).
    du, dv = _defocus_for_zero(5, 1), _defocus_for_zero(10, order_v)
    assert (dv > du) == (order_v == 5)
    angle = math.degrees(math.atan2(4, 3))
    n = 32
    ctf = _ctf(device, du=du, dv=dv, angle=angle)
    assert abs(float(ctf[4, 3])) < 1e-12
    assert abs(float(ctf[-6 % n, 8])) < 1e-12
    turned = _ctf(device, du=du, dv=dv, angle=angle + 90.0)  # now dV lies along (3, 4)
    assert abs(float(turned[4, 3])) > 0.05


def test_ctf_is_even_on_the_kx0_column(device):
    ctf = _ctf(device, du=21000.0, dv=17000.0, angle=33.0, phase=20.0)
    n = 32
    mirror = (-torch.arange(n, device=device)) % n
    # Same float64 operations on (0, ky) and (0, -ky): squares of exact negatives agree.
    torch.testing.assert_close(ctf[:, 0], ctf[mirror, 0], rtol=0.0, atol=0.0)


def test_intact_first_peak_is_one_where_the_phase_is_below_pi_over_2(device):
    n, p = 32, 1.5
    args = {"du": 25000.0, "dv": 22000.0, "angle": 10.0, "q0": 0.1}
    plain = _ctf(device, **args)
    intact = _ctf(device, **args, intact_first_peak=True)
    inside_count = 0
    for row in range(n):
        ky = row if row <= n // 2 else row - n
        for kx in range(n // 2 + 1):
            gamma = _gamma(kx, ky, n, p, 25000.0, 22000.0, 10.0, 300.0, 2.7, 0.1, 0.0)
            if abs(gamma) < 0.5 * math.pi - 1e-9:
                inside_count += 1
                assert float(intact[row, kx]) == 1.0
            elif abs(gamma) > 0.5 * math.pi + 1e-9:
                assert float(intact[row, kx]) == float(plain[row, kx])
    assert inside_count >= 5  # DC and its neighbours: the test covers the replaced region


def test_bfactor_and_scale_multiply_by_the_envelope(device):
    n, p = 32, 1.5
    base = _ctf(device, du=15000.0, dv=15000.0)
    damped = _ctf(device, du=15000.0, dv=15000.0, bfactor_angst2=80.0, scale=0.7)
    ky = torch.fft.fftfreq(n, d=1.0, dtype=F64, device=device)[:, None] * n
    kx = torch.arange(n // 2 + 1, dtype=F64, device=device)[None, :]
    s2 = (kx**2 + ky**2) / (n * p) ** 2
    want = base * 0.7 * torch.exp(-80.0 * s2 / 4)
    # One extra float64 exp and two products: a few ulps.
    torch.testing.assert_close(damped, want, rtol=1e-14, atol=1e-15)


def test_result_dtype_follows_request(device):
    ctf32 = _ctf(device, du=15000.0, dv=14000.0, dtype=torch.float32)
    ctf64 = _ctf(device, du=15000.0, dv=14000.0)
    assert ctf32.dtype == torch.float32
    # Computed in float64, rounded once: half an ulp of float32.
    torch.testing.assert_close(ctf32.double(), ctf64, rtol=2.0**-24, atol=2.0**-25)


def test_dose_weight_is_one_at_zero_dose_and_falls_with_frequency(device):
    n, p = 32, 2.0
    doses = torch.tensor([0.0, 3.0, 30.0], dtype=F64, device=device)
    weight = dose_weight(doses, pixel_size_angst=p, box_size=n)
    assert weight.shape == (3, n, n // 2 + 1)
    torch.testing.assert_close(weight[0], torch.ones_like(weight[0]), rtol=0.0, atol=0.0)
    assert torch.all(weight[:, 0, 0] == 1.0)  # DC is never filtered
    ky = torch.fft.fftfreq(n, dtype=F64, device=device)[:, None] * n
    radius = torch.sqrt(torch.arange(n // 2 + 1, dtype=F64, device=device)[None, :] ** 2 + ky**2)
    order = torch.argsort(radius.flatten())
    for w in weight[1:]:
        along = w.flatten()[order]
        # non-increasing with |k|; equal radii may differ by an ulp in float64
        assert torch.all(along[1:] <= along[:-1] * (1 + 1e-15))
    assert torch.all(weight[2] <= weight[1])  # and with dose


def test_dose_weight_matches_grant_grigorieff_formula(device):
    n, p, dose = 24, 1.7, 12.5
    doses = torch.tensor([dose], dtype=F64, device=device)
    got = dose_weight(doses, pixel_size_angst=p, box_size=n)
    for row, col in [(0, 1), (3, 5), (20, 12), (12, 0)]:
        ky = row if row <= n // 2 else row - n
        k = math.hypot(col, ky) / (n * p)
        want = math.exp(-dose / (2 * (0.245 * k**-1.665 + 2.81)))
        assert float(got[0, row, col]) == pytest.approx(want, rel=1e-13)
    at200 = dose_weight(doses, pixel_size_angst=p, box_size=n, voltage_kv=200.0)
    scaled = dose_weight(
        torch.tensor([dose / 0.8], device=device, dtype=F64), pixel_size_angst=p, box_size=n
    )
    torch.testing.assert_close(at200, scaled, rtol=0.0, atol=0.0)
    with pytest.raises(ValueError, match="120"):
        dose_weight(torch.tensor([1.0]), pixel_size_angst=p, box_size=n, voltage_kv=120.0)


def _even_function(k: torch.Tensor) -> torch.Tensor:
    """An arbitrary f(k) = f(-k) of the integer frequency (x, y, z)."""
    kf = k.to(F64)
    return torch.cos(0.3 * kf[..., 0] + 0.2 * kf[..., 1] - 0.45 * kf[..., 2]) - 0.2


def test_ctf_volume_layouts_give_the_same_half_complex_values(device):
    n = 8
    nh = n // 2 + 1
    axis = torch.arange(n, device=device)
    kz, ky, kx = torch.meshgrid(n // 2 - axis, n // 2 - axis, n // 2 - axis, indexing="ij")
    cube = _even_function(torch.stack([kx, ky, kz], dim=-1))  # voxel v holds f(n//2 - v)
    full = torch.where(axis <= n // 2, axis, axis - n)  # FFTW order, index n//2 is +n//2
    hz, hy, hx = torch.meshgrid(full, full, torch.arange(nh, device=device), indexing="ij")
    half_k = torch.stack([hx, hy, hz], dim=-1)
    want = _even_function(half_k)
    got, multiplicity = ctf_volume_to_half_complex(cube, box_size=n, ctf_premultiplied=False)
    assert multiplicity is None
    torch.testing.assert_close(got, want, rtol=0.0, atol=1e-15)  # a gather: exact up to cos
    same, _ = ctf_volume_to_half_complex(want, box_size=n, ctf_premultiplied=False)
    torch.testing.assert_close(same, want, rtol=0.0, atol=0.0)
    squared, _ = ctf_volume_to_half_complex(
        want, box_size=n, ctf_premultiplied=True, ctf3d_squared=False
    )
    torch.testing.assert_close(squared, want * want, rtol=0.0, atol=0.0)
    absolute, _ = ctf_volume_to_half_complex(want, box_size=n, ctf_premultiplied=True)
    torch.testing.assert_close(absolute, want.abs(), rtol=0.0, atol=0.0)


def test_ctf_and_multiplicity_volume_is_split_cut_at_nyquist_and_thresholded(device):
    n = 8
    gen = torch.Generator().manual_seed(2)
    ctf2 = torch.rand(n, n, n // 2 + 1, generator=gen, dtype=F64).to(device)
    multi = 3 * torch.rand(n, n, n // 2 + 1, generator=gen, dtype=F64).to(device)
    multi[0, 1, 1] = 0.005  # below the 0.01 threshold
    stacked = torch.cat([ctf2, multi], dim=0)
    got, got_multi = ctf_volume_to_half_complex(stacked, box_size=n, ctf_premultiplied=True)
    assert got_multi is not None
    full = torch.fft.fftfreq(n, device=device, dtype=F64) * n
    half = torch.arange(n // 2 + 1, device=device, dtype=F64)
    kz, ky, kx = torch.meshgrid(full, full, half, indexing="ij")
    inside = kx**2 + ky**2 + kz**2 <= (n // 2) ** 2
    torch.testing.assert_close(got, torch.where(inside, ctf2, 0.0), rtol=0.0, atol=0.0)
    want_multi = torch.where(inside & (multi > 0.01), multi, 0.0)
    torch.testing.assert_close(got_multi, want_multi, rtol=0.0, atol=0.0)
    assert float(got_multi[0, 1, 1]) == 0.0


@pytest.mark.parametrize("layout", ["cube", "half", "ctf_and_multiplicity"])
def test_a_batch_of_ctf_volumes_converts_as_each_volume_alone(layout, device):
    n, nh = 8, 5
    gen = torch.Generator().manual_seed(31)
    shape = {"cube": (n, n, n), "half": (n, n, nh), "ctf_and_multiplicity": (2 * n, n, nh)}
    volumes = (3 * torch.rand(4, *shape[layout], generator=gen, dtype=F64)).to(device)
    got, got_multi = ctf_volume_to_half_complex(volumes, box_size=n, ctf_premultiplied=True)
    for i in range(4):  # a gather and elementwise maps: exactly equal
        want, want_multi = ctf_volume_to_half_complex(
            volumes[i], box_size=n, ctf_premultiplied=True
        )
        torch.testing.assert_close(got[i], want, rtol=0.0, atol=0.0)
        if want_multi is None:
            assert got_multi is None
        else:
            assert got_multi is not None
            torch.testing.assert_close(got_multi[i], want_multi, rtol=0.0, atol=0.0)


def test_ctf_volume_errors_name_the_file():
    n = 8
    with pytest.raises(InputError, match=r"sub01_ctf\.mrc.*\(7, 8, 5\)"):
        ctf_volume_to_half_complex(
            torch.zeros(7, 8, 5), box_size=n, ctf_premultiplied=True, file_name="sub01_ctf.mrc"
        )
    bad = torch.zeros(2 * n, n, n // 2 + 1)
    bad[n + 1, 0, 0] = -1.0
    with pytest.raises(InputError, match=r"sub02_ctf\.mrc.*negative"):
        ctf_volume_to_half_complex(
            bad, box_size=n, ctf_premultiplied=True, file_name="sub02_ctf.mrc"
        )
    with pytest.raises(InputError, match="premultiplied"):
        ctf_volume_to_half_complex(torch.zeros(2 * n, n, 5), box_size=n, ctf_premultiplied=False)
