"""`cryorefine star-handler`: recentring as relion_star_handler --center, --select, --combine."""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile

from cryorefine.cli.main import main

N_ROWS = 1200
PIXEL = {1: 1.35, 2: 2.7}  # two optics groups with different pixel sizes


def relion_matrix(rot: float, tilt: float, psi: float) -> np.ndarray:
    """RELION's Euler matrix written out element by element (REFINE_SPEC §1.1 table)."""
    a, b, g = (math.radians(v) for v in (rot, tilt, psi))
    ca, sa, cb, sb, cg, sg = (
        math.cos(a),
        math.sin(a),
        math.cos(b),
        math.sin(b),
        math.cos(g),
        math.sin(g),
    )
    return np.array(
        [
            [cg * cb * ca - sg * sa, cg * cb * sa + sg * ca, -cg * sb],
            [-sg * cb * ca - cg * sa, -sg * cb * sa + cg * ca, sg * sb],
            [sb * ca, sb * sa, cb],
        ]
    )


def expected_origins(
    table: pd.DataFrame, pixel: np.ndarray, centre: np.ndarray, dims: int
) -> np.ndarray:
    """o_new = o - A c per row, in Angstrom (REFINE_SPEC §9.1), one row at a time."""
    out = np.zeros((len(table), dims))
    labels = ["rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst"][:dims]
    for i, row in enumerate(table.itertuples(index=False)):
        row = row._asdict()
        a = relion_matrix(row["rlnAngleRot"], row["rlnAngleTilt"], row["rlnAnglePsi"])
        origin_px = np.array([row[label] for label in labels]) / pixel[i]
        out[i] = (origin_px - (a @ centre)[:dims]) * pixel[i]
    return out


def write_particles(path: Path, *, dims: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    optics = pd.DataFrame(
        {
            "rlnOpticsGroup": [1, 2],
            "rlnOpticsGroupName": ["opticsGroup1", "opticsGroup2"],
            "rlnVoltage": [300.0, 300.0],
            "rlnSphericalAberration": [2.7, 2.7],
            "rlnAmplitudeContrast": [0.1, 0.1],
            "rlnImagePixelSize": [PIXEL[1], PIXEL[2]],
            "rlnImageSize": [64, 64],
            "rlnImageDimensionality": [dims, dims],
        }
    )
    particles = pd.DataFrame(
        {
            "rlnImageName": [f"{i + 1:06d}@Extract/particles.mrcs" for i in range(N_ROWS)],
            "rlnAngleRot": rng.uniform(-180, 180, N_ROWS),
            "rlnAngleTilt": rng.uniform(0, 180, N_ROWS),
            "rlnAnglePsi": rng.uniform(-180, 180, N_ROWS),
            "rlnOriginXAngst": rng.uniform(-20, 20, N_ROWS),
            "rlnOriginYAngst": rng.uniform(-20, 20, N_ROWS),
            "rlnOpticsGroup": rng.integers(1, 3, N_ROWS),
            "rlnDefocusU": rng.uniform(1e4, 3e4, N_ROWS),
        }
    )
    if dims == 3:
        particles.insert(6, "rlnOriginZAngst", rng.uniform(-20, 20, N_ROWS))
    starfile.write({"optics": optics, "particles": particles}, path)
    return starfile.read(path, always_dict=True)  # the values as the file holds them


@pytest.mark.parametrize("dims", [2, 3])
def test_recentred_origins_equal_relions_formula_on_every_row(tmp_path, dims):
    blocks = write_particles(tmp_path / "in.star", dims=dims, seed=dims)
    centre = np.array([3.5, -7.25, 11.0])
    status = main(
        [
            "star-handler",
            "--i",
            str(tmp_path / "in.star"),
            "--o",
            str(tmp_path / "out.star"),
            "--center",
            "--center_X",
            "3.5",
            "--center_Y",
            "-7.25",
            "--center_Z",
            "11",
        ]
    )
    assert status == 0
    got = starfile.read(tmp_path / "out.star", always_dict=True)["particles"]
    table = blocks["particles"]
    pixel = blocks["optics"]["rlnImagePixelSize"].to_numpy()[table["rlnOpticsGroup"].to_numpy() - 1]
    want = expected_origins(table, pixel, centre, dims)
    labels = ["rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst"][:dims]
    # Float64 arithmetic (~1e-14 A) and 12 significant digits in the file (~1e-10 A at 100 A):
    # far inside RELION's 6 decimals; 1e-6 A is the bar.
    np.testing.assert_allclose(got[labels].to_numpy(), want, rtol=0, atol=1e-6)
    assert ("rlnOriginZAngst" in got.columns) == (dims == 3)
    # Everything else untouched.
    for label in ("rlnAngleRot", "rlnDefocusU", "rlnOpticsGroup"):
        np.testing.assert_allclose(got[label], table[label], rtol=1e-12)
    assert got["rlnImageName"].tolist() == table["rlnImageName"].tolist()


def test_recentring_the_real_relion5_run_data_matches_the_formula(tmp_path, hiv_tutorial):
    source = hiv_tutorial / "Refine3D" / "job074" / "run_data.star"
    out = tmp_path / "centred.star"
    status = main(
        [
            "star-handler",
            "--i",
            str(source),
            "--o",
            str(out),
            "--center",
            "--center_X",
            "-2",
            "--center_Y",
            "5",
            "--center_Z",
            "9.5",
        ]
    )
    assert status == 0
    original = starfile.read(source, always_dict=True)
    got = starfile.read(out, always_dict=True)["particles"]
    table = original["particles"]
    optics = original["optics"].set_index("rlnOpticsGroup")
    pixel = optics.loc[table["rlnOpticsGroup"], "rlnImagePixelSize"].to_numpy()
    want = expected_origins(table, pixel, np.array([-2.0, 5.0, 9.5]), 3)
    labels = ["rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst"]
    np.testing.assert_allclose(got[labels].to_numpy(), want, rtol=0, atol=1e-6)
    centred = [
        "rlnCenteredCoordinateXAngst",
        "rlnCenteredCoordinateYAngst",
        "rlnCenteredCoordinateZAngst",
    ]
    np.testing.assert_array_equal(got[centred].to_numpy(), table[centred].to_numpy())


def test_centre_zero_leaves_origins_unchanged(tmp_path):
    blocks = write_particles(tmp_path / "in.star", dims=3, seed=9)
    assert (
        main(
            [
                "star-handler",
                "--i",
                str(tmp_path / "in.star"),
                "--o",
                str(tmp_path / "o.star"),
                "--center",
            ]
        )
        == 0
    )
    got = starfile.read(tmp_path / "o.star", always_dict=True)["particles"]
    np.testing.assert_allclose(
        got["rlnOriginZAngst"], blocks["particles"]["rlnOriginZAngst"], atol=1e-9
    )


def test_select_keeps_rows_within_inclusive_bounds(tmp_path):
    blocks = write_particles(tmp_path / "in.star", dims=2, seed=4)
    defocus = blocks["particles"]["rlnDefocusU"]
    low, high = float(defocus.iloc[0]), float(defocus.quantile(0.75))
    status = main(
        [
            "star-handler",
            "--i",
            str(tmp_path / "in.star"),
            "--o",
            str(tmp_path / "sel.star"),
            "--select",
            "rlnDefocusU",
            "--minval",
            repr(low),
            "--maxval",
            repr(high),
        ]
    )
    assert status == 0
    got = starfile.read(tmp_path / "sel.star", always_dict=True)
    expected = ((defocus >= low) & (defocus <= high)).sum()
    assert len(got["particles"]) == expected
    assert got["particles"]["rlnDefocusU"].between(low, high).all()
    assert len(got["optics"]) == 2


def test_combine_joins_optics_groups_by_name_and_keeps_common_labels(tmp_path):
    first = write_particles(tmp_path / "a.star", dims=2, seed=5)
    second = write_particles(tmp_path / "b.star", dims=2, seed=6)
    second["optics"].loc[1, "rlnOpticsGroupName"] = "newGroup"
    second["particles"] = second["particles"].drop(columns=["rlnDefocusU"])
    starfile.write(second, tmp_path / "b.star", overwrite=True)
    status = main(
        [
            "star-handler",
            "--combine",
            "--i",
            f"{tmp_path / 'a.star'} {tmp_path / 'b.star'}",
            "--o",
            str(tmp_path / "all.star"),
        ]
    )
    assert status == 0
    got = starfile.read(tmp_path / "all.star", always_dict=True)
    assert got["optics"]["rlnOpticsGroupName"].tolist() == [
        "opticsGroup1",
        "opticsGroup2",
        "newGroup",
    ]
    assert len(got["particles"]) == 2 * N_ROWS
    assert "rlnDefocusU" not in got["particles"].columns
    groups_b = got["particles"]["rlnOpticsGroup"].to_numpy()[N_ROWS:]
    np.testing.assert_array_equal(
        groups_b, second["particles"]["rlnOpticsGroup"].map({1: 1, 2: 3}).to_numpy()
    )
    del first


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--center", "--select", "rlnDefocusU"], "exactly one of"),
        ([], "exactly one of"),
        (["--select", "rlnNoSuchLabel"], "rlnNoSuchLabel"),
    ],
)
def test_bad_options_give_one_line_and_status_2(tmp_path, capsys, arguments, message):
    write_particles(tmp_path / "in.star", dims=2, seed=1)
    status = main(
        [
            "star-handler",
            "--i",
            str(tmp_path / "in.star"),
            "--o",
            str(tmp_path / "o.star"),
            *arguments,
        ]
    )
    err = capsys.readouterr().err
    assert status == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.star").exists()


def test_missing_input_names_the_file(tmp_path, capsys):
    status = main(
        [
            "star-handler",
            "--i",
            str(tmp_path / "none.star"),
            "--o",
            str(tmp_path / "o.star"),
            "--center",
        ]
    )
    assert status == 2
    assert "none.star" in capsys.readouterr().err
