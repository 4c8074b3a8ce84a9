"""Bad particles in a batch: a NaN or an infinity in an image or a CTF volume is found,
flagged, zeroed and named once; the other particles of the batch are untouched.

``finite_particles`` is checked against a plain per-particle loop over Python floats
on random tensors with NaN, +inf and -inf put at random places (real and
imaginary parts apart). ``particle_batches`` is checked on simulated particles
(SPA images; subtomograms with a 3D CTF) whose files had one value replaced in
their bytes: the bad particles' data, CTF and flag, and the good particles' data
against the same batch read from the untouched files (exactly: each transform is
computed from its own image, so a NaN elsewhere in the batch cannot reach it).
"""

import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import starfile
import torch

from cryorefine.io import load_particles
from cryorefine.simulate import SimulationOptions, simulate_dataset
from cryorefine.tomo import particle_batches
from cryorefine.tomo.particle_batches import finite_particles

LOGGER = "cryorefine.tomo.particle_batches"


# --- finite_particles ------------------------------------------------------------------


def _finite_by_loop(values: torch.Tensor) -> list[bool]:
    """The slow, obvious reference: every part of every value of a particle is a finite float."""
    answer = []
    for particle in values.cpu():
        numbers = particle.reshape(-1).tolist()
        parts = [p for v in numbers for p in ((v.real, v.imag) if isinstance(v, complex) else (v,))]
        answer.append(all(math.isfinite(p) for p in parts))
    return answer


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex64])
@pytest.mark.parametrize("shape", [(9,), (9, 6, 4), (9, 4, 4, 3)])
def test_finite_particles_agrees_with_a_per_particle_loop(
    device: torch.device, dtype: torch.dtype, shape: tuple[int, ...]
) -> None:
    gen = torch.Generator().manual_seed(sum(shape) + len(str(dtype)))
    values = torch.randn(shape, generator=gen, dtype=dtype)
    flat = torch.view_as_real(values).reshape(-1) if dtype.is_complex else values.reshape(-1)
    picks = torch.randint(0, flat.shape[0], (5,), generator=gen)
    bad_values = (math.nan, math.inf, -math.inf, math.nan, math.inf)
    for pick, bad in zip(picks.tolist(), bad_values, strict=True):
        flat[pick] = bad  # a view: writes into values (one part of a complex value)
    got = finite_particles(values.to(device))
    assert got.device.type == device.type
    assert got.dtype == torch.bool
    want = _finite_by_loop(values)
    assert got.tolist() == want
    assert not all(want)  # the test put bad values in


def test_finite_particles_of_finite_values_and_of_no_particle() -> None:
    assert finite_particles(torch.zeros(4, 3, 2)).tolist() == [True] * 4
    assert finite_particles(torch.full((2, 3), 1e38) * 10).tolist() == [False, False]  # overflow
    assert finite_particles(torch.zeros(0, 5, 3, dtype=torch.complex64)).shape == (0,)


# --- particle_batches on files with bad values -------------------------------------------


def _poke(path: Path, index: tuple[int, ...], value: float) -> None:
    """Set voxel ``(image, y, x)`` of a stack or ``(z, y, x)`` of a volume, in the file's bytes.

    Not through mrcfile, which would recompute the header statistics and warn.
    """
    with open(path, "rb") as stream:
        header = np.frombuffer(stream.read(1024), dtype=np.int32)
    nx, ny, nz, mode, extended = (int(header[i]) for i in (0, 1, 2, 3, 23))
    assert mode == 2, "float32 files only"
    data = np.memmap(path, dtype=np.float32, mode="r+", offset=1024 + extended, shape=(nz, ny, nx))
    data[index] = value
    data.flush()


def _simulate(folder: Path, data_format: str) -> Path:
    simulate_dataset(
        SimulationOptions(
            output_dir=folder,
            n_particles=6 if data_format == "spa" else 3,
            box_size=8,
            pixel_size_angst=20.0,
            max_offset_px=1.0,
            data_format=data_format,
            seed=5,
        )
    )
    return folder / "particles.star"


@pytest.fixture(scope="module")
def spa(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(untouched particles.star, bad.star): image 2 holds a NaN, image 5 a -inf."""
    folder = tmp_path_factory.mktemp("spa_batches")
    star = _simulate(folder, "spa")
    shutil.copy(folder / "particles.mrcs", folder / "bad.mrcs")
    _poke(folder / "bad.mrcs", (1, 4, 4), math.nan)
    _poke(folder / "bad.mrcs", (4, 0, 7), -math.inf)
    blocks = starfile.read(star, always_dict=True)
    table = blocks["particles"]
    names = table["rlnImageName"].str.replace("particles.mrcs", "bad.mrcs")
    starfile.write({**blocks, "particles": table.assign(rlnImageName=names)}, folder / "bad.star")
    return star, folder / "bad.star"


SPA_BAD = [1, 4]  # 0-based rows


def _batches(star: Path, device: torch.device, **options) -> list:
    return list(
        particle_batches(load_particles(star), batch_size=4, device=device, use_ctf=True, **options)
    )


def test_bad_images_are_flagged_and_zeroed_and_the_others_untouched(
    spa: tuple[Path, Path], device: torch.device
) -> None:
    clean, bad = (_batches(star, device) for star in spa)
    assert [len(b.rows) for b in bad] == [4, 2]
    finite = torch.cat([b.finite for b in bad]).cpu()
    assert finite.tolist() == [row not in SPA_BAD for row in range(6)]
    assert torch.cat([b.finite for b in clean]).all()
    for got, want in zip(bad, clean, strict=True):
        keep = got.finite
        assert torch.equal(got.data_ft[keep], want.data_ft[keep])  # module docstring: exact
        assert torch.equal(got.ctf[keep], want.ctf[keep])
        assert torch.count_nonzero(got.data_ft[~keep]) == 0
        assert torch.count_nonzero(got.ctf[~keep]) == 0
        for tensor in (got.data_ft, got.ctf, got.rotations, got.origins_px):
            assert torch.isfinite(tensor).all()


def test_select_keeps_the_chosen_particles_in_order(
    spa: tuple[Path, Path], device: torch.device
) -> None:
    first = _batches(spa[1], device)[0]
    kept = first.select(first.finite)
    assert kept.rows.tolist() == [0, 2, 3]
    assert kept.finite.all()
    assert torch.equal(kept.data_ft, first.data_ft[[0, 2, 3]])
    assert torch.equal(kept.origins_px, first.origins_px[[0, 2, 3]])
    assert kept.multiplicity is None
    assert kept.ctf_premultiplied == first.ctf_premultiplied


def test_each_bad_particle_is_named_once_per_set_of_named_rows(
    spa: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    cpu = torch.device("cpu")
    named: set[int] = set()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for _ in range(3):  # three iterations of one run
            _batches(spa[1], cpu, named_rows=named)
    messages = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert named == set(SPA_BAD)
    assert len(messages) == 2, messages
    for row, message in zip(SPA_BAD, messages, strict=True):
        assert message == (
            f"{spa[1]}: data_particles row {row + 1} (rlnImageName {row + 1:06d}@bad.mrcs): "
            "its image holds NaN or infinity; the particle is left out"
        )
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        _batches(spa[1], cpu)  # no set: flagged, not named
        _batches(spa[0], cpu, named_rows=set())  # nothing bad: nothing named
        _batches(spa[1], cpu, named_rows=set(), rows=np.array([4, 3]))  # a new run: named again
    assert [r.getMessage().split(": ")[1] for r in caplog.records] == [
        "data_particles row 5 (rlnImageName 000005@bad.mrcs)"
    ]


def test_a_bad_ctf_volume_flags_the_particle_and_is_named(
    tmp_path: Path, device: torch.device, caplog: pytest.LogCaptureFixture
) -> None:
    star = _simulate(tmp_path / "sim", "subtomo3d")
    ctf_file = tmp_path / "sim" / "subtomograms" / "particle_000002_ctf.mrc"
    clean = _batches(star, device)[0]
    _poke(ctf_file, (4, 4, 4), math.inf)  # the centre: frequency 0, read in every layout
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        (batch,) = _batches(star, device, named_rows=set())
    assert batch.finite.tolist() == [True, False, True]
    assert torch.count_nonzero(batch.data_ft[1]) == 0
    assert torch.count_nonzero(batch.ctf[1]) == 0
    assert torch.equal(batch.data_ft[[0, 2]], clean.data_ft[[0, 2]])
    assert torch.equal(batch.ctf[[0, 2]], clean.ctf[[0, 2]])
    (message,) = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert message == (
        f"{star}: data_particles row 2 (rlnImageName subtomograms/particle_000002.mrc): its CTF "
        "volume (rlnCtfImage subtomograms/particle_000002_ctf.mrc) holds NaN or infinity; "
        "the particle is left out"
    )
