"""`reconstruct` from known poses: noise-free particles of each flavour give back the truth.

The particles are made here with the (separately tested) projector from the
embedded map Fourier-cropped to box 32 (5.4 A/px, so that every shell up to
Nyquist carries signal), rotated to random poses and shifted so that each
particle centre lies at -origin (REFINE_SPEC §1.2).
"""

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
import torch

from cryorefine.cli.main import main
from cryorefine.fourier import (
    ctf_2d,
    extract_slices,
    fourier_crop,
    from_fourier,
    fsc,
    prepare_reference,
    resolution_at,
    rotate_volume,
    shift_fourier,
    to_fourier,
)
from cryorefine.geometry import euler_to_matrix
from cryorefine.io import load_particles
from cryorefine.refine.reconstruct import ReconstructOptions, reconstruct_particles
from cryorefine.simulate import EMBEDDED_PIXEL_SIZE_ANGST, embedded_map

BOX = 32


def truth_map() -> tuple[torch.Tensor, float]:
    volume, _ = embedded_map()
    cropped = fourier_crop(to_fourier(torch.from_numpy(volume).double(), 3), BOX, ndim=3)
    return from_fourier(cropped, BOX, 3), EMBEDDED_PIXEL_SIZE_ANGST * volume.shape[0] / BOX


def write_particle_set(folder, *, ndim: int, count: int, seed: int, ctf: bool):
    """Noise-free particles at random poses; returns the STAR path and the truth."""
    truth, pixel = truth_map()
    gen = np.random.default_rng(seed)
    angles = np.stack(
        [
            gen.uniform(-180, 180, count),
            np.degrees(np.arccos(gen.uniform(-1, 1, count))),  # uniform directions
            gen.uniform(-180, 180, count),
        ],
        axis=1,
    )
    origins = gen.uniform(-3, 3, (count, 3))
    origins[:, ndim:] = 0
    rotations = euler_to_matrix(torch.from_numpy(angles)).float()
    reference = prepare_reference(truth.float())
    project = extract_slices if ndim == 2 else rotate_volume
    projections = shift_fourier(
        project(reference, rotations, out_size=BOX), -torch.from_numpy(origins[:, :ndim]).float()
    )
    defocus = gen.uniform(8000, 25000, count)
    if ctf:
        projections = (
            projections
            * ctf_2d(
                defocus_u_angst=torch.from_numpy(defocus),
                defocus_v_angst=torch.from_numpy(defocus),
                defocus_angle_deg=torch.zeros(count, dtype=torch.float64),
                voltage_kv=300.0,
                spherical_aberration_mm=2.7,
                amplitude_contrast=0.1,
                pixel_size_angst=pixel,
                box_size=BOX,
            ).float()
        )
    images = from_fourier(projections, BOX, ndim).numpy().astype(np.float32)
    if ndim == 2:
        with mrcfile.new(folder / "particles.mrcs") as stack:
            stack.set_data(images)
            stack.set_image_stack()
            stack.voxel_size = pixel
        names = [f"{i + 1:06d}@particles.mrcs" for i in range(count)]
    else:
        names = []
        for i, image in enumerate(images):
            with mrcfile.new(folder / f"subtomo_{i}.mrc") as volume:
                volume.set_data(image)
                volume.voxel_size = pixel
            names.append(f"subtomo_{i}.mrc")
    optics = pd.DataFrame(
        {
            "rlnOpticsGroup": [1],
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnVoltage": [300.0],
            "rlnSphericalAberration": [2.7],
            "rlnAmplitudeContrast": [0.1],
            "rlnImagePixelSize": [pixel],
            "rlnImageSize": [BOX],
            "rlnImageDimensionality": [ndim],
        }
    )
    table = {
        "rlnImageName": names,
        "rlnAngleRot": angles[:, 0],
        "rlnAngleTilt": angles[:, 1],
        "rlnAnglePsi": angles[:, 2],
        "rlnOriginXAngst": origins[:, 0] * pixel,
        "rlnOriginYAngst": origins[:, 1] * pixel,
        "rlnOpticsGroup": np.ones(count, dtype=int),
        "rlnRandomSubset": gen.integers(1, 3, count),
        "rlnDefocusU": defocus,
        "rlnDefocusV": defocus,
        "rlnDefocusAngle": np.zeros(count),
    }
    if ndim == 3:
        table["rlnOriginZAngst"] = origins[:, 2] * pixel
    star = folder / "particles.star"
    starfile.write({"optics": optics, "particles": pd.DataFrame(table)}, star, float_format="%.10f")
    return star, truth, pixel


def fsc_against(volume: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    return fsc(to_fourier(volume.double(), 3), to_fourier(truth.double(), 3), ndim=3)


@pytest.mark.parametrize(
    ("ndim", "count", "ctf"), [(2, 300, True), (2, 300, False), (3, 24, False)]
)
def test_noise_free_particles_reconstruct_to_the_truth_near_nyquist(tmp_path, ndim, count, ctf):
    star, truth, pixel = write_particle_set(tmp_path, ndim=ndim, count=count, seed=ndim, ctf=ctf)
    particles = load_particles(star)
    assert particles.flavour == ("spa" if ndim == 2 else "subtomo3d")
    volume, pixel_out = reconstruct_particles(
        particles, ReconstructOptions(use_ctf=ctf), device=torch.device("cpu")
    )
    assert pixel_out == pytest.approx(pixel)
    curve = fsc_against(volume, truth)
    nyquist = BOX // 2
    # Noise-free data: only trilinear interpolation (pad 2) and the sampling of
    # orientations limit the map; the bar is FSC 0.143 within 10% of Nyquist.
    resolution = resolution_at(curve, 0.143, pixel_size_angst=pixel, box_size=BOX)
    assert resolution <= 2 * pixel / 0.9
    # Below 0.8 Nyquist the interpolation error of band-limited data is small:
    # a correlation of 0.95 or better is far above what a wrong pose, origin sign
    # or CTF would give (each of those gives < 0.5 beyond a few shells).
    assert float(curve[1 : int(0.8 * nyquist)].min()) > 0.95


def test_wrong_origin_sign_would_fail(tmp_path):
    """The check above can fail: flipping every origin breaks the map."""
    star, truth, _ = write_particle_set(tmp_path, ndim=2, count=200, seed=7, ctf=False)
    blocks = starfile.read(star, always_dict=True)
    for label in ("rlnOriginXAngst", "rlnOriginYAngst"):
        blocks["particles"][label] *= -1
    flipped = tmp_path / "flipped.star"
    starfile.write(blocks, flipped, float_format="%.10f")
    volume, _ = reconstruct_particles(
        load_particles(flipped), ReconstructOptions(use_ctf=False), device=torch.device("cpu")
    )
    assert float(fsc_against(volume, truth)[1 : int(0.8 * BOX // 2)].min()) < 0.5


def test_cli_writes_half_set_maps_with_the_pixel_size_that_agree(tmp_path):
    star, _, _ = write_particle_set(tmp_path, ndim=2, count=300, seed=11, ctf=True)
    outputs = []
    for subset in (1, 2):
        out = tmp_path / f"half{subset}.mrc"
        assert (
            main(
                ["reconstruct", "--i", str(star), "--o", str(out), "--ctf", "--subset", str(subset)]
            )
            == 0
        )
        with mrcfile.open(out) as mrc:
            assert mrc.voxel_size.x == pytest.approx(float(truth_map()[1]), rel=1e-5)
            outputs.append(torch.from_numpy(mrc.data.copy()))
    half = fsc_against(outputs[0], outputs[1])
    assert float(half[1 : int(0.8 * BOX // 2)].min()) > 0.9


def test_reconstruct_cli_errors_name_the_option(tmp_path, capsys):
    star, _, _ = write_particle_set(tmp_path, ndim=2, count=8, seed=1, ctf=False)
    status = main(["reconstruct", "--i", str(star), "--o", str(tmp_path / "m.mrc"), "--sym", "Q7"])
    assert status == 2
    assert "--sym" in capsys.readouterr().err
    assert not (tmp_path / "m.mrc").exists()
