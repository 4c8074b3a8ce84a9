"""``tomo.extract_particles`` on a simulated tilt series: files, labels, options, consistency.

The tilt series come from ``simulate --format tilt_series`` (blob truth, 6 particles in
2 tomograms, 7 tilts). The extracted sets must load back through ``io`` and
``tomo.particle_batches`` with RELION's labels (REFINE_SPEC 2.2, 2.3; the tutorial's
Refine3D/job074/run_data.star for the RELION-5 2D stacks).
"""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cryorefine.errors import InputError
from cryorefine.fourier.conventions import frequency_indices, to_fourier
from cryorefine.io import (
    OptimisationSet,
    load_optimisation_set,
    load_particles,
    load_tomograms,
    read_mrc,
    read_mrc_header,
    read_star,
    write_optimisation_set,
    write_star,
)
from cryorefine.simulate import SimulationOptions, simulate_dataset
from cryorefine.tomo import (
    MULTIPLICITY_THRESHOLD,
    ExtractOptions,
    extract_particles,
    insert_tilt_images,
    particle_batches,
    particle_tilts,
    tilt_series_geometry,
)

N = 16
PIXEL = 6.0
BIN = 2.0
BOX = 8
U32 = 2.0**-24


@pytest.fixture(scope="module")
def tilt_series(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tilt_series")
    simulate_dataset(
        SimulationOptions(
            output_dir=folder, box_size=N, pixel_size_angst=PIXEL, n_particles=6,
            particles_per_tomogram=3, data_format="tilt_series", tilt_range_deg=(-45.0, 45.0),
            tilt_step_deg=15.0, snr=1.0, seed=8, ref_lowpass_angst=30.0,
        )
    )  # fmt: skip
    return folder


def _extract(tilt_series: Path, out: Path, device: str | torch.device = "cpu", **changes) -> object:
    values = {
        "optimisation_set": tilt_series / "optimisation_set.star",
        "output_dir": out,
        "box_size": BOX,
        "binning": BIN,
    }
    values.update(changes)
    return extract_particles(ExtractOptions(**values), device=device)


@pytest.fixture(scope="module")
def extracted(tilt_series, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("extract3d")
    _extract(tilt_series, out)
    return out


@pytest.fixture(scope="module")
def stacks(tilt_series, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("extract2d")
    _extract(tilt_series, out, stack2d=True)
    return out


def test_pseudo_subtomograms_load_back_as_relion4_with_their_weights(extracted, tilt_series):
    optimisation = load_optimisation_set(extracted / "optimisation_set.star")
    assert optimisation.particles_file == extracted / "particles.star"
    assert optimisation.tomograms_file == tilt_series / "tomograms.star"
    particles = load_particles(optimisation.particles_file)
    assert particles.flavour == "relion4"
    assert particles.ctf_premultiplied
    assert particles.image_dimensionality == 3
    np.testing.assert_array_equal(particles.pixel_size_angst, BIN * PIXEL)
    np.testing.assert_array_equal(particles.box_size_px, BOX)
    np.testing.assert_array_equal(particles.origins_angst(), 0.0)
    table = particles.particles
    assert not {"rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"} & set(table.columns)
    assert table["rlnImageName"].iloc[0].endswith("Subtomograms/TS_0001/1_data.mrc")
    assert table["rlnCtfImage"].iloc[0].endswith("Subtomograms/TS_0001/1_weights.mrc")
    weights, voxel = read_mrc(particles.ctf_image_paths()[0])
    assert weights.shape == (2 * BOX, BOX, BOX // 2 + 1)
    assert voxel == pytest.approx(1.0 / (BIN * PIXEL))
    batches = list(particle_batches(particles, batch_size=4, device=torch.device("cpu")))
    assert sum(len(b.rows) for b in batches) == 6
    for batch in batches:
        assert batch.data_ft.shape == (len(batch.rows), BOX, BOX, BOX // 2 + 1)
        # every one of the 7 tilts sees every particle: each slice holds the origin
        torch.testing.assert_close(
            batch.multiplicity[:, 0, 0, 0], torch.full((len(batch.rows),), 7.0)
        )


def _labels(table) -> set[str]:
    return set(table.columns)


def test_2d_stacks_carry_relion5_labels_and_the_visible_tilts(stacks, hiv_tutorial):
    particles = load_particles(stacks / "particles.star")
    assert particles.flavour == "relion5_stack2d"
    assert particles.image_dimensionality == 2
    blocks = read_star(stacks / "particles.star")
    assert list(blocks) == ["general", "optics", "particles"]
    assert blocks["general"] == {"rlnTomoSubTomosAre2DStacks": 1}
    tutorial = read_star(hiv_tutorial / "Refine3D/job074/run_data.star")
    assert _labels(blocks["optics"]) == _labels(tutorial["optics"])
    assert _labels(blocks["particles"]) <= _labels(tutorial["particles"])
    frames = particles.visible_frames()
    for frames_of, path in zip(frames, particles.image_paths(), strict=True):
        images, voxel = read_mrc(path)
        assert images.shape == (int(frames_of.sum()), BOX, BOX)
        assert voxel == pytest.approx(BIN * PIXEL)


def test_2d_stacks_divided_by_the_binning_insert_to_the_3d_pseudo_subtomograms(
    stacks, extracted, tilt_series
):
    stack_set = load_particles(stacks / "particles.star")
    volume_set = load_particles(extracted / "particles.star")
    tomograms = load_tomograms(tilt_series / "tomograms.star")
    geometry = tilt_series_geometry(tomograms["TS_0001"], device="cpu", image_size_px=(64, 64))
    rows = [i for i, t in enumerate(stack_set.tomo_names()) if t == "TS_0001"]
    tilts = particle_tilts(geometry, torch.as_tensor(stack_set.centered_coordinates_angst()[rows]))
    visible = torch.as_tensor(np.stack([stack_set.visible_frames()[r] for r in rows]))
    z = torch.zeros(len(rows), len(geometry), BOX, BOX // 2 + 1, dtype=torch.complex128)
    for i, row in enumerate(rows):
        images, _ = read_mrc(stack_set.image_paths()[row])
        z[i, visible[i]] = to_fourier(torch.as_tensor(images, dtype=torch.float64), 2) / BIN
    data = insert_tilt_images(z, tilts.rotations, visible)
    volumes = np.stack([read_mrc(volume_set.image_paths()[r])[0] for r in rows])
    weights = np.stack([read_mrc(volume_set.ctf_image_paths()[r])[0] for r in rows])
    multiplicity = torch.as_tensor(weights[:, BOX:], dtype=torch.float64)
    k = frequency_indices(BOX, 3)
    keep = ((k * k).sum(dim=-1) <= (BOX // 2) ** 2) & (multiplicity >= MULTIPLICITY_THRESHOLD)
    want = to_fourier(torch.as_tensor(volumes, dtype=torch.float64), 3)
    got = torch.where(keep, data, torch.zeros_like(data))
    # Both from the same float32 transforms Z: stack pixels and volume voxels rounded to
    # float32 (relative 2^-24), float32 FFTs of BOX^2 / BOX^3 terms (Higham: <= n u each),
    # sums over <= 4 x 7 slab terms: 4 (BOX^3 + 28) u32 max|Z| max(M) / BOX.
    bound = 4 * (BOX**3 + 28) * U32 * float(z.abs().max()) * float(multiplicity.max()) / BOX
    inside = (k * k).sum(dim=-1) < (BOX // 2) ** 2  # Nyquist: real for a real volume
    torch.testing.assert_close(got[:, inside], want[:, inside], rtol=0.0, atol=bound)
    assert float(want.abs().max()) > 100 * bound


def test_max_dose_keeps_the_early_tilts_and_min_frames_drops_particles(tilt_series, tmp_path):
    out = tmp_path / "dose"
    _extract(tilt_series, out, stack2d=True, max_dose_e_per_angst2=6.0, crop_size=6, float16=True)
    particles = load_particles(out / "particles.star")
    np.testing.assert_array_equal(particles.box_size_px, 6)
    pre = load_tomograms(tilt_series / "tomograms.star")["TS_0001"].pre_exposure_e_per_angst2()
    for frames, path in zip(particles.visible_frames(), particles.image_paths(), strict=True):
        np.testing.assert_array_equal(frames, pre <= 6.0)
        header = read_mrc_header(path)
        assert (header.mode, header.shape) == (12, (int(frames.sum()), 6, 6))
    with pytest.raises(InputError, match="no particle is seen by --min_frames 4"):
        _extract(tilt_series, tmp_path / "none", max_dose_e_per_angst2=6.0, min_frames=4)


def test_origins_are_folded_into_the_coordinates(tilt_series, extracted, tmp_path):
    # A pick moved by o with origin o is the same particle: RELION's position = pick - S o.
    blocks = read_star(tilt_series / "particles.star")
    table = blocks["particles"].copy()
    gen = np.random.default_rng(9)
    origins = gen.uniform(-5, 5, size=(len(table), 3))
    for column, axis in enumerate("XYZ"):
        table[f"rlnCenteredCoordinate{axis}Angst"] += origins[:, column]
        table[f"rlnOrigin{axis}Angst"] = origins[:, column]
    write_star({"optics": blocks["optics"], "particles": table}, tmp_path / "moved.star")
    moved = OptimisationSet(
        particles_file=tmp_path / "moved.star", tomograms_file=tilt_series / "tomograms.star"
    )
    write_optimisation_set(moved, tmp_path / "moved_set.star")
    out = tmp_path / "moved_extract"
    _extract(tilt_series, out, optimisation_set=tmp_path / "moved_set.star")
    got, want = load_particles(out / "particles.star"), load_particles(extracted / "particles.star")
    np.testing.assert_allclose(got.centered_coordinates_angst(),
                               want.centered_coordinates_angst(), rtol=0, atol=1e-6)  # fmt: skip
    np.testing.assert_array_equal(got.origins_angst(), 0.0)
    for a, b in zip(got.image_paths(), want.image_paths(), strict=True):
        # the same centre up to the 12-digit STAR round trip of the moved picks
        np.testing.assert_allclose(
            read_mrc(a)[0], read_mrc(b)[0], rtol=0, atol=1e-4 * np.abs(read_mrc(b)[0]).max()
        )


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"box_size": 15}, "--box 15"),
        ({"crop_size": 10}, "--crop 10"),
        ({"binning": 0.0}, "--bin 0"),
        ({"min_frames": -1}, "--min_frames -1"),
        ({"max_dose_e_per_angst2": math.nan}, "--max_dose nan"),
    ],
)
def test_bad_options_name_the_option(changes, message, tmp_path):
    values = {"optimisation_set": tmp_path / "set.star", "output_dir": tmp_path, "box_size": 8}
    values.update(changes)
    with pytest.raises(InputError, match=message):
        ExtractOptions(**values)


def test_a_set_without_tomograms_is_refused(tilt_series, tmp_path):
    only = OptimisationSet(particles_file=tilt_series / "particles.star")
    write_optimisation_set(only, tmp_path / "set.star")
    with pytest.raises(InputError, match="no rlnTomoTomogramsFile"):
        _extract(tilt_series, tmp_path / "out", optimisation_set=tmp_path / "set.star")


@pytest.mark.parametrize("stack2d", [False, True])
def test_one_particle_batches_on_each_device_write_the_same_files(
    tilt_series, extracted, stacks, stack2d, device, tmp_path
):
    """Batches of one particle through both tomograms: on a GPU every batch reuses the pinned
    host buffers of the batch before last (``tomo.HostBuffers``) while that one's files are
    still being written. The files equal the one-batch CPU extraction's, to float32 rounding of
    the few FFTs between (about ``log2(n^3)`` units of roundoff each, four of them, a factor 4
    to spare; batched transforms of other widths round differently on the CPU as well)."""
    _extract(tilt_series, tmp_path, device, batch_size=1, stack2d=stack2d)
    reference = stacks if stack2d else extracted
    names = sorted(p.relative_to(reference) for p in (reference / "Subtomograms").rglob("*.mrc*"))
    written = (tmp_path / "Subtomograms").rglob("*.mrc*")
    assert names == sorted(p.relative_to(tmp_path) for p in written)
    assert len(names) >= (6 if stack2d else 12)
    for name in names:
        (want, want_voxel), (got, got_voxel) = read_mrc(reference / name), read_mrc(tmp_path / name)
        assert got_voxel == want_voxel
        bound = 4 * 4 * math.log2(BOX**3) * U32
        np.testing.assert_allclose(got, want, rtol=0, atol=bound * float(np.abs(want).max()))
