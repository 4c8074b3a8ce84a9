"""The embedded default end to end: simulate, refine, post-process, compare with the truth.

A small SPA data set of the packaged HIV-1 CA hexamer (C6; box 32 at 5.4 A/px,
300 particles), refined with the tutorial's options scaled down (initial
low-pass 40 A, healpix order 1 then local searches from order 3, 'finer angular
sampling faster', solvent flattening, zero-masked particles), post-processed
with the simulation's mask, and judged against the truth. The tutorial's own
data are pseudo-subtomograms; SPA keeps the demo within minutes on two CPU
cores (``simulate --format relion4`` makes the tomography flavour).
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

__all__ = ["DemoResult", "run_demo"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoResult:
    """What the demo measured, and where its files are."""

    folder: Path
    resolution_vs_truth_angst: float
    gold_standard_resolution_angst: float
    postprocess_resolution_angst: float
    median_angular_error_deg: float
    iterations: int


def run_demo(folder: Path, *, device: torch.device) -> DemoResult:
    """Simulate, refine and post-process the embedded default in ``folder``."""
    folder = Path(folder)
    simulation = folder / "Simulate"
    logger.info("demo: simulating 300 particles of the embedded C6 hexamer in %s", simulation)
    simulate_dataset(
        SimulationOptions(
            output_dir=simulation,
            symmetry="C6",
            n_particles=300,
            box_size=32,
            pixel_size_angst=5.4,
            snr=10.0,
            data_format="spa",
            ref_lowpass_angst=40.0,
            ref_rotation_deg=15.0,
            seed=1,
        ),
        device=device,
    )
    root = folder / "Refine3D" / "run"
    root.parent.mkdir(parents=True, exist_ok=True)
    options = RefineOptions(
        input_particles=simulation / "particles.star",
        reference=simulation / "reference.mrc",
        output_root=root,
        ini_high=40.0,
        ctf=True,
        particle_diameter=150.0,
        healpix_order=1,
        auto_local_healpix_order=3,
        offset_range=3.0,
        offset_step=1.0,
        sym="C6",
        zero_mask=True,
        flatten_solvent=True,
        low_resol_join_halves=40.0,
        auto_ignore_angles=True,
        auto_resol_angles=True,
    )
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
        Path(f"{root}_data.star"), Path(f"{root}_class001.mrc"), simulation, symmetry="C6"
    )
    return DemoResult(
        folder=folder,
        resolution_vs_truth_angst=truth.resolution_0143_angst,
        gold_standard_resolution_angst=1.0 / state.current_resolution_inv_angst,
        postprocess_resolution_angst=float(post.final_resolution_angst),
        median_angular_error_deg=truth.median_angular_error_deg,
        iterations=state.iteration,
    )
