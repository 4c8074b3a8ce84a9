"""``cryorefine extract``: RELION's options, one-line errors, and files that hold the model.

The end-to-end case writes a tilt series whose slices lie on grid planes (tilts of 0
and +-90 degrees, turns of 0 and 90 degrees about the beam), where RELION-4's
pseudo-subtomogram model is exact, runs the command on it, and compares the files it
writes with ``simulate.pseudo_subtomograms`` built directly in 3D.
"""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cryorefine.cli.main import main
from cryorefine.fourier.conventions import frequency_indices, to_fourier
from cryorefine.fourier.projector import prepare_reference
from cryorefine.geometry import euler_to_matrix
from cryorefine.io import (
    OptimisationSet,
    load_particles,
    load_tomograms,
    read_mrc,
    write_mrc,
    write_optimisation_set,
    write_star,
)
from cryorefine.simulate import MICROSCOPE, pseudo_subtomograms
from cryorefine.simulate.tilt_series import simulate_tilt_images
from cryorefine.simulate.tilt_series_tables import (
    tilt_series_global_row,
    tilt_series_table,
    tilt_series_tomogram,
)
from cryorefine.tomo import particle_tilts, relion5_projection_matrices, tilt_series_geometry

N = 16
PIXEL = 4.0
F64 = torch.float64
U32 = 2.0**-24
GRID_TILTS = np.array(
    [[0.0, 0.0, 0.0], [0.0, 90.0, 0.0], [0.0, -90.0, 0.0], [0.0, 0.0, 90.0], [0.0, 90.0, 90.0]]
)


def _blob_map(gen: torch.Generator) -> torch.Tensor:
    axis = torch.arange(N, dtype=F64) - N // 2
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    return torch.rand(N, N, N, generator=gen, dtype=F64) * torch.exp(-(x * x + y * y + z * z) / 8)


def _write_grid_tilt_series(folder: Path, gen: torch.Generator):
    """Tilt images of two particles, tomograms.star, per-tilt table, picks, optimisation set."""
    size = (6 * N, 6 * N, 6 * N)
    angles = [torch.as_tensor(GRID_TILTS[:, i], dtype=F64) for i in range(3)]
    zeros = angles[0] * 0
    projections = relion5_projection_matrices(
        *angles, zeros, zeros, pixel_size_angst=PIXEL, tomogram_size_px=size,
        image_size_px=size[:2],
    )  # fmt: skip
    row = tilt_series_global_row(
        "TS_01", microscope=MICROSCOPE, pixel_size_angst=PIXEL, tomogram_size_px=size,
        frame_count=5, dose_per_tilt_e_per_angst2=2.0,
    )  # fmt: skip
    table = tilt_series_table(
        "TS_01", tilt_deg=GRID_TILTS[:, 1], x_tilt_deg=GRID_TILTS[:, 0],
        z_rot_deg=GRID_TILTS[:, 2], pre_exposure_e_per_angst2=2.0 * np.arange(5),
        defocus_angst=6000.0, projections=projections.numpy(),
    )  # fmt: skip
    series = tilt_series_tomogram(row, table, folder)
    (folder / "tilt_series").mkdir()
    write_star({"TS_01": table}, folder / "tilt_series" / "TS_01.star")
    write_star({"global": pd.DataFrame([row])}, folder / "tomograms.star")
    geometry = tilt_series_geometry(series, device="cpu", image_size_px=size[:2])
    reference_ft = prepare_reference(_blob_map(gen), gridding_correction="separable")
    rotations = euler_to_matrix(torch.rand(2, 3, generator=gen, dtype=F64) * 180)
    spread = torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]], dtype=F64) * 1.4 * N
    centres = (spread + torch.rand(2, 3, generator=gen, dtype=F64)) * PIXEL
    images = simulate_tilt_images(
        reference_ft, rotations, particle_tilts(geometry, centres), image_size_px=size[:2],
        box_size=N, pixel_size_angst=PIXEL, paste_size=N,
    )  # fmt: skip
    write_mrc(folder / "tilt_series" / "TS_01.mrcs", images.numpy(), voxel_size_angst=PIXEL)
    picks = pd.DataFrame(
        {
            "rlnTomoName": ["TS_01", "TS_01"],
            "rlnCenteredCoordinateXAngst": centres[:, 0].numpy(),
            "rlnCenteredCoordinateYAngst": centres[:, 1].numpy(),
            "rlnCenteredCoordinateZAngst": centres[:, 2].numpy(),
        }
    )
    write_star({"particles": picks}, folder / "picks.star")
    write_optimisation_set(
        OptimisationSet(particles_file=Path("picks.star"), tomograms_file=Path("tomograms.star")),
        folder / "optimisation_set.star",
    )
    return reference_ft, rotations, images


def test_extracted_files_hold_the_direct_pseudo_subtomogram_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # RELION's names are relative to the project directory
    reference_ft, rotations, images = _write_grid_tilt_series(
        tmp_path, torch.Generator().manual_seed(31)
    )
    status = main(["extract", "--ios", "optimisation_set.star", "--o", "Extract/job001/",
                   "--bin", "1", "--box", str(N), "--no_circle_crop"])  # fmt: skip
    assert status == 0
    particles = load_particles("Extract/job001/particles.star")
    assert particles.flavour == "relion4"
    assert particles.tomo_particle_names() == ["TS_01/1", "TS_01/2"]
    assert particles.image_names()[0] == "Extract/job001/Subtomograms/TS_01/1_data.mrc"
    series = load_tomograms("tomograms.star")["TS_01"]
    geometry = tilt_series_geometry(series, device="cpu", image_size_px=(6 * N, 6 * N))
    tilts = particle_tilts(geometry, torch.as_tensor(particles.centered_coordinates_angst()))
    want_data, want_weights = pseudo_subtomograms(
        reference_ft, rotations, torch.zeros(2, 3, dtype=F64), tilts, pixel_size_angst=PIXEL,
        box_size=N, tilt_noise_power=0.0,
    )  # fmt: skip
    data = np.stack([read_mrc(p)[0] for p in particles.image_paths()])
    weights = np.stack([read_mrc(p)[0] for p in particles.ctf_image_paths()])
    # weights: the same float64 volumes, rounded to float32 in the file
    torch.testing.assert_close(
        torch.as_tensor(weights, dtype=F64), want_weights, rtol=U32, atol=0.0
    )
    k = frequency_indices(N, 3)
    inside = (k * k).sum(dim=-1) < (N // 2) ** 2  # a real volume's Nyquist coefficients are real
    got = to_fourier(torch.as_tensor(data, dtype=F64), 3)[:, inside]
    want = to_fourier(want_data, 3)[:, inside]
    # Float32 from the tilt images on. An FFT of m points errs by <= log2(m) u in 2-norm
    # (Higham, Thm 24.2); a box's transform has 2-norm <= max|pixel| (Parseval, forward
    # normalisation), CTF and dose weight <= 1, so each slice's Z errs by <= 4 log2(N^2) u32
    # max|image| (FFT, phase, CTF, crop); 5 slices of weight <= 1 over N; then the volume's
    # FFTs and the file's float32 rounding, <= 4 log2(N^3) u32 of its 2-norm.
    slices = 5 * 4 * np.log2(N * N) * float(images.abs().max()) / N
    volume = 4 * np.log2(N**3) * float(torch.linalg.vector_norm(want, dim=1).max())
    bound = U32 * (slices + volume)
    torch.testing.assert_close(got, want, rtol=0.0, atol=bound)
    assert float(want.abs().max()) > 1000 * bound


def test_help_lists_relions_option_names(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["extract", "--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    for option in ("--ios", "--o", "--bin", "--box", "--b", "--crop", "--float16",
                   "--max_dose", "--min_frames", "--stack2d", "--no_ic", "--no_ctf",
                   "--no_circle_crop", "--dont_apply_offsets", "--gpu"):  # fmt: skip
        assert option in out


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--box", "15"], "--box 15: expected an even number"),
        (["--box", "16", "--crop", "20"], "--crop 20"),
        (["--box", "16", "--bin", "-2"], "--bin -2"),
        (["--box", "16"], "missing.star"),
    ],
)
def test_bad_input_is_one_line_and_exit_status_2(arguments, message, tmp_path, capsys):
    argv = ["extract", "--ios", str(tmp_path / "missing.star"), "--o", str(tmp_path / "out")]
    assert main([*argv, *arguments]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("cryorefine extract: error: ")
    assert message in err[0]
