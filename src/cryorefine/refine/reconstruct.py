"""A map from particles with known poses (relion_reconstruct).

The particles' transforms are centred by their origins, back-projected with
their CTF terms (``tomo.backprojection_terms``) at the poses in the table,
symmetrised, and reconstructed without regularisation (data over weight, with
RELION's weight floor), as relion_reconstruct does by default.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from cryorefine.errors import InputError
from cryorefine.fourier.backprojector import insert_slices, insert_volumes, zero_accumulators
from cryorefine.fourier.filters import shift_fourier
from cryorefine.fourier.reconstruction import reconstruct
from cryorefine.fourier.symmetrise import symmetrise
from cryorefine.geometry import point_group
from cryorefine.io import ParticleSet
from cryorefine.tomo import backprojection_terms, particle_batches

__all__ = ["ReconstructOptions", "reconstruct_particles"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReconstructOptions:
    """Options of relion_reconstruct that we follow.

    Attributes
    ----------
    symmetry
        Point group (``--sym``).
    use_ctf
        Apply the CTF terms (``--ctf``).
    subset
        Half set 1 or 2 only (``--subset``), or all particles (None).
    max_resolution_angst
        Leave out frequencies beyond this resolution (``--maxres``), or None.
    padding_factor
        Padding of the back-projector (``--pad``, 2).
    batch_size
        Particles per batch on the device.
    ctf_intact_first_peak
        Leave the CTF at 1 until its first peak (SPA).
    """

    symmetry: str = "C1"
    use_ctf: bool = True
    subset: int | None = None
    max_resolution_angst: float | None = None
    padding_factor: int = 2
    batch_size: int = 64
    ctf_intact_first_peak: bool = False


def _selected_rows(particles: ParticleSet, subset: int | None) -> np.ndarray:
    if subset is None:
        return np.arange(len(particles))
    if subset not in (1, 2):
        raise InputError(f"--subset {subset}: expected 1 or 2")
    half_sets = particles.half_sets()
    rows = np.flatnonzero(half_sets == subset)
    if len(rows) == 0:
        raise InputError(f"{particles.path}: no particle has rlnRandomSubset {subset} (--subset)")
    return rows


def reconstruct_particles(
    particles: ParticleSet,
    options: ReconstructOptions,
    *,
    device: torch.device,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Float[Tensor, "n n n"], float]:
    """Map ``(n, n, n)`` float32 and its pixel size (Angstrom) from the particles' poses.

    Raises
    ------
    InputError
        An empty selection, a flavour that cannot be read, or a bad symmetry name.
    """
    rows = _selected_rows(particles, options.subset)
    box = int(particles.box_size_px[0])
    pixel_size = float(particles.pixel_size_angst[rows[0]])
    ndim = particles.image_dimensionality
    operators = point_group(options.symmetry, device=device).operators
    max_radius = None
    if options.max_resolution_angst is not None:
        max_radius = min(box // 2, round(box * pixel_size / options.max_resolution_angst))
    data, weight = zero_accumulators(box, padding_factor=options.padding_factor, device=device)
    done = 0
    for batch in particle_batches(
        particles,
        batch_size=options.batch_size,
        device=device,
        use_ctf=options.use_ctf,
        rows=rows,
        intact_first_peak=options.ctf_intact_first_peak,
        named_rows=set(),  # a bad particle adds nothing (zero data and weight) and is named
    ):
        batch_data, batch_weight = backprojection_terms(batch)
        centred = shift_fourier(batch_data, batch.origins_px)
        insert = insert_slices if ndim == 2 else insert_volumes
        data, weight = insert(
            centred,
            batch_weight,
            batch.rotations.to(torch.float32),
            padding_factor=options.padding_factor,
            accumulator_data=data,
            accumulator_weight=weight,
            max_radius=max_radius,
        )
        done += len(batch.rows)
        if progress is not None:
            progress(done, len(rows))
    data, weight = symmetrise(data, weight, operators.to(weight.dtype))
    volume = reconstruct(
        data,
        weight,
        ori_size=box,
        padding_factor=options.padding_factor,
        data_dim=3 if ndim == 3 else 2,
        max_radius=max_radius,
    )
    return volume.to(torch.float32), pixel_size
