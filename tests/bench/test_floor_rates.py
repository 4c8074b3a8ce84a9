"""bench/floor_rates and floor_table: files read once, and again when they change."""

import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import floor_rates
import floor_table

from cryorefine.io import write_mrc


def test_a_star_file_is_parsed_once_and_again_once_it_changes(tmp_path, monkeypatch):
    path = tmp_path / "run_it001_data.star"
    starfile.write({"particles": pd.DataFrame({"rlnAngleRot": [1.0, 2.0]})}, path)
    parsed = []
    parse = starfile.read

    def counted(*args, **kwargs):
        parsed.append(args[0])
        return parse(*args, **kwargs)

    monkeypatch.setattr(floor_rates.starfile, "read", counted)
    first = floor_rates.read_star(path)
    again = floor_rates.read_star(path)
    assert again is first
    assert len(parsed) == 1
    starfile.write({"particles": pd.DataFrame({"rlnAngleRot": [3.0, 4.0, 5.0]})}, path)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a later version
    changed = floor_rates.read_star(path)
    assert len(parsed) == 2
    assert changed["particles"]["rlnAngleRot"].tolist() == [3.0, 4.0, 5.0]


def test_load_bytes_read_each_files_header_once_for_every_iteration(tmp_path, monkeypatch):
    volume = np.zeros((4, 6, 8), dtype=np.float32)  # (z, y, x): 192 values, float16 below
    for name in ("a.mrc", "a_ctf.mrc"):
        write_mrc(tmp_path / name, volume, voxel_size_angst=1.0, float16=True)
    stack = np.zeros((3, 5, 5), dtype=np.float32)  # three images of 25 values of 4 bytes
    write_mrc(tmp_path / "b.mrcs", stack, voxel_size_angst=1.0)
    particles = pd.DataFrame(
        {"rlnImageName": ["a.mrc", "2@b.mrcs"], "rlnCtfImage": ["a_ctf.mrc", "a_ctf.mrc"]}
    )
    opened = []
    original = floor_table.mrcfile.open

    def counted(path, *args, **kwargs):
        opened.append(Path(path).name)
        return original(path, *args, **kwargs)

    monkeypatch.setattr(floor_table.mrcfile, "open", counted)
    cache: dict = {}
    star = tmp_path / "run_it001_data.star"
    for _ in range(3):  # three iterations' data stars name the same files
        got = floor_table._load_bytes(particles, star, cache)
        np.testing.assert_array_equal(got, [192 * 2 + 192 * 2, 25 * 4 + 192 * 2])
    assert sorted(opened) == ["a.mrc", "a_ctf.mrc", "b.mrcs"]
