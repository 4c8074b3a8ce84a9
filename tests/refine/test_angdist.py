"""The angular-distribution BILD file: one cylinder per direction with mass, as RELION draws it."""

import math
from pathlib import Path

import numpy as np
import pytest

from cryorefine.refine.angdist import angdist_bild, write_angdist_bild


def _cylinders(text: str) -> list[tuple[list[float], list[float]]]:
    lines = text.splitlines()
    assert len(lines) % 2 == 0
    pairs = []
    for colour, cylinder in zip(lines[::2], lines[1::2], strict=True):
        assert colour.startswith(".color ")
        assert cylinder.startswith(".cylinder ")
        pairs.append(([float(v) for v in colour.split()[1:]],
                      [float(v) for v in cylinder.split()[1:]]))  # fmt: skip
    return pairs


def test_a_single_direction_is_one_cylinder_out_along_it_from_the_sphere():
    rot_tilt = np.array([[0.0, 90.0], [90.0, 90.0], [0.0, 0.0], [45.0, 30.0]])
    pdf = np.array([0.0, 2.0, 0.0, 0.0])  # all mass on +y
    r, step = 100.0, 7.5
    (colour, cylinder), = _cylinders(
        angdist_bild(pdf, rot_tilt, radius_angst=r, angular_step_deg=step)
    )  # fmt: skip
    # from R v + R to 1.3 R v + R about the box centre (R, R, R), v = +y
    np.testing.assert_allclose(cylinder[:6], [r, 2 * r, r, r, 2.3 * r, r], rtol=1e-5)
    assert cylinder[6] == pytest.approx(0.5 * math.pi * r * step / 360, rel=1e-5)
    # mean 0.5, population sigma sqrt(3) / 2: (2 - 0.5) / sigma = sqrt(3) -> (sqrt(3) + 1) / 6
    c = (math.sqrt(3) + 1) / 6
    np.testing.assert_allclose(colour, [c, 0.0, 1 - c], rtol=1e-5, atol=1e-6)


def test_lengths_follow_the_mass_and_zero_mass_is_left_out():
    gen = np.random.default_rng(3)
    rot_tilt = np.stack([gen.uniform(0, 360, 50), gen.uniform(0, 180, 50)], axis=1)
    pdf = gen.uniform(0, 1, 50) * (gen.uniform(0, 1, 50) > 0.3)
    r = 50.0
    cylinders = _cylinders(angdist_bild(pdf, rot_tilt, radius_angst=r, angular_step_deg=3.75))
    kept = pdf > 0
    assert len(cylinders) == int(kept.sum())
    lengths = [np.linalg.norm(np.subtract(c[3:6], c[0:3])) for _, c in cylinders]
    np.testing.assert_allclose(lengths, 0.3 * r * pdf[kept] / pdf.max(), rtol=1e-4, atol=1e-3)
    colours = np.array([colour[0] for colour, _ in cylinders])
    assert ((colours >= 0) & (colours <= 1)).all()
    # the colour grows with the mass (blue to red)
    order = np.argsort(pdf[kept])
    assert (np.diff(colours[order]) >= -1e-6).all()


def test_no_mass_writes_an_empty_file(tmp_path: Path):
    path = write_angdist_bild(
        tmp_path / "run_class001_angdist.bild",
        np.zeros(3),
        np.zeros((3, 2)),
        radius_angst=10.0,
        angular_step_deg=7.5,
    )
    assert path.read_text() == ""
