"""Recentring particles on a point of the reference (relion_star_handler --center).

A point ``c`` of the reference (pixels from the box centre ``n // 2``, in the
reference's frame) lies at ``A c`` in the particle's box, with ``A`` RELION's
matrix of the particle's angles (geometry.conventions). The particle is centred
by its origin ``o`` (pixels; the shift that centres it, REFINE_SPEC §1.2), so
the origin that centres ``c`` instead is ``o - A c`` (REFINE_SPEC §9.1). For
tomography the origins live in the pseudo-subtomogram's frame and the angles are
relative to it, so the same formula holds for RELION-4 and RELION-5 tables; the
coordinates are left as they are (re-extraction folds the origins in).
"""

import torch
from jaxtyping import Float
from torch import Tensor

from cryorefine.errors import InputError
from cryorefine.geometry.euler import euler_to_matrix
from cryorefine.io import ParticleSet

__all__ = ["recentre_particles", "recentred_origins_px"]


def recentred_origins_px(
    angles_deg: Float[Tensor, "b 3"],
    origins_px: Float[Tensor, "b 3"],
    centre_px: Float[Tensor, " 3"],
) -> Float[Tensor, "b 3"]:
    """New origins ``o - A(rot, tilt, psi) c`` in pixels, ``(x, y, z)`` per particle.

    Parameters
    ----------
    angles_deg
        ``(rot, tilt, psi)`` of each particle, degrees.
    origins_px
        Current origins ``(x, y, z)`` in pixels (z = 0 for 2D particles).
    centre_px
        The point of the reference to centre on, pixels from the box centre, ``(x, y, z)``.
    """
    matrices = euler_to_matrix(angles_deg)
    centre = centre_px.to(matrices.dtype)
    return origins_px - torch.einsum("bij,j->bi", matrices, centre)


def recentre_particles(
    particles: ParticleSet, centre_px: tuple[float, float, float]
) -> ParticleSet:
    """The particle set with origins moved onto ``centre_px`` of the reference.

    Origins are converted with each particle's optics-group pixel size; absent
    origin labels count as 0 and are added (RELION would refuse such a file).
    2D particles get ``rlnOriginX/YAngst`` only. Float64 throughout.
    """
    if len(particles) == 0:
        raise InputError(f"{particles.path}: data_particles is empty; nothing to recentre")
    pixel_size = torch.from_numpy(particles.pixel_size_angst)
    if not torch.isfinite(pixel_size).all():
        raise InputError(
            f"{particles.path}: no rlnImagePixelSize in data_optics; "
            "the origins cannot be converted to pixels"
        )
    angles = torch.from_numpy(particles.angles_deg())
    origins_px = torch.from_numpy(particles.origins_angst()) / pixel_size[:, None]
    centre = torch.tensor(centre_px, dtype=torch.float64)
    new_origins_px = recentred_origins_px(angles, origins_px, centre)
    new_origins_angst = (new_origins_px * pixel_size[:, None]).numpy()
    return particles.with_poses(origins_angst=new_origins_angst)
