"""`cryorefine demo`, the README's first command, runs end to end and reports against the truth.

The default demo (RELION-4 pseudo-subtomograms) takes minutes on two CPU cores, so
it runs only with the ``slow`` tests; the fast test runs the same command on a
shrunken single-particle data set, which goes through every step (simulate,
refine to convergence, post-process, compare with the truth, report, run.log).
"""

from pathlib import Path

import pytest

from cryorefine.cli.main import main
from cryorefine.simulate.demo import (
    DEMOS,
    DemoOptions,
    demo_refine_options,
    demo_simulation_options,
)

#: 60 images of box 16 at 10.8 A/px: converges in a few iterations of a second or two.
TINY_SPA = DemoOptions(
    data_format="spa", n_particles=60, box_size=16, pixel_size_angst=10.8, snr=10.0
)

OUTPUTS = (
    "Simulate/truth.mrc",
    "Refine3D/run_class001.mrc",
    "Refine3D/run_data.star",
    "Refine3D/run_report.html",
    "Refine3D/run.log",
    "PostProcess/postprocess.star",
    "PostProcess/postprocess_masked.mrc",
)


def _printed(text: str, label: str) -> float:
    """The number after ``label`` in the demo's summary, e.g. ``... (FSC 0.5, ...): 17.28 A``."""
    (line,) = [line for line in text.splitlines() if label in line]
    return float(line.rsplit(":", 1)[1].split()[0])


def test_demo_simulates_refines_postprocesses_and_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(DEMOS, "spa", TINY_SPA)
    caplog.set_level("INFO", logger="cryorefine")
    assert main(["demo", "--o", str(tmp_path / "demo"), "--format", "spa"]) == 0
    for name in OUTPUTS:
        assert (tmp_path / "demo" / name).is_file(), name
    nyquist = TINY_SPA.nyquist_angst
    for label in ("(FSC 0.5", "(FSC 0.143)", "gold-standard", "post-processed"):
        # no resolution finer than two pixels; rounding to 2 decimals in the print
        assert _printed(caplog.text, label) >= nyquist - 0.005, label
    assert f"Nyquist {nyquist:.1f} A" in caplog.text
    log = (tmp_path / "demo" / "Refine3D" / "run.log").read_text()
    assert "iter=001" in log  # the refinement's lines are in run.log too
    assert "resolution against the truth" in log
    assert "\r" not in log


def test_default_demo_is_the_tutorials_flavour_scaled_down() -> None:
    demo = DEMOS["relion4"]
    simulation = demo_simulation_options(demo, Path("Simulate"))  # checked as simulate's options
    assert (simulation.data_format, simulation.symmetry) == ("relion4", "C6")
    # the tutorial's tilt scheme: -60 to +60 degrees in 3-degree steps
    assert (simulation.tilt_range_deg, simulation.tilt_step_deg) == ((-60.0, 60.0), 3.0)
    line = demo_refine_options(demo, Path("Simulate"), Path("Refine3D/run")).command_line_text()
    words = line.split()
    # the tutorial's relion_refine flags (REFINE_SPEC; Refine3D/job012 of the tutorial)
    for flag in ("--ios", "--ctf", "--flatten_solvent", "--zero_mask", "--auto_ignore_angles",
                 "--auto_resol_angles"):  # fmt: skip
        assert flag in words, flag
    assert words[words.index("--ios") + 1] == "Simulate/optimisation_set.star"
    assert words[words.index("--sym") + 1] == "C6"
    assert float(words[words.index("--low_resol_join_halves") + 1]) == 40.0
    # scaled down: one order coarser than the tutorial's 2 and 4
    assert int(words[words.index("--healpix_order") + 1]) == 1
    assert int(words[words.index("--auto_local_healpix_order") + 1]) == 3
    # the particle (150 A) fits in the box
    assert demo.box_size * demo.pixel_size_angst > demo.particle_diameter_angst


@pytest.mark.slow
def test_default_demo_recovers_the_truth_below_nyquist(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="cryorefine")
    assert main(["demo", "--o", str(tmp_path / "demo")]) == 0
    for name in OUTPUTS:
        assert (tmp_path / "demo" / name).is_file(), name
    demo = DEMOS["relion4"]
    versus_truth = _printed(caplog.text, "(FSC 0.5")
    # Limited by the data, not the box: at least one shell coarser than Nyquist
    # (shell n/2 - 1 of box n is at n * pixel / (n/2 - 1) Angstrom) ...
    one_shell_in = demo.box_size * demo.pixel_size_angst / (demo.box_size // 2 - 1)
    assert versus_truth >= one_shell_in - 0.005
    # ... and the structure is found: better than the 40 A of the starting reference.
    assert versus_truth < demo.ini_high_angst
    # Aligned: median error below the coarsest local step (healpix order 3: 7.5 degrees).
    assert _printed(caplog.text, "median angular error") < 7.5
