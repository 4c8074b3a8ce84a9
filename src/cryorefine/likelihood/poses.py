"""The orientations one E-step samples: a coarse HEALPix x psi grid and its oversampled children.

Coarse orientation ``i`` of a grid of ``m`` directions and ``p`` psi values is
direction ``i // p`` with psi ``i % p`` (direction-major, RELION's order,
``geometry.orientation_grid_deg``). Its matrix is RELION's ``A`` of
``(rot, tilt, psi)``, perturbed as ``A @ E(u s, u s, u s)`` with ``u`` the
perturbation instance and ``s`` the coarse angular step
(``geometry.perturb_rotations``); the ``8**oversampling`` fine children
(``geometry.oversampled_orientations_deg``, child-major, psi fastest) get the
same perturbation.
"""

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from cryorefine.geometry import (
    angular_step_deg,
    euler_to_matrix,
    oversampled_orientations_deg,
    perturb_rotations,
    pixel_rot_tilt_deg,
)

__all__ = ["OrientationGrid", "coarse_rotations", "fine_rotations"]


@dataclass(frozen=True)
class OrientationGrid:
    """The coarse orientations of one iteration.

    Attributes
    ----------
    healpix_order
        Coarse HEALPix order (``--healpix_order``, before oversampling).
    pixels
        The ``m`` searched directions: NESTED pixel numbers at ``healpix_order``
        (all ``12 * 4**order``, or the asymmetric unit of the point group).
    psi_deg
        The ``p`` coarse psi values, ``i * 360 / p`` (``geometry.psi_angles_deg``).
    perturbation
        Instance ``u`` of the random perturbation (``geometry.next_perturbation``).
    """

    healpix_order: int
    pixels: Int[Tensor, " m"]
    psi_deg: Float[Tensor, " p"]
    perturbation: float = 0.0

    @property
    def count(self) -> int:
        """Number of coarse orientations ``m * p``."""
        return int(self.pixels.shape[0] * self.psi_deg.shape[0])

    @property
    def psi_step_deg(self) -> float:
        """Coarse psi step in use, ``360 / p``."""
        return 360.0 / int(self.psi_deg.shape[0])

    def direction_of(self, ids: Int[Tensor, "..."]) -> Int[Tensor, "..."]:
        """Direction (index into ``pixels``) of coarse orientations ``ids``."""
        return torch.div(ids, self.psi_deg.shape[0], rounding_mode="floor")


def _perturbed(grid: OrientationGrid, angles_deg: Tensor) -> Tensor:
    matrices = euler_to_matrix(angles_deg)
    if grid.perturbation == 0.0:
        return matrices
    return perturb_rotations(
        matrices,
        perturbation=grid.perturbation,
        step_deg=angular_step_deg(grid.healpix_order),
    )


def coarse_rotations(
    grid: OrientationGrid, ids: Int[Tensor, "..."] | None = None
) -> Float[Tensor, "... 3 3"]:
    """Matrices ``A`` of coarse orientations ``ids`` (default: all ``m * p``), float64."""
    if ids is None:
        ids = torch.arange(grid.count, device=grid.pixels.device)
    p = grid.psi_deg.shape[0]
    pixels = grid.pixels[grid.direction_of(ids)]
    rot_tilt = pixel_rot_tilt_deg(grid.healpix_order, pixels)
    psi = grid.psi_deg.to(torch.float64)[ids % p]
    return _perturbed(grid, torch.cat([rot_tilt, psi[..., None]], dim=-1))


def fine_rotations(
    grid: OrientationGrid, ids: Int[Tensor, "..."], *, oversampling: int
) -> Float[Tensor, "... f 3 3"]:
    """Matrices of the ``f = 8**oversampling`` children of coarse orientations ``ids``, float64."""
    p = grid.psi_deg.shape[0]
    angles = oversampled_orientations_deg(
        grid.healpix_order,
        grid.pixels[grid.direction_of(ids)],
        grid.psi_deg.to(torch.float64)[ids % p],
        psi_step_deg=grid.psi_step_deg,
        oversampling=oversampling,
    )
    return _perturbed(grid, angles)
