"""Random poses, origins, half sets and defocus; the tilt scheme; the options' checks."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cryorefine.errors import InputError
from cryorefine.geometry import axis_angle_to_matrix, euler_to_matrix
from cryorefine.simulate import (
    SimulationOptions,
    draw_particles,
    quaternion_to_matrix,
    random_rotations,
    tilt_scheme,
)


def test_quaternion_of_half_angle_is_the_rotation_about_its_axis() -> None:
    gen = torch.Generator().manual_seed(2)
    axes = torch.randn(50, 3, generator=gen, dtype=torch.float64)
    axes /= axes.norm(dim=-1, keepdim=True)
    angles = 360 * torch.rand(50, generator=gen, dtype=torch.float64) - 180
    half = torch.deg2rad(angles) / 2
    quaternions = torch.cat([torch.cos(half)[:, None], torch.sin(half)[:, None] * axes], dim=-1)
    # Both are built in float64 from a handful of products: agreement to ~10 ulp.
    torch.testing.assert_close(
        quaternion_to_matrix(quaternions), axis_angle_to_matrix(axes, angles), rtol=0, atol=1e-14
    )


def test_random_rotations_are_proper_and_haar_distributed() -> None:
    count = 4000
    rotations = random_rotations(count, generator=torch.Generator().manual_seed(3))
    eye = torch.eye(3, dtype=torch.float64).expand(count, 3, 3)
    torch.testing.assert_close(rotations @ rotations.transpose(1, 2), eye, rtol=0, atol=1e-14)
    torch.testing.assert_close(torch.linalg.det(rotations), torch.ones(count, dtype=torch.float64))
    # Haar measure: the rotation angle t has CDF (t - sin t) / pi. Kolmogorov-Smirnov:
    # P(D > d) <= 2 exp(-2 m d^2); d = sqrt(ln(2 / 1e-6) / (2 m)) fails once in a million.
    trace = rotations.diagonal(dim1=1, dim2=2).sum(-1)
    angle = np.sort(np.arccos(np.clip((trace.numpy() - 1) / 2, -1, 1)))
    cdf = (angle - np.sin(angle)) / np.pi
    steps = np.arange(1, count + 1) / count
    distance = max(np.abs(steps - cdf).max(), np.abs(steps - 1 / count - cdf).max())
    assert distance < math.sqrt(math.log(2 / 1e-6) / (2 * count))
    # E[A] = 0 under the Haar measure; each entry has variance 1/3: 6 standard errors.
    assert rotations.mean(dim=0).abs().max() < 6 * math.sqrt(1 / 3 / count)


def test_draws_respect_ranges_balance_half_sets_and_match_their_angles() -> None:
    draws = draw_particles(
        101,
        max_offset_px=2.5,
        defocus_range_angst=(10000.0, 12000.0),
        three_d=True,
        generator=torch.Generator().manual_seed(4),
    )
    torch.testing.assert_close(draws.rotations, euler_to_matrix(draws.angles_deg), rtol=0, atol=0)
    assert draws.origins_px.abs().max() <= 2.5
    assert draws.origins_px[:, 2].abs().max() > 0
    assert bool(((draws.defocus_angst >= 10000) & (draws.defocus_angst <= 12000)).all())
    assert torch.bincount(draws.half_sets).tolist() == [0, 51, 50]
    flat = draw_particles(
        5,
        max_offset_px=2.5,
        defocus_range_angst=(1.0, 2.0),
        three_d=False,
        generator=torch.Generator().manual_seed(4),
    )
    assert torch.equal(flat.origins_px[:, 2], torch.zeros(5, dtype=torch.float64))


def test_same_generator_seed_gives_the_same_draws() -> None:
    def draw(seed: int):
        return draw_particles(
            7,
            max_offset_px=1.0,
            defocus_range_angst=(1.0, 2.0),
            three_d=True,
            generator=torch.Generator().manual_seed(seed),
        )

    first, again, other = draw(5), draw(5), draw(6)
    assert torch.equal(first.angles_deg, again.angles_deg)
    assert torch.equal(first.origins_px, again.origins_px)
    assert not torch.equal(first.angles_deg, other.angles_deg)


def test_tilt_scheme_is_dose_symmetric_from_zero() -> None:
    scheme = tilt_scheme(
        torch.tensor([6.0, -3.0, 0.0, 3.0, -6.0], dtype=torch.float64),
        dose_per_tilt_e_per_angst2=2.5,
    )
    assert scheme.tilt_deg.tolist() == [-6.0, -3.0, 0.0, 3.0, 6.0]
    assert scheme.acquisition_order.tolist() == [4, 2, 0, 1, 3]
    assert scheme.pre_exposure_e_per_angst2.tolist() == [10.0, 5.0, 0.0, 2.5, 7.5]
    t = torch.deg2rad(scheme.tilt_deg)
    # R_f maps the tilt axis y to itself; its row 2 (projection direction) is (sin t, 0, cos t).
    y = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(scheme.matrices @ y, y.expand(5, 3), rtol=0, atol=1e-15)
    direction = torch.stack([t.sin(), torch.zeros_like(t), t.cos()], dim=-1)
    torch.testing.assert_close(scheme.matrices[:, 2], direction, rtol=0, atol=1e-15)


def test_options_list_the_tilt_angles_inclusive() -> None:
    options = SimulationOptions(output_dir=Path("x"), tilt_range_deg=(-60.0, 60.0), tilt_step_deg=3)
    angles = options.tilt_angles_deg()
    assert len(angles) == 41
    assert angles[0] == -60.0
    assert angles[-1] == 60.0
    assert options.is_tomography
    assert not options.noise_free
    assert SimulationOptions(output_dir=Path("x"), snr=math.inf).noise_free


@pytest.mark.parametrize(
    ("field", "value", "option"),
    [
        ("box_size", 31, "--box"),
        ("n_particles", 0, "--n_particles"),
        ("snr", -1.0, "--snr"),
        ("snr", math.nan, "--snr"),
        ("defocus_range_angst", (20000.0, 10000.0), "--defocus_range"),
        ("tilt_range_deg", (-95.0, 60.0), "--tilt_range"),
        ("max_offset_px", 40.0, "--max_offset"),
        ("data_format", "relion5", "--format"),
        ("ref_rotation_deg", 200.0, "--ref_rotation_deg"),
        ("pixel_size_angst", 0.0, "--angpix"),
    ],
)
def test_bad_options_name_the_command_line_option(field: str, value: object, option: str) -> None:
    with pytest.raises(InputError, match=f"^{option} "):
        SimulationOptions(output_dir=Path("x"), **{field: value})
