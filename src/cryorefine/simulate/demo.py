"""The embedded default end to end: simulate, refine, post-process, compare with the truth.

The default demo (``DEMOS["relion4"]``) is the flavour of RELION's tomography
tutorial: RELION-4 pseudo-subtomograms (3D data, 3D CTF and multiplicity,
``optimisation_set.star``) of the packaged HIV-1 CA hexamer (C6), each seen by
a tilt series of -60 to +60 degrees in 3-degree steps (41 tilts, 3 e/A^2 each),
refined as the tutorial does (``--ios``, ``--ctf``, C6, solvent flattening,
zero-masked particles, halves joined below 40 A, 'finer angular sampling faster'),
scaled down to about a minute on two idle CPU cores: 48 particles in boxes of 32
at 5.4 A/px (tutorial: thousands, box 96 at bin 6), healpix order 1 then local
searches from order 3 (tutorial: 2 and 4), offsets searched 2 px in 1 px steps
(tutorial: 5 and 2), initial low-pass 40 A (tutorial: 60 A). The signal-to-noise
ratio, 0.3 per tilt image (``simulate.options.SNR_DEFINITION``), is low enough that
the data, not the box, set the resolution: the FSC against the truth falls below
0.5 several shells before Nyquist (10.8 A).

``DEMOS["spa"]`` is the single-particle flavour (300 images, box 32 at 5.4 A/px,
SNR 10: resolution at Nyquist), half a minute. Either run is post-processed with
the simulation's mask and judged against the truth (``simulate.evaluate``).
"""

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from cryorefine.refine.driver import refine_run
from cryorefine.refine.options import RefineOptions
from cryorefine.refine.postprocess import PostprocessOptions
from cryorefine.refine.postprocess_files import PostprocessFiles, run_postprocess
from cryorefine.simulate.dataset import simulate_dataset
from cryorefine.simulate.evaluate import compare_to_truth
from cryorefine.simulate.options import SimulationOptions

__all__ = [
    "DEMOS",
    "DEMO_SYMMETRY",
    "DemoOptions",
    "DemoResult",
    "demo_refine_options",
    "demo_simulation_options",
    "run_demo",
]

logger = logging.getLogger(__name__)

#: The embedded hexamer's point group, imposed on the truth and in the refinement.
DEMO_SYMMETRY = "C6"


@dataclass(frozen=True)
class DemoOptions:
    """The data set a demo simulates and the sampling its refinement starts from.

    Attributes
    ----------
    data_format
        ``simulate --format``: ``relion4`` (pseudo-subtomograms) or ``spa``.
    n_particles, box_size, pixel_size_angst, snr
        ``simulate --n_particles --box --angpix --snr``.
    healpix_order, auto_local_healpix_order
        ``refine --healpix_order --auto_local_healpix_order``.
    offset_range_px, offset_step_px
        ``refine --offset_range --offset_step`` (pixels, as RELION).
    ini_high_angst, particle_diameter_angst
        ``refine --ini_high --particle_diameter``.
    seed
        ``simulate --seed``.
    """

    data_format: str
    n_particles: int
    box_size: int
    pixel_size_angst: float
    snr: float
    healpix_order: int = 1
    auto_local_healpix_order: int = 3
    offset_range_px: float = 2.0
    offset_step_px: float = 1.0
    ini_high_angst: float = 40.0
    particle_diameter_angst: float = 150.0
    seed: int = 1

    @property
    def nyquist_angst(self) -> float:
        """The finest resolution the box can hold: two pixels."""
        return 2.0 * self.pixel_size_angst


#: The demos ``cryorefine demo --format`` runs (module docstring).
DEMOS: dict[str, DemoOptions] = {
    "relion4": DemoOptions(
        data_format="relion4", n_particles=48, box_size=32, pixel_size_angst=5.4, snr=0.3
    ),
    "spa": DemoOptions(
        data_format="spa",
        n_particles=300,
        box_size=32,
        pixel_size_angst=5.4,
        snr=10.0,
        offset_range_px=3.0,
    ),
}


@dataclass(frozen=True)
class DemoResult:
    """What the demo measured, and where its files are.

    ``resolution_vs_truth_05_angst`` is the one to compare with the gold-standard
    resolution: the FSC of a map against a noise-free truth is 0.5 where the FSC
    between two half maps is 0.143 (Rosenthal & Henderson 2003).
    """

    folder: Path
    data_format: str
    nyquist_angst: float
    resolution_vs_truth_angst: float
    resolution_vs_truth_05_angst: float
    gold_standard_resolution_angst: float
    postprocess_resolution_angst: float
    median_angular_error_deg: float
    iterations: int


def demo_simulation_options(demo: DemoOptions, folder: Path) -> SimulationOptions:
    """What ``simulate`` makes for ``demo`` in ``folder``: the embedded hexamer, C6."""
    return SimulationOptions(
        output_dir=folder,
        symmetry=DEMO_SYMMETRY,
        n_particles=demo.n_particles,
        box_size=demo.box_size,
        pixel_size_angst=demo.pixel_size_angst,
        snr=demo.snr,
        data_format=demo.data_format,
        ref_lowpass_angst=demo.ini_high_angst,
        ref_rotation_deg=15.0,
        seed=demo.seed,
    )


def demo_refine_options(demo: DemoOptions, simulation: Path, root: Path) -> RefineOptions:
    """The refinement of the data set in ``simulation``, written to ``root`` (the tutorial's flags).

    RELION-4 pseudo-subtomograms are read through their ``optimisation_set.star``
    (``--ios``), as in the tutorial; single particles through ``particles.star``.
    """
    tomography = demo.data_format == "relion4"  # the tutorial's input: an optimisation set
    return RefineOptions(
        input_particles=None if tomography else simulation / "particles.star",
        optimisation_set=simulation / "optimisation_set.star" if tomography else None,
        reference=simulation / "reference.mrc",
        output_root=root,
        ini_high=demo.ini_high_angst,
        ctf=True,
        particle_diameter=demo.particle_diameter_angst,
        healpix_order=demo.healpix_order,
        auto_local_healpix_order=demo.auto_local_healpix_order,
        offset_range=demo.offset_range_px,
        offset_step=demo.offset_step_px,
        sym=DEMO_SYMMETRY,
        zero_mask=True,
        flatten_solvent=True,
        low_resol_join_halves=40.0,
        auto_ignore_angles=True,
        auto_resol_angles=True,
    )


def run_demo(
    folder: Path, *, device: torch.device, demo: DemoOptions = DEMOS["relion4"]
) -> DemoResult:
    """Simulate, refine and post-process the embedded default in ``folder``.

    Writes ``Simulate/`` (the data set and its truth), ``Refine3D/run_*`` and
    ``PostProcess/postprocess*`` under ``folder``.

    Parameters
    ----------
    folder
        Output folder (created if needed).
    device
        Where the simulation and the refinement run.
    demo
        The data set and sampling (``DEMOS``; default the tutorial's flavour).
    """
    folder = Path(folder)
    simulation = folder / "Simulate"
    logger.info(
        "demo: simulating %d %s particles of the embedded C6 hexamer (box %d at %.1f A/px) in %s",
        demo.n_particles,
        demo.data_format,
        demo.box_size,
        demo.pixel_size_angst,
        simulation,
    )
    simulate_dataset(demo_simulation_options(demo, simulation), device=device)
    root = folder / "Refine3D" / "run"
    root.parent.mkdir(parents=True, exist_ok=True)
    options = demo_refine_options(demo, simulation, root)
    logger.info("demo: refining (%s)", options.command_line_text())
    _, state = refine_run(options, device=device)
    post = run_postprocess(
        PostprocessFiles(
            half1=Path(f"{root}_half1_class001_unfil.mrc"),
            output_root=folder / "PostProcess" / "postprocess",
            mask=simulation / "mask.mrc",
        ),
        PostprocessOptions(auto_bfactor=True),
    )
    truth = compare_to_truth(
        Path(f"{root}_data.star"), Path(f"{root}_class001.mrc"), simulation, symmetry=DEMO_SYMMETRY
    )
    return DemoResult(
        folder=folder,
        data_format=demo.data_format,
        nyquist_angst=demo.nyquist_angst,
        resolution_vs_truth_angst=truth.resolution_0143_angst,
        resolution_vs_truth_05_angst=truth.resolution_05_angst,
        gold_standard_resolution_angst=1.0 / state.current_resolution_inv_angst,
        postprocess_resolution_angst=float(post.final_resolution_angst),
        median_angular_error_deg=truth.median_angular_error_deg,
        iterations=state.iteration,
    )
