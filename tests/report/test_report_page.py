"""The report page: self-contained, every plot a decodable PNG, notes for what is missing."""

import base64
import html
import io
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib import image as mpimg
from report_fake_run import PIXEL, blob_map, soft_mask, write_fake_run

from cryorefine.cli.main import main
from cryorefine.io import read_mrc, write_mrc
from cryorefine.report import centre_of_mass_px, default_report_path, write_report

_IMG = re.compile(r'<img class="plot" alt="([^"]*)" src="data:image/png;base64,([^"]+)">')
_COMMAND = re.compile(r'<pre class="command">(.*?)</pre>')
_OFFSET = re.compile(r"<b>\(([-+0-9., ]+)\) px</b>")

ALL_PLOTS = {
    "FSC",
    "resolution and current size",
    "angular sampling and accuracy",
    "translational sampling and accuracy",
    "changes in orientations and offsets",
    "angular distribution",
    "map slices",
}


def _command_words(page: str) -> list[str]:
    """The recentring command on the page, as the shell would split it."""
    shown = _COMMAND.search(page).group(1)
    return shlex.split(html.unescape(re.sub(r"<[^>]+>", "", shown)))


def _images(page: str) -> dict[str, np.ndarray]:
    decoded = {}
    for alt, data in _IMG.findall(page):
        png = base64.b64decode(data, validate=True)
        assert png.startswith(b"\x89PNG\r\n\x1a\n"), alt
        decoded[alt] = mpimg.imread(io.BytesIO(png), format="png")
    return decoded


def test_page_is_self_contained_and_every_plot_is_a_drawn_png(tmp_path):
    run = write_fake_run(tmp_path, iterations=4)
    mask = tmp_path / "mask.mrc"
    write_mrc(mask, soft_mask((0.0, 0.0, 0.0)), voxel_size_angst=PIXEL)
    page_path = write_report(run.root, mask=mask)
    assert page_path == default_report_path(run.root) == run.root.with_name("run_report.html")
    page = page_path.read_text()
    images = _images(page)
    assert set(images) == ALL_PLOTS
    for alt, pixels in images.items():
        assert pixels.shape[0] > 200, alt
        assert pixels.shape[1] > 400, alt
        assert pixels[..., :3].std() > 0.05, f"{alt}: blank image"
    # Nothing outside the page: every src is a data: URI, no links, scripts or style sheets.
    assert re.findall(r'src="(?!data:image/png;base64,)', page) == []
    for outside in ("href=", "<script", "<link", "url(", "http:", "https:"):
        assert outside not in page
    assert not list(run.root.parent.glob(".*partial"))


def test_missing_files_are_named_on_the_page_not_raised(tmp_path):
    skip = {"sampling": [0, 1, 2], "optimiser": [0, 1, 2]}
    run = write_fake_run(tmp_path, iterations=3, finished=False, skip=skip)
    page = write_report(run.root, tmp_path / "out" / "report.html").read_text()
    assert "<h2>Notes</h2>" in page
    assert "no sampling file" in page
    assert "no final map run_class001.mrc: the slices show run_it002_half1_class001.mrc" in page
    assert "names no --solvent_mask and no --mask was given" in page
    images = _images(page)
    assert "map slices" in images
    assert "FSC" in images
    for nothing_to_draw in ("angular sampling and accuracy", "translational sampling and accuracy"):
        assert nothing_to_draw not in images
        assert f"no values for the plot of {nothing_to_draw}" in page
    assert '<pre class="command">' not in page  # no mask: no offset, no command


def test_the_runs_solvent_mask_is_the_default_and_a_missing_one_is_noted(tmp_path):
    run = write_fake_run(tmp_path, iterations=2, mask_name="MaskCreate/job002/mask.mrc")
    page = write_report(run.root).read_text()
    assert "the run&#x27;s --solvent_mask MaskCreate/job002/mask.mrc was not found" in page
    (tmp_path / "MaskCreate" / "job002").mkdir(parents=True)
    write_mrc(
        tmp_path / "MaskCreate" / "job002" / "mask.mrc",
        soft_mask((0.0, 0.0, 0.0)),
        voxel_size_angst=PIXEL,
    )
    page = write_report(run.root).read_text()
    assert "MaskCreate/job002/mask.mrc (outline" in page
    assert _COMMAND.search(page) is not None


def test_reported_offset_of_a_shifted_map_is_the_shift_within_a_quarter_pixel(tmp_path):
    mask_centre = (1.0, -2.0, 0.5)
    shift = (2.7, -1.4, -3.1)
    volume = blob_map(tuple(m + s for m, s in zip(mask_centre, shift, strict=True)))
    run = write_fake_run(tmp_path, iterations=2, volume=volume)
    mask = tmp_path / "mask.mrc"
    write_mrc(mask, soft_mask(mask_centre), voxel_size_angst=PIXEL)
    page = write_report(run.root, mask=mask).read_text()
    reported = [float(v) for v in _OFFSET.search(page).group(1).split(",")]
    # Float64 reference: centre of mass of the map minus that of the mask, (x, y, z) px.
    vol64, mask64 = torch.from_numpy(volume), torch.from_numpy(read_mrc(mask)[0]).double()
    reference = (centre_of_mass_px(vol64) - centre_of_mass_px(mask64)).numpy()
    np.testing.assert_allclose(reported, reference, atol=0.005 + 1e-6)  # printed to 2 decimals
    np.testing.assert_allclose(reported, shift, atol=0.25)  # the Done criterion
    words = _command_words(page)
    values = [float(words[words.index(f"--center_{axis}") + 1]) for axis in "XYZ"]
    np.testing.assert_allclose(values, reference, atol=5e-4 + 1e-6)  # printed to 3 decimals


def test_printed_command_recentres_the_particles_onto_the_mask(tmp_path):
    """Simulate particles of a map off its mask, recentre them with the page's command, and
    reconstruct: the new map's centre of mass is on the mask's centre."""
    box, pixel = 32, 4.0
    axis = np.arange(box) - box // 2
    z, y, x = np.meshgrid(axis, axis, axis, indexing="ij")
    mask_centre, shift = np.array([1.0, -1.0, 0.5]), np.array([2.6, -1.8, 1.3])
    volume = np.zeros((box, box, box))
    for offset, weight in (((3, 0, 0), 1.0), ((-2, 2, 0), 1.0), ((0, -2, 2), 0.7)):
        c = mask_centre + shift + offset
        volume += weight * np.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / 8.0)
    truth, mask = tmp_path / "truth.mrc", tmp_path / "mask.mrc"
    write_mrc(truth, volume, voxel_size_angst=pixel)
    mask_values = soft_mask(tuple(mask_centre), box=box, inner_px=9.0, edge_px=4.0)
    write_mrc(mask, mask_values, voxel_size_angst=pixel)
    simulated = tmp_path / "Simulate"
    assert main(["simulate", "--o", str(simulated), "--map", str(truth), "--format", "spa",
                 "--no_noise", "--max_offset", "0", "--box", str(box), "--angpix", str(pixel),
                 "--n_particles", "300"]) == 0  # fmt: skip
    job = tmp_path / "Refine3D" / "job001"
    job.mkdir(parents=True)
    shutil.copy(simulated / "truth_particles.star", job / "run_data.star")
    shutil.copy(simulated / "particles.mrcs", job / "particles.mrcs")
    reconstruct = ["reconstruct", "--ctf", "--i"]
    first_map = job / "run_class001.mrc"
    assert main([*reconstruct, str(job / "run_data.star"), "--o", str(first_map)]) == 0
    (job / "run_model.star").write_text(
        f"data_model_general\n_rlnPixelSize {pixel}\n_rlnOriginalImageSize {box}\n"
    )
    page = write_report(job / "run", mask=mask).read_text()
    words = _command_words(page)
    assert main(words[1:]) == 0
    centred = Path(words[words.index("--o") + 1])
    assert main([*reconstruct, str(centred), "--o", str(tmp_path / "centred.mrc")]) == 0
    before = centre_of_mass_px(torch.from_numpy(read_mrc(first_map)[0]))
    after = centre_of_mass_px(torch.from_numpy(read_mrc(tmp_path / "centred.mrc")[0]))
    mask_com = centre_of_mass_px(torch.from_numpy(read_mrc(mask)[0]))
    assert (before - mask_com).abs().max() > 1.5  # the map was off the mask to begin with
    assert (after - mask_com).abs().max() < 0.25


def test_cli_writes_the_page_and_refuses_a_missing_run_in_one_line(tmp_path, capsys):
    run = write_fake_run(tmp_path, iterations=2)
    out = tmp_path / "page.html"
    assert main(["report", str(run.root.parent), "--o", str(out)]) == 0
    assert "<h1>cryorefine report:" in out.read_text()
    capsys.readouterr()  # the first run's log lines ("written: ...") are not the error
    assert main(["report", str(tmp_path / "nothing" / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "cryorefine report: error:" in err
    assert "nothing/run: no refinement run found" in err
    assert main(["report", str(run.root), "--mask", str(tmp_path / "absent.mrc")]) == 2
    assert "--mask:" in capsys.readouterr().err


@pytest.mark.parametrize("job", ["job012", "job074"])
def test_a_real_relion_run_folder_gives_a_page_with_notes(hiv_tutorial, tmp_path, job):
    folder = hiv_tutorial / "Refine3D" / job
    if not folder.is_dir():
        pytest.skip(f"{folder} not present")
    page = write_report(folder, tmp_path / "report.html").read_text()
    assert "no map (run_class001.mrc" in page  # the tutorial's metadata comes without maps
    assert "FSC" in _images(page)
    assert ">C6<" in page
