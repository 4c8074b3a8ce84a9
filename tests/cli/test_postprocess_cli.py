"""`cryorefine postprocess`: RELION's options, its output files, one-line errors."""

from pathlib import Path

import numpy as np
import pytest
import torch

from cryorefine.cli.main import main
from cryorefine.fourier import fourier_crop, from_fourier, soft_sphere_mask, to_fourier
from cryorefine.io import read_star, write_mrc
from cryorefine.simulate import embedded_map

BOX = 32


def _inputs(folder: Path, *, mask_scale: float = 1.0) -> tuple[Path, Path]:
    """Noisy halves of the embedded map Fourier-cropped to 32 (5.4 A/px) and a soft mask."""
    volume, pixel = embedded_map()
    small = fourier_crop(to_fourier(torch.from_numpy(volume).double(), 3), BOX, ndim=3)
    truth = from_fourier(small, BOX, 3).numpy()
    pixel *= volume.shape[0] / BOX
    gen = np.random.default_rng(5)
    for half in (1, 2):
        noisy = truth + 0.02 * gen.standard_normal(truth.shape)
        write_mrc(folder / f"run_half{half}_class001_unfil.mrc", noisy, voxel_size_angst=pixel)
    mask = soft_sphere_mask(BOX, 3, radius_px=13, edge_width_px=3, device=None).numpy()
    write_mrc(folder / "mask.mrc", mask_scale * mask, voxel_size_angst=pixel)
    return folder / "run_half1_class001_unfil.mrc", folder / "mask.mrc"


def test_postprocess_writes_relions_outputs_and_exits_0(tmp_path):
    half1, mask = _inputs(tmp_path)
    root = tmp_path / "PostProcess" / "job001" / "postprocess"
    status = main(
        [
            "postprocess",
            "--i",
            str(half1),
            "--mask",
            str(mask),
            "--o",
            str(root),
            "--auto_bfac",
            "--autob_lowres",
            "20",
            "--filter_edge_width",
            "2",
            "--randomize_at_fsc",
            "0.8",
        ]
    )
    assert status == 0
    for suffix in (".mrc", "_masked.mrc", ".star", "_fsc.png"):
        assert Path(f"{root}{suffix}").is_file()
    general = read_star(f"{root}.star")["general"]
    assert general["rlnMaskName"] == str(mask)
    assert general["rlnBfactorUsedForSharpening"] == general["rlnFittedSlopeGuinierPlot"] * 4


def test_mask_with_values_above_one_gives_one_line_naming_it_and_exit_2(tmp_path, capsys):
    half1, mask = _inputs(tmp_path, mask_scale=2.0)
    status = main(
        ["postprocess", "--i", str(half1), "--mask", str(mask), "--o", str(tmp_path / "pp")]
    )
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert len(err.splitlines()) == 1
    assert err.startswith("cryorefine postprocess: error: ")
    assert str(mask) in err
    assert not (tmp_path / "pp.mrc").exists()


def test_help_uses_relions_option_names(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["postprocess", "--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    for option in (
        "--i",
        "--i2",
        "--mask",
        "--o",
        "--angpix",
        "--auto_bfac",
        "--autob_lowres",
        "--autob_highres",
        "--adhoc_bfac",
        "--mtf",
        "--mtf_angpix",
        "--skip_fsc_weighting",
        "--low_pass",
        "--randomize_at_fsc",
        "--randomize_at_A",
        "--filter_edge_width",
        "--force_mask",
    ):
        assert option in out


def test_unknown_option_is_refused():
    with pytest.raises(SystemExit) as stop:
        main(["postprocess", "--i", "a_half1.mrc", "--no_such_option"])
    assert stop.value.code == 2
