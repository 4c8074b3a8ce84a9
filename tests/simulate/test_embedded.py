"""The packaged default map: shape, voxel size, centring, C6 symmetry, band limit, provenance."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from cryorefine.simulate.embedded import (
    EMBEDDED_MAP_DESCRIPTION,
    EMBEDDED_PIXEL_SIZE_ANGST,
    EMBEDDED_SYMMETRY,
    embedded_map,
)

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "make_embedded_map.py"


@pytest.fixture(scope="module")
def volume() -> np.ndarray:
    return embedded_map()[0]


def _turn_about_z(volume: np.ndarray, angle_deg: float) -> np.ndarray:
    """Rotate a (z, y, x) box about the z axis through voxel n // 2, linear interpolation.

    ``ndimage.rotate`` turns about the array centre ``(size - 1) / 2``, which is
    31.5 for a box of 64, half a voxel off RELION's centre 32. One zero plane
    after the last y and x makes the array odd, and its centre ``n / 2 = n // 2``.
    """
    n = volume.shape[-1]
    padded = np.pad(volume, ((0, 0), (0, 1), (0, 1)))
    turned = ndimage.rotate(padded, angle_deg, axes=(1, 2), reshape=False, order=1)
    return turned[:, :n, :n]


def _correlation_in_cylinder(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation over the cylinder about z that a turn keeps inside the box."""
    n = a.shape[-1]
    y, x = np.mgrid[:n, :n] - n // 2
    inside = np.broadcast_to(np.hypot(x, y) < n // 2 - 1, a.shape)
    return float(np.corrcoef(a[inside], b[inside])[0, 1])


def test_map_is_a_cubic_even_box_of_64_to_96_voxels(volume: np.ndarray) -> None:
    n = volume.shape[0]
    assert volume.shape == (n, n, n)
    assert n % 2 == 0
    assert 64 <= n <= 96
    assert volume.dtype == np.float32


def test_pixel_size_is_the_stated_one() -> None:
    _, pixel_size_angst = embedded_map()
    assert pixel_size_angst == EMBEDDED_PIXEL_SIZE_ANGST
    assert f"{EMBEDDED_PIXEL_SIZE_ANGST} Angstrom" in EMBEDDED_MAP_DESCRIPTION
    assert EMBEDDED_SYMMETRY == "C6"


def test_each_call_returns_a_fresh_array() -> None:
    first, _ = embedded_map()
    first[...] = 0.0
    second, _ = embedded_map()
    assert np.any(second != 0.0)


def test_values_are_finite(volume: np.ndarray) -> None:
    assert np.all(np.isfinite(volume))


def test_density_is_positive_dominated(volume: np.ndarray) -> None:
    # A low-passed density of atoms dips below zero only in the filter's ringing.
    positive = volume[volume > 0].sum(dtype=np.float64)
    negative = -volume[volume < 0].sum(dtype=np.float64)
    assert positive > negative


def test_centre_of_mass_is_at_the_box_centre_voxel(volume: np.ndarray) -> None:
    n = volume.shape[0]
    weights = volume.astype(np.float64)
    indices = np.indices(volume.shape)  # (z, y, x)
    com_z, com_y, com_x = (np.sum(i * weights) / np.sum(weights) for i in indices)
    # x, y: the C6 axis is placed on voxel n // 2; the centre of mass sits on it up to the
    # fragments of neighbouring hexamers, whose unequal lengths break C6 slightly.
    assert abs(com_x - n // 2) < 1.0
    assert abs(com_y - n // 2) < 1.0
    assert abs(com_z - n // 2) < 2.0


def test_turn_about_z_keeps_the_centre_voxel_fixed() -> None:
    # The helper below must turn about voxel n // 2, not the array centre (n - 1) / 2.
    n = 64
    point = np.zeros((n, n, n))
    point[n // 2, n // 2, n // 2] = 1.0
    turned = _turn_about_z(point, 60.0)
    # The centre maps onto itself, so linear interpolation reads exactly that voxel.
    # About (n - 1) / 2 it would land 0.7 voxel away and read less than 1 here.
    assert turned[n // 2, n // 2, n // 2] == pytest.approx(1.0, abs=1e-12)


def test_turn_about_z_by_90_degrees_moves_x_onto_y() -> None:
    n = 64
    point = np.zeros((n, n, n))
    point[n // 2, n // 2, n // 2 + 5] = 1.0  # 5 voxels along +x from the centre
    turned = _turn_about_z(point, 90.0)
    # A quarter turn maps the grid onto itself: the point lands on a voxel 5 along y.
    z, y, x = np.unravel_index(np.argmax(turned), turned.shape)
    assert (z, x) == (n // 2, n // 2)
    assert abs(y - n // 2) == 5
    assert turned.max() == pytest.approx(1.0, abs=1e-12)


def test_map_matches_its_60_degree_turn_about_z(volume: np.ndarray) -> None:
    # The model was built into one map refined with C6 imposed (Refine3D job074,
    # --sym C6), so the six subunits sit in identical density. What breaks C6 is
    # model building alone: side chains placed per chain, and the fragments of
    # neighbouring hexamers, built to unequal lengths (about 5% of the residues).
    # Unmatched mass of that size costs a few hundredths of correlation; linear
    # interpolation of a map band-limited at 0.87 Nyquist costs less than one.
    # An axis one voxel off n // 2, or tilted by 5 degrees, brings it to 0.9 or below.
    turned = _turn_about_z(volume, 60.0)
    assert _correlation_in_cylinder(volume, turned) > 0.9


def test_map_does_not_match_its_30_degree_turn(volume: np.ndarray) -> None:
    # Half the C6 period puts each subunit between two others: the correlation above
    # is a property of the 6-fold, not of any blob turned about its axis.
    turned = _turn_about_z(volume, 30.0)
    assert _correlation_in_cylinder(volume, turned) < 0.9


def test_map_is_band_limited_below_nyquist(volume: np.ndarray) -> None:
    n = volume.shape[0]
    power = np.abs(np.fft.fftn(volume.astype(np.float64))) ** 2
    k = np.fft.fftfreq(n) * n
    radius = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
    power[0, 0, 0] = 0.0  # the mean is no frequency content
    # The last 10% of shells up to Nyquist, and the corners beyond it.
    high = power[radius >= 0.9 * (n // 2)].sum()
    assert high < 1e-3 * power.sum()


def test_packaged_map_regenerates_from_the_tutorial_model(
    volume: np.ndarray, hiv_tutorial: Path
) -> None:
    gemmi = pytest.importorskip("gemmi")
    cif = hiv_tutorial / "ModelAngelo" / "job080" / "job080.cif"
    if not cif.is_file():
        pytest.skip(f"tutorial model not found at {cif}")
    spec = importlib.util.spec_from_file_location("make_embedded_map", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    rebuilt = script.build_embedded_map(cif)  # the defaults are the packaged map's
    # Packaged copy: float16, rounded by at most 2**-11 of each value. gemmi sums up
    # to ~1e3 Gaussian terms per grid point in float32 (2**-24 each): 1e3 * 2**-24 of
    # the maximum covers a different summation order on another machine.
    atol = 1e3 * 2.0**-24 * np.abs(rebuilt).max()
    np.testing.assert_allclose(volume, rebuilt, rtol=2.0**-11, atol=atol)
    # Units: the integral is the sum of the atoms' electron scattering factors at zero
    # angle (Angstrom). Float16 rounding moves it by at most 2**-11 of the sum of |v|;
    # gemmi cuts each Gaussian where it falls below 1e-8 / Angstrom^2, beyond ~5 sigma
    # even for the widest (B ~ 190 Angstrom^2): < 1e-5 of the mass.
    structure = gemmi.read_structure(str(cif))
    f0 = sum(
        sum(atom.element.c4322.get_coefs()[:5])
        for chain in structure[0]
        for residue in chain
        for atom in residue
    )
    voxel = EMBEDDED_PIXEL_SIZE_ANGST**3
    integral = volume.sum(dtype=np.float64) * voxel
    bound = 2.0**-11 * np.abs(volume).sum(dtype=np.float64) * voxel + 1e-5 * f0
    assert abs(integral - f0) < bound
