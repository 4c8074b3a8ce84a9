"""RELION-5 2D stacks read as the pseudo-subtomograms ``extract`` writes (``tomo.stack_batches``).

One noise-free simulated tilt series (``simulate --format tilt_series``: 6 particles in
2 tomograms, 7 tilts), extracted from the truth's poses twice: as RELION-4
pseudo-subtomograms and as RELION-5 2D stacks. With ``--max_dose`` some tilts are left
out of every stack (``rlnTomoVisibleFrames``), so that visibility matters. The batches of
the stacks must be the batches of the volumes: data, CTF^2 and multiplicity, to the float
rounding of the two routes. Then refine runs on the stacks, and refuses them without
their tomograms.
"""

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from cryorefine.cli.main import main
from cryorefine.errors import InputError
from cryorefine.fourier.conventions import frequency_indices
from cryorefine.io import (
    OptimisationSet,
    load_particles,
    read_mrc,
    read_star,
    write_optimisation_set,
    write_star,
)
from cryorefine.simulate import SimulationOptions, simulate_dataset
from cryorefine.tomo import (
    ExtractOptions,
    StackParticleSet,
    extract_particles,
    particle_batches,
    with_tomograms,
)

N = 24
PIXEL = 6.0
TILTS = 7
MAX_DOSE = 12.0  # 3 e/A^2 per tilt: the first 5 tilts of the dose-symmetric order
U32 = 2.0**-24
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tilt_series(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The simulation, and optimisation sets of the truth's poses: shared and own frames."""
    folder = tmp_path_factory.mktemp("tilt_series")
    simulate_dataset(
        SimulationOptions(
            output_dir=folder, box_size=N, pixel_size_angst=PIXEL, n_particles=6,
            particles_per_tomogram=3, data_format="tilt_series", tilt_range_deg=(-45.0, 45.0),
            tilt_step_deg=15.0, snr=math.inf, seed=5, ref_lowpass_angst=30.0,
        )
    )  # fmt: skip
    blocks = read_star(folder / "truth_particles.star")
    table = blocks["particles"].copy()
    angles = np.random.default_rng(4).uniform(-180.0, 180.0, size=(len(table), 3))
    angles[:, 1] = np.abs(angles[:, 1])
    for column, label in enumerate(("Rot", "Tilt", "Psi")):
        table[f"rlnTomoSubtomogram{label}"] = angles[:, column]
    write_star({**blocks, "particles": table}, folder / "framed_particles.star")
    for name, particles in (("truth", "truth_particles.star"), ("framed", "framed_particles.star")):
        write_optimisation_set(
            OptimisationSet(
                particles_file=folder / particles, tomograms_file=folder / "tomograms.star"
            ),
            folder / f"{name}_set.star",
        )
    return folder


def _extract(tilt_series: Path, out: Path, set_name: str = "truth", **changes) -> Path:
    values: dict[str, object] = {
        "optimisation_set": tilt_series / f"{set_name}_set.star",
        "output_dir": out,
        "box_size": N,
        "max_dose_e_per_angst2": MAX_DOSE,
    }
    values.update(changes)
    return extract_particles(ExtractOptions(**values)).particles_star  # type: ignore[arg-type]


def _both(tilt_series: Path, out: Path, set_name: str = "truth", **changes):
    """The particles of both routes: volumes (relion4) and stacks with their tomograms."""
    volumes = load_particles(_extract(tilt_series, out / "volumes", set_name, **changes))
    stacks = load_particles(
        _extract(tilt_series, out / "stacks", set_name, stack2d=True, **changes)
    )
    joined = with_tomograms(stacks, tomograms_file=tilt_series / "tomograms.star")
    return volumes, joined


def _data_bound(batch) -> float:
    """Largest difference, per coefficient, of the two routes' data (float32 arithmetic).

    Both routes insert the same float32 tilt transforms Z (box n, i tilts), except that the
    stacks' Z went through real space: a float32 inverse and forward 2D FFT and a float32
    store, |dZ| <= ||Z||_2 (10 log2(n^2) + 1) u (Higham 2002, 24.1: a radix-2 FFT's error is
    at most ~5 log2(N) u in the 2-norm). The insertion gives each voxel k at most M(k) (its
    multiplicity) times one tilt's bilinear value over n, so dD <= max(M) |dZ| / n; each
    route's insertion sums <= 4 i slab terms in float32 (gamma_{4i} of the same sum). Each
    route then takes D to real space and back (and the volumes to a float32 file):
    <= (10 log2(n^3) + 1) u ||D||_2 each.
    """
    z_norm = float(batch["z_norm"])
    d_norm = float(batch["d_norm"])
    m, n = float(batch["m_max"]), N
    two_d = z_norm * (10 * math.log2(n * n) + 1) * U32 * m / n
    insertion = 2 * 4 * TILTS * U32 * m * float(batch["z_max"]) / n
    three_d = 2 * (10 * math.log2(n**3) + 1) * U32 * d_norm
    return two_d + insertion + three_d


def _z_figures(stacks: StackParticleSet, data: torch.Tensor, multiplicity: torch.Tensor):
    images = [torch.as_tensor(read_mrc(path)[0]).double() for path in stacks.image_paths()]
    # Forward-normalised FFT: ||Z||_2 = ||image||_2 / n (Parseval), max |Z| <= sum |image| / n^2;
    # a half-complex grid holds at least half of a full grid's squared norm (sqrt 2 below).
    z_norm = max(float(image.norm()) for image in images) / N
    z_max = max(float(image.abs().sum()) for image in images) / N**2
    return {
        "z_norm": z_norm,
        "z_max": z_max,
        "d_norm": math.sqrt(2.0) * float(data.abs().flatten(1).norm(dim=1).max()),
        "m_max": float(multiplicity.max()),
    }


def _assert_same_batches(volumes, stacks, *, use_ctf: bool = True, inside: float | None = None):
    rows = np.array([5, 0, 3, 1, 4, 2])  # across both tomograms, out of file order
    got = list(particle_batches(stacks, batch_size=4, device=CPU, rows=rows, use_ctf=use_ctf))
    want = list(particle_batches(volumes, batch_size=4, device=CPU, rows=rows, use_ctf=use_ctf))
    assert [len(b.rows) for b in got] == [4, 2]
    k = frequency_indices(N, 3)
    radius = (k * k).sum(dim=-1).double().sqrt()
    keep = torch.ones_like(radius, dtype=torch.bool) if inside is None else radius < inside
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a.rows, b.rows, rtol=0, atol=0)
        torch.testing.assert_close(a.rotations, b.rotations, rtol=0, atol=0)
        torch.testing.assert_close(a.origins_px, b.origins_px, rtol=0, atol=0)
        assert a.ctf_premultiplied == b.ctf_premultiplied
        assert a.finite.all()
        assert b.finite.all()
        assert a.data_ft.shape == (len(a.rows), N, N, N // 2 + 1)
        multiplicity = b.multiplicity if b.multiplicity is not None else torch.full_like(b.ctf, 7)
        figures = _z_figures(stacks.subset(a.rows.numpy()), b.data_ft, multiplicity)
        bound = _data_bound(figures)
        torch.testing.assert_close(a.data_ft[:, keep], b.data_ft[:, keep], rtol=0, atol=bound)
        assert float(b.data_ft.abs().max()) > 100 * bound  # the check has teeth
        if not use_ctf:
            assert a.multiplicity is None
            assert b.multiplicity is None
            continue
        # The same float64 CTF and slab weights of the same tilts (the pixel size through a
        # 12-digit STAR label: 1e-12 relative), each rounded once to float32.
        scale = float(b.ctf.abs().max())
        torch.testing.assert_close(a.ctf[:, keep], b.ctf[:, keep], rtol=0, atol=2 * U32 * scale)
        torch.testing.assert_close(a.multiplicity, b.multiplicity, rtol=0, atol=2 * U32 * TILTS)


@pytest.fixture(scope="module")
def shared_frames(tilt_series: Path, tmp_path_factory: pytest.TempPathFactory):
    return _both(tilt_series, tmp_path_factory.mktemp("shared"))


def test_stacks_leave_out_the_tilts_above_the_dose(shared_frames) -> None:
    _, stacks = shared_frames
    assert isinstance(stacks, StackParticleSet)
    assert stacks.image_dimensionality == 3  # the E-step reads pseudo-subtomograms
    frames = np.stack(stacks.visible_frames())
    assert frames.shape == (6, TILTS)
    assert frames.sum(axis=1).tolist() == [5] * 6  # a test of visibility, not of all-ones


def test_stack_batches_equal_the_pseudo_subtomogram_batches(shared_frames) -> None:
    volumes, stacks = shared_frames
    _assert_same_batches(volumes, stacks)


def test_without_the_ctf_the_data_still_agree_and_the_weights_are_ones(shared_frames) -> None:
    volumes, stacks = shared_frames
    _assert_same_batches(volumes, stacks, use_ctf=False)


def test_particles_with_their_own_frames_use_them(tilt_series: Path, tmp_path: Path) -> None:
    volumes, stacks = _both(tilt_series, tmp_path, "framed")
    assert np.ptp(stacks.subtomogram_angles_deg(), axis=0).min() > 1.0
    _assert_same_batches(volumes, stacks)


def test_stacks_without_the_ctf_get_each_tilts_ctf_and_dose(tilt_series, tmp_path) -> None:
    # Stacks written without the CTF (extract --no_ctf) are multiplied by it on reading.
    # Against volumes extracted with it, with no circular crop (a crop after the CTF,
    # not before, would differ): equal where no 2D Nyquist coefficient, whose symmetry
    # the stack's real-space round trip restores, reaches the voxel (|k| < n/2 - 2).
    volumes = load_particles(_extract(tilt_series, tmp_path / "v", circle_crop=False))
    written = _extract(tilt_series, tmp_path / "s", stack2d=True, circle_crop=False, use_ctf=False)
    raw = load_particles(written)
    assert not raw.ctf_premultiplied
    stacks = with_tomograms(raw, tomograms_file=tilt_series / "tomograms.star")
    _assert_same_batches(volumes, stacks, inside=N / 2 - 2)


def test_stacks_without_tomograms_are_refused_naming_the_file(shared_frames) -> None:
    _, stacks = shared_frames
    alone = load_particles(stacks.path)
    message = f"{re.escape(str(stacks.path))}: RELION-5 2D stacks.*--ios"
    with pytest.raises(InputError, match=message):
        next(particle_batches(alone, batch_size=2, device=CPU))
    with pytest.raises(InputError, match=message):
        with_tomograms(alone, tomograms_file=None)


def test_refine_with_i_alone_refuses_stacks_naming_the_file(tilt_series, shared_frames, capsys):
    _, stacks = shared_frames
    out = stacks.path.parent / "Refine_alone"
    status = main(
        ["refine", "--i", str(stacks.path), "--ref", str(tilt_series / "reference.mrc"),
         "--o", str(out / "run"), "--particle_diameter", "100"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert status == 2
    assert str(stacks.path) in err
    assert "--ios" in err


def test_refine_runs_on_stacks_and_writes_each_iteration(tilt_series, shared_frames) -> None:
    _, stacks = shared_frames
    folder = stacks.path.parent
    out = folder / "Refine" / "run"
    status = main(
        ["refine", "--ios", str(folder / "optimisation_set.star"),
         "--ref", str(tilt_series / "reference.mrc"), "--o", str(out), "--ini_high", "40",
         "--ctf", "--particle_diameter", "100", "--healpix_order", "1",
         "--auto_local_healpix_order", "3", "--offset_range", "2", "--offset_step", "1",
         "--iter", "2"]
    )  # fmt: skip
    assert status == 0
    for iteration in (1, 2):
        for name in ("data.star", "half1_class001.mrc", "half2_class001.mrc", "optimiser.star"):
            assert (out.parent / f"run_it{iteration:03d}_{name}").is_file(), (iteration, name)
    refined = load_particles(out.parent / "run_it002_data.star")
    assert refined.flavour == "relion5_stack2d"  # written back as the stacks it read
    assert len(refined) == len(stacks)
    assert "iter=002" in (out.parent / "run.log").read_text()
