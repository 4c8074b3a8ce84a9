"""A particle's map from the tilt series (``relion_tomo_reconstruct_particle``).

The particles of an optimisation set are extracted at the given binning and box
as RELION-4 pseudo-subtomograms (``tomo.extract_particles``: each tilt image
cut, CTF-premultiplied, dose-weighted and inserted as a central slice, with its
CTF² and multiplicity), then back-projected with their poses by half set
(``reconstruct_particles``): ``half1.mrc``, ``half2.mrc`` and ``merged.mrc`` in
the output folder, as RELION writes them. The extracted particles stay in
``OUT/extracted/`` (their particles.star and optimisation set can be refined).
"""

from dataclasses import dataclass
from pathlib import Path

import torch

from cryorefine.errors import InputError
from cryorefine.io import load_particles, make_output_folder, write_mrc
from cryorefine.refine.reconstruct import ReconstructOptions, reconstruct_particles
from cryorefine.tomo import ExtractOptions, extract_particles

__all__ = ["TiltSeriesMaps", "reconstruct_from_tilt_series"]


@dataclass(frozen=True)
class TiltSeriesMaps:
    """The files written and what they hold."""

    half1: Path
    half2: Path
    merged: Path
    particles_star: Path
    particles: int
    pixel_size_angst: float


def reconstruct_from_tilt_series(
    optimisation_set: Path,
    output_dir: Path,
    *,
    box_size: int,
    binning: float,
    crop_size: int | None = None,
    reconstruct: ReconstructOptions | None = None,
    device: torch.device,
) -> TiltSeriesMaps:
    """Extract the set's particles at ``binning`` and reconstruct its half maps and merged map.

    ``box_size`` and ``crop_size`` are extract's ``--box`` and ``--crop`` (binned
    pixels); ``reconstruct.subset`` is ignored (both halves and all are made).

    Raises
    ------
    InputError
        Bad extraction inputs (``tomo.extract_particles``), or particles without
        ``rlnRandomSubset`` 1 and 2 (half maps need the refined particles).
    """
    reconstruct = ReconstructOptions() if reconstruct is None else reconstruct
    output_dir = make_output_folder(Path(output_dir), option="--o")
    extracted = extract_particles(
        ExtractOptions(
            optimisation_set=Path(optimisation_set),
            output_dir=output_dir / "extracted",
            box_size=box_size,
            crop_size=crop_size,
            binning=binning,
            use_ctf=reconstruct.use_ctf,
        ),
        device=device,
    )
    particles = load_particles(extracted.particles_star)
    halves = set(particles.half_sets().tolist())
    if not {1, 2} <= halves:
        raise InputError(
            f"--ios {optimisation_set}: its particles have rlnRandomSubset {sorted(halves)}; "
            "half maps need both 1 and 2 (the particles of a refinement, e.g. run_data.star)"
        )
    paths = {name: output_dir / f"{name}.mrc" for name in ("half1", "half2", "merged")}
    pixel_size = 0.0
    for name, subset in (("half1", 1), ("half2", 2), ("merged", None)):
        options = ReconstructOptions(**{**vars(reconstruct), "subset": subset})
        volume, pixel_size = reconstruct_particles(particles, options, device=device)
        write_mrc(paths[name], volume.cpu().numpy(), voxel_size_angst=pixel_size)
    return TiltSeriesMaps(
        half1=paths["half1"],
        half2=paths["half2"],
        merged=paths["merged"],
        particles_star=extracted.particles_star,
        particles=extracted.particles,
        pixel_size_angst=pixel_size,
    )
