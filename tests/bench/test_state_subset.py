"""bench/state_subset: a carried state's data STAR file cut to about N evenly spread particles."""

import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import state_subset

from cryorefine.io import read_star, write_star


def test_every_step_th_particle_is_kept_with_its_columns_and_the_optics(tmp_path: Path):
    path = tmp_path / "run_it026_data.star"
    optics = pd.DataFrame({"rlnOpticsGroupName": ["opticsGroup1"], "rlnOpticsGroup": [1]})
    particles = pd.DataFrame(
        {
            "rlnTomoParticleName": [f"TS_01/{i}" for i in range(1, 11)],
            "rlnAngleRot": np.arange(10, dtype=float) * 3.5,
            "rlnRandomSubset": [1, 2] * 5,
        }
    )
    write_star({"optics": optics, "particles": particles}, path)
    assert state_subset.keep_every(path, 3) == 3  # ceil(10 / 3) = 4: rows 0, 4, 8
    blocks = read_star(path)
    assert list(blocks) == ["optics", "particles"]
    kept = blocks["particles"]
    assert kept["rlnTomoParticleName"].tolist() == ["TS_01/1", "TS_01/5", "TS_01/9"]
    np.testing.assert_array_equal(kept["rlnAngleRot"], [0.0, 14.0, 28.0])
    assert blocks["optics"]["rlnOpticsGroupName"].tolist() == ["opticsGroup1"]
    assert state_subset.keep_every(path, 100) == 3  # never more than there are


def test_every_scale_group_keeps_at_least_its_first_particle(tmp_path: Path):
    path = tmp_path / "run_it008_data.star"
    names = ["TS_01"] * 6 + ["TS_02"] + ["TS_03"] * 3  # TS_02's only particle is row 6
    particles = pd.DataFrame({"rlnTomoName": names, "rlnAngleRot": np.arange(10, dtype=float)})
    write_star({"particles": particles}, path)
    assert state_subset.keep_every(path, 3) == 5  # rows 0, 4, 8 and the groups' first: 6, 7
    kept = read_star(path)["particles"]
    np.testing.assert_array_equal(kept["rlnAngleRot"], [0.0, 4.0, 6.0, 7.0, 8.0])
    assert sorted(set(kept["rlnTomoName"])) == ["TS_01", "TS_02", "TS_03"]
