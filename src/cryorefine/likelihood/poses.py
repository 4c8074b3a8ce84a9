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

from dataclasses import dataclass, field

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

__all__ = ["ROTATION_TABLE_BYTES", "OrientationGrid", "coarse_rotations", "fine_rotations"]

ROTATION_TABLE_BYTES = 2**27
"""A grid keeps the matrices of all its orientations' children (72 bytes each) up to this
size, computed at the first ask (HEALPix order 4 of a C6 job at oversampling 1: ~28 MB):
each fine group then takes its rows from the table (one gather) instead of the ~90
operators that compute them, which set the pace of the host-bound early iterations."""


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
    _tables: dict[int, Tensor] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )  # oversampling -> (m * p, 8**oversampling, 3, 3) matrices, filled by ``_table``

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
    table = _table(grid, 0)
    if table is not None:  # a gather (a copy, never a view of the table), in ids' shape
        return table[ids.reshape(-1), 0].reshape(*ids.shape, 3, 3)
    p = grid.psi_deg.shape[0]
    pixels = grid.pixels[grid.direction_of(ids)]
    rot_tilt = pixel_rot_tilt_deg(grid.healpix_order, pixels)
    psi = grid.psi_deg.to(torch.float64)[ids % p]
    return _perturbed(grid, torch.cat([rot_tilt, psi[..., None]], dim=-1))


def fine_rotations(
    grid: OrientationGrid, ids: Int[Tensor, "..."], *, oversampling: int
) -> Float[Tensor, "... f 3 3"]:
    """Matrices of the ``f = 8**oversampling`` children of coarse orientations ``ids``, float64."""
    table = _table(grid, oversampling)
    if table is not None:  # a gather (a copy, never a view of the table), in ids' shape
        return table[ids.reshape(-1)].reshape(*ids.shape, *table.shape[1:])
    return _children(grid, ids, oversampling)


def _children(grid: OrientationGrid, ids: Tensor, oversampling: int) -> Tensor:
    p = grid.psi_deg.shape[0]
    angles = oversampled_orientations_deg(
        grid.healpix_order,
        grid.pixels[grid.direction_of(ids)],
        grid.psi_deg.to(torch.float64)[ids % p],
        psi_step_deg=grid.psi_step_deg,
        oversampling=oversampling,
    )
    return _perturbed(grid, angles)


def _table(grid: OrientationGrid, oversampling: int) -> Tensor | None:
    """The grid's ``(m * p, f, 3, 3)`` children of every orientation, if within
    ``ROTATION_TABLE_BYTES``; computed once per grid (the same values as ``_children``)."""
    if grid.count * 8**oversampling * 72 > ROTATION_TABLE_BYTES:
        return None
    if oversampling not in grid._tables:
        with torch.inference_mode(False):  # a normal tensor, whatever the caller's mode
            ids = torch.arange(grid.count, device=grid.pixels.device)
            grid._tables[oversampling] = _children(grid, ids, oversampling)
    return grid._tables[oversampling]
