"""Shared set-up of the intensity tests (``--scale``, ``--norm``): SPA hexamers, some brighter.

The particles of the end-to-end test (embedded C6 hexamer, box 32, 5.4 A/px,
200 particles, SNR 10, the reference turned by 15 degrees and low-passed to 40 A),
some of whose images are multiplied by a factor (signal and noise alike), and
the tutorial's options scaled down for a few iterations.
"""

from pathlib import Path

import mrcfile
import numpy as np

from cryorefine.simulate import SimulationOptions, simulate_dataset


def simulate_multiplied(sim: Path, *, seed: int, multiplied: np.ndarray, factor: float) -> None:
    """Simulate the particles into ``sim`` and multiply the images at ``multiplied`` (a mask)."""
    simulate_dataset(
        SimulationOptions(
            output_dir=sim, symmetry="C6", n_particles=len(multiplied), box_size=32,
            pixel_size_angst=5.4, snr=10.0, data_format="spa", ref_lowpass_angst=40.0,
            ref_rotation_deg=15.0, seed=seed,
        )
    )  # fmt: skip
    with mrcfile.open(sim / "particles.mrcs", mode="r+") as stack:
        stack.data[multiplied] *= factor  # rows are the stack's images in order


def refine_arguments(particles: Path, sim: Path, output_root: Path, *extra: str) -> list[str]:
    """``cryorefine refine`` of ``particles`` against ``sim``'s reference, scaled-down options."""
    return [
        "refine", "--i", str(particles), "--ref", str(sim / "reference.mrc"),
        "--o", str(output_root), "--ini_high", "40", "--ctf",
        "--particle_diameter", "150", "--healpix_order", "1", "--auto_local_healpix_order", "3",
        "--offset_range", "3", "--offset_step", "1", "--sym", "C6", "--zero_mask",
        "--flatten_solvent", "--low_resol_join_halves", "40", *extra,
    ]  # fmt: skip
