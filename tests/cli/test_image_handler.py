"""`cryorefine image-handler`: relion_image_handler's --rescale_angpix and --new_box."""

from pathlib import Path

import mrcfile
import numpy as np
import pytest
import torch

from cryorefine.cli.main import main
from cryorefine.fourier import rescale_map
from cryorefine.io import read_mrc, write_mrc


def _map(folder: Path, *, n: int = 20, pixel: float = 4.0, shape: tuple | None = None) -> Path:
    gen = np.random.default_rng(n)
    path = folder / "in.mrc"
    write_mrc(path, gen.standard_normal(shape or (n, n, n)), voxel_size_angst=pixel)
    return path


def test_rescale_and_new_box_write_the_rescaled_map_with_its_pixel_size(tmp_path):
    source = _map(tmp_path)
    out = tmp_path / "out.mrc"
    status = main(
        ["image-handler", "--i", str(source), "--o", str(out), "--rescale_angpix", "2",
         "--new_box", "48"]
    )  # fmt: skip
    assert status == 0
    data, pixel = read_mrc(out)
    assert data.shape == (48, 48, 48)
    assert pixel == pytest.approx(2.0, rel=1e-6)  # header cell / mx, float32 cell
    original, _ = read_mrc(source)
    want = rescale_map(
        torch.from_numpy(original), pixel_size_angst=4.0, new_pixel_size_angst=2.0, new_box=48
    )
    np.testing.assert_array_equal(data, want.numpy())  # the command only reads and writes


def test_pixel_size_written_is_the_one_the_even_box_gives(tmp_path, caplog):
    source = _map(tmp_path)
    out = tmp_path / "out.mrc"
    arguments = ["image-handler", "--i", str(source), "--o", str(out), "--rescale_angpix", "3"]
    assert main(arguments) == 0
    data, pixel = read_mrc(out)
    # 20 px x 4 A / 3 A = 26.7 -> 27 -> even 26 px: the field of view 80 A is kept.
    assert data.shape == (26, 26, 26)
    assert pixel == pytest.approx(80.0 / 26, rel=1e-6)
    assert "becomes 26 px" in caplog.text


def test_new_box_alone_crops_about_the_centre_and_keeps_the_pixel_size(tmp_path):
    source = _map(tmp_path, n=21, pixel=1.5)
    out = tmp_path / "out.mrc"
    assert main(["image-handler", "--i", str(source), "--o", str(out), "--new_box", "10"]) == 0
    data, pixel = read_mrc(out)
    original, _ = read_mrc(source)
    assert pixel == pytest.approx(1.5, rel=1e-6)
    np.testing.assert_array_equal(data, original[5:15, 5:15, 5:15])  # 10 // 2 <- 21 // 2
    with mrcfile.open(out) as mrc:
        assert int(mrc.header.ispg) == 1  # written as a volume, RELION's header


def test_angpix_overrides_the_header(tmp_path):
    source = _map(tmp_path, pixel=1.0)
    out = tmp_path / "out.mrc"
    arguments = ["image-handler", "--i", str(source), "--o", str(out), "--angpix", "4"]
    assert main([*arguments, "--rescale_angpix", "8"]) == 0
    data, pixel = read_mrc(out)
    assert data.shape == (10, 10, 10)
    assert pixel == pytest.approx(8.0, rel=1e-6)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "give --rescale_angpix, --new_box or both"),
        (["--rescale_angpix", "0"], "--rescale_angpix 0: expected a pixel size in Angstrom > 0"),
        (["--rescale_angpix", "nan"], "--rescale_angpix nan: expected"),
        (["--angpix", "-1", "--new_box", "8"], "--angpix -1: expected"),
        (["--new_box", "1"], "--new_box 1: expected a box size of at least 2 pixels"),
        (["--rescale_angpix", "100"], "--rescale_angpix 100: a box of 20 px"),
    ],
)
def test_bad_options_are_one_line_naming_the_option(tmp_path, capsys, extra, message):
    source = _map(tmp_path)
    out = tmp_path / "out.mrc"
    assert main(["image-handler", "--i", str(source), "--o", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_refuses_to_overwrite_the_input_and_a_non_cubic_map(tmp_path, capsys):
    source = _map(tmp_path)
    assert main(["image-handler", "--i", str(source), "--o", str(source), "--new_box", "8"]) == 2
    assert "the same file as --i" in capsys.readouterr().err
    flat = _map(tmp_path / ".", shape=(4, 20, 20))
    out = tmp_path / "out.mrc"
    assert main(["image-handler", "--i", str(flat), "--o", str(out), "--new_box", "8"]) == 2
    err = capsys.readouterr().err
    assert "in.mrc: a map of shape (4, 20, 20)" in err
    assert "expected a cube" in err
