"""MRC files: exact round trips, RELION's header, lazy reads from stacks, image references."""

from io import StringIO
from pathlib import Path

import mrcfile
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cryorefine.errors import InputError
from cryorefine.io import (
    image_stacks,
    parse_image_name,
    read_image,
    read_images,
    read_mrc,
    read_mrc_header,
    split_image_names,
    write_mrc,
)


def _random(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_float32_volume_round_trips_exactly(tmp_path: Path) -> None:
    volume = _random((6, 8, 10))  # (z, y, x), all sides different
    write_mrc(tmp_path / "v.mrc", volume, voxel_size_angst=1.35)
    data, voxel = read_mrc(tmp_path / "v.mrc")
    np.testing.assert_array_equal(data, volume)  # float32 stored as float32: bit-exact
    assert data.dtype == np.float32
    assert voxel == pytest.approx(1.35, rel=1e-7)  # the cell is float32: 2**-24 relative


def test_float16_writes_mode_12_with_the_float16_values(tmp_path: Path) -> None:
    volume = _random((4, 8, 8))
    write_mrc(tmp_path / "h.mrc", volume, voxel_size_angst=2.0, float16=True)
    assert read_mrc_header(tmp_path / "h.mrc").mode == 12
    data, _ = read_mrc(tmp_path / "h.mrc")
    np.testing.assert_array_equal(data, volume.astype(np.float16).astype(np.float32))


def test_header_is_relions(tmp_path: Path) -> None:
    write_mrc(tmp_path / "s.mrcs", _random((5, 8, 10)), voxel_size_angst=1.5)
    write_mrc(tmp_path / "v.mrc", _random((6, 8, 10)), voxel_size_angst=1.5)
    for name, n_z, space_group in (("s.mrcs", 5, 0), ("v.mrc", 6, 1)):
        with mrcfile.open(tmp_path / name) as mrc:  # read back by mrcfile, not by us
            header = mrc.header
            assert (int(header.mx), int(header.my), int(header.mz)) == (10, 8, n_z)
            np.testing.assert_allclose(
                [header.cella.x, header.cella.y, header.cella.z], [15.0, 12.0, 1.5 * n_z]
            )
            assert (header.origin.x, header.origin.y, header.origin.z) == (0, 0, 0)
            assert (int(header.nxstart), int(header.nystart), int(header.nzstart)) == (0, 0, 0)
            assert int(header.mode) == 2
            assert int(header.ispg) == space_group
            assert int(header.nsymbt) == 0
        assert mrcfile.validate(tmp_path / name, print_file=StringIO())


def test_header_reads_shape_voxel_and_mode_without_the_data(tmp_path: Path) -> None:
    write_mrc(tmp_path / "s.mrcs", _random((3, 8, 8)), voxel_size_angst=0.9)
    header = read_mrc_header(tmp_path / "s.mrcs")
    assert header.shape == (3, 8, 8)
    assert header.voxel_size_angst == pytest.approx(0.9, rel=1e-7)
    assert header.mode == 2
    assert header.is_stack


def test_memory_mapped_read_keeps_file_type_and_is_read_only(tmp_path: Path) -> None:
    volume = _random((4, 8, 8))
    write_mrc(tmp_path / "h.mrc", volume, voxel_size_angst=1.0, float16=True)
    data, _ = read_mrc(tmp_path / "h.mrc", mmap=True)
    assert data.dtype == np.float16
    assert not data.flags.writeable
    np.testing.assert_array_equal(data, volume.astype(np.float16))


def test_one_image_of_a_stack_is_that_slice(tmp_path: Path) -> None:
    stack = _random((7, 8, 8), seed=3)
    write_mrc(tmp_path / "s.mrcs", stack, voxel_size_angst=1.0)
    for index in (1, 4, 7):  # 1-based
        np.testing.assert_array_equal(read_image(tmp_path / "s.mrcs", index), stack[index - 1])
    np.testing.assert_array_equal(read_image(tmp_path / "s.mrcs"), stack)


def test_read_images_from_several_stacks_in_any_order(tmp_path: Path) -> None:
    a, b = _random((3, 8, 8), seed=1), _random((5, 8, 8), seed=2)
    write_mrc(tmp_path / "a.mrcs", a, voxel_size_angst=1.0)
    write_mrc(tmp_path / "b.mrcs", b, voxel_size_angst=1.0)
    paths = [tmp_path / "b.mrcs", tmp_path / "a.mrcs", tmp_path / "b.mrcs", tmp_path / "a.mrcs"]
    got = read_images(paths, np.array([5, 1, 2, 3]))
    np.testing.assert_array_equal(got, np.stack([b[4], a[0], b[1], a[2]]))


def test_index_beyond_the_stack_names_file_index_and_size(tmp_path: Path) -> None:
    write_mrc(tmp_path / "s.mrcs", _random((3, 8, 8)), voxel_size_angst=1.0)
    with pytest.raises(InputError, match=r"s\.mrcs: image 4 requested but the stack holds 3"):
        read_image(tmp_path / "s.mrcs", 4)
    with pytest.raises(InputError, match="1-based"):
        read_image(tmp_path / "s.mrcs", 0)


@pytest.mark.parametrize(
    ("name", "want"),
    [
        ("000012@Extract/job007/stack.mrcs", (12, "Extract/job007/stack.mrcs")),
        ("1@a.mrcs", (1, "a.mrcs")),
        ("Subtomograms/TS_01/12_stack2d.mrcs", (None, "Subtomograms/TS_01/12_stack2d.mrcs")),
        # RELION's file-type suffix (e.g. CTF volumes of classic subtomogram averaging)
        ("Tomograms/tomo1/ctf_000001.mrc:mrc", (None, "Tomograms/tomo1/ctf_000001.mrc")),
        ("3@stack.mrcs:mrcs", (3, "stack.mrcs")),
    ],
)
def test_image_names_split_into_index_and_path(name: str, want: tuple) -> None:
    assert parse_image_name(name) == want


@pytest.mark.parametrize("name", ["0@a.mrcs", "x@a.mrcs", "3@", "-1@a.mrcs", ""])
def test_malformed_image_names_are_refused(name: str) -> None:
    assert split_image_names([name])[0][0] == -1
    with pytest.raises(InputError, match="INDEX@FILE"):
        parse_image_name(name)


@given(index=st.integers(1, 10**6), path=st.from_regex(r"[A-Za-z0-9_/.-]{1,30}", fullmatch=True))
def test_formatted_image_names_parse_back(index: int, path: str) -> None:
    assert parse_image_name(f"{index:06d}@{path}") == (index, path)


def test_read_images_reads_big_endian_files_in_their_byte_order(tmp_path: Path) -> None:
    volume = np.arange(2 * 3 * 4, dtype=">f4").reshape(2, 3, 4) - 7.5
    with mrcfile.new(tmp_path / "big.mrc") as mrc:
        mrc.set_data(volume)
    got = read_images([tmp_path / "big.mrc"], [0])
    np.testing.assert_array_equal(got[0], volume.astype(np.float32))


def test_read_images_sees_a_file_rewritten_between_reads(tmp_path: Path) -> None:
    path = tmp_path / "particle.mrc"
    first = np.full((4, 4, 4), 1.5, dtype=np.float32)
    with mrcfile.new(path) as mrc:
        mrc.set_data(first)
    np.testing.assert_array_equal(read_images([path], [0])[0], first)
    second = np.full((6, 6, 6), -2.0, dtype=np.float16)  # another size and mode
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(second)
    np.testing.assert_array_equal(read_images([path], [0])[0], second.astype(np.float32))


def test_read_images_of_many_files_keep_the_requested_order(tmp_path: Path) -> None:
    # 12 files: enough to be read by the thread pool; one requested twice
    volumes = [_random((3, 4, 5), seed=i) for i in range(12)]
    for i, volume in enumerate(volumes):
        write_mrc(tmp_path / f"p{i}.mrc", volume, voxel_size_angst=2.0)
    order = [5, 0, 11, 3, 3, 7, 1, 2, 10, 9, 8, 6, 4]
    got = read_images([tmp_path / f"p{i}.mrc" for i in order], [0] * len(order))
    np.testing.assert_array_equal(got, np.stack([volumes[i] for i in order]))


@pytest.mark.parametrize("count", [3, 12])  # one thread, and the thread pool
def test_read_images_into_a_buffer_keeps_the_files_values_and_order(tmp_path: Path, count) -> None:
    volumes = [_random((3, 4, 5), seed=i).astype(np.float16) for i in range(count)]
    for i, volume in enumerate(volumes):
        write_mrc(tmp_path / f"p{i}.mrc", volume, voxel_size_angst=2.0)
    order = [*range(count - 1, -1, -1), 0]
    out = np.full((len(order), 3, 4, 5), np.nan, dtype=np.float16)
    got = read_images([tmp_path / f"p{i}.mrc" for i in order], [0] * len(order), out=out)
    assert got is out
    # float16 files into a float16 buffer: the stored values, bit for bit
    np.testing.assert_array_equal(out, np.stack([volumes[i] for i in order]))


@pytest.mark.parametrize("count", [3, 12])
def test_whole_files_of_the_buffers_dtype_are_read_straight_into_it(
    tmp_path: Path, count: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    volumes = [_random((3, 4, 5), seed=i) for i in range(count)]
    for i, volume in enumerate(volumes):
        write_mrc(tmp_path / f"p{i}.mrc", volume, voxel_size_angst=2.0)

    def no_intermediate_array(*args: object, **kwargs: object) -> None:
        raise AssertionError("read through an intermediate array")

    monkeypatch.setattr(image_stacks, "_read_from_file", no_intermediate_array)
    order = [*range(count - 1, -1, -1), 1]  # one file twice
    out = np.full((len(order), 3, 4, 5), np.nan, dtype=np.float32)
    read_images([tmp_path / f"p{i}.mrc" for i in order], [0] * len(order), out=out)
    np.testing.assert_array_equal(out, np.stack([volumes[i] for i in order]))


def test_a_buffer_of_another_byte_order_gets_the_values_converted(tmp_path: Path) -> None:
    volume = np.arange(2 * 3 * 4, dtype=">f4").reshape(2, 3, 4) - 7.5
    with mrcfile.new(tmp_path / "big.mrc") as mrc:
        mrc.set_data(volume)
    out = np.zeros((1, 2, 3, 4), dtype=np.float32)
    read_images([tmp_path / "big.mrc"], [0], out=out)
    np.testing.assert_array_equal(out[0], volume.astype(np.float32))


def test_read_images_refuses_a_buffer_of_the_wrong_shape(tmp_path: Path) -> None:
    write_mrc(tmp_path / "p.mrc", _random((3, 4, 5), seed=0), voxel_size_angst=2.0)
    with pytest.raises(InputError, match=r"p\.mrc.*\(3, 4, 5\)"):
        read_images([tmp_path / "p.mrc"], [0], out=np.zeros((1, 3, 4, 4), dtype=np.float32))


def test_a_voxel_size_beyond_the_float32_header_is_refused_before_writing(tmp_path: Path) -> None:
    target = tmp_path / "big.mrc"
    with pytest.raises(InputError, match=r"big\.mrc: a voxel size of 1e\+300 A"):
        write_mrc(target, np.zeros((4, 4, 4), dtype=np.float32), voxel_size_angst=1e300)
    assert not any(tmp_path.iterdir())  # nothing written, not even a partial file
