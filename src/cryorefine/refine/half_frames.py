"""Before the halves are joined: half set 2 turned (C_n) or rotated (C1) onto half 1's frame.

The two half sets are refined independently, and a C_n map (n >= 2, axis z) can turn
about its axis together with all of its poses without changing the likelihood; a C1
map can rotate about any axis (for D_n, T, O and I no turn keeps the group's axes, so
there is no such freedom). Each half set therefore keeps a frame of its own, tied to
the other's only by the join of the halves below ``--low_resol_join_halves``: in issue
5's simulated C6 cases the halves ended 0.6-4.0 degrees apart, each with its poses
close to the truth in its own frame, and C1 cases 0.5-1.2 degrees. The final iteration
joins the halves; in two frames its map would average two turned maps. RELION joins
them as they are; here half 2's reference and poses are first moved by the turn
(``best_axial_turn_deg``) or rotation (``best_rotation_deg``) that best matches its map
to half 1's.

The move maximises the sum over shells of the maps' Fourier shell correlation (each
shell weighted alike, so that the high-resolution shells that fix the frame are not
swamped by the low ones), over the shells where the gold-standard FSC is at least
0.143, on both maps cropped to the box of those shells. A turn is searched within
``MAX_TURN_DEG`` either way in steps of 1, 0.1 and 0.01 degree; a rotation, as turns
about x, y and z, on grids down to 0.01 degree. Maps are turned by three shears of each
slice, phase ramps through the FFT: no interpolation. A map moved by ``R`` is
``v(R^T x)`` (``fourier.rotate_volume``), and a pose ``A`` of the old map is the pose
``A R^T`` of the moved one; for ``R`` about z that changes the first Euler angle alone.
"""

from collections.abc import Callable

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from cryorefine.fourier import fourier_crop, from_fourier, fsc, to_fourier
from cryorefine.geometry import (
    SymmetryGroup,
    axis_angle_to_matrix,
    euler_to_matrix,
    matrix_to_euler,
)

__all__ = [
    "MAX_ROTATION_DEG",
    "MAX_TURN_DEG",
    "axial_gauge",
    "axis_rotations",
    "best_axial_turn_deg",
    "best_rotation_deg",
    "full_gauge",
    "rotated_angles",
    "rotated_map",
    "rotated_maps",
    "turned_angles",
    "turned_map",
    "turned_maps",
]

MAX_TURN_DEG = 10.0
"""The largest turn searched, either way (degrees): half sets drift by a few degrees."""

_STEPS_DEG = (1.0, 0.1, 0.01)
_CHUNK_BYTES = 1 << 28  # per stack of moved maps, of the box cropped to the shells searched:
# 18 maps at 96 voxels, 1 at 256 and above


def axial_gauge(group: SymmetryGroup) -> bool:
    """Whether ``group`` is C_n with n >= 2: every rotation keeps the z axis."""
    rotations = group.rotations.to(torch.float64)
    z = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64, device=rotations.device)
    return rotations.shape[0] >= 2 and bool(
        torch.allclose(rotations @ z, z.expand(len(rotations), 3))
    )


def z_turns(angles_deg: Float[Tensor, " r"]) -> Float[Tensor, "r 3 3"]:
    """Turns about z by ``angles_deg`` (RELION's matrices, as for the Euler angle rot)."""
    zeros = torch.zeros_like(angles_deg)
    return euler_to_matrix(torch.stack([angles_deg, zeros, zeros], dim=-1))


def _shear(volume: Tensor, along: int, by: int, factors: Tensor) -> Tensor:
    """Shift each line of axis ``along`` by ``factor x`` its coordinate on axis ``by`` (voxels
    from the centre), through the FFT: exact for a band-limited, periodic map.

    ``volume`` ``(r, n, n, n)`` with axes ``(z, y, x)`` after ``r``; ``factors`` ``(r,)``.
    """
    n = volume.shape[-1]
    coordinate = torch.arange(n, dtype=volume.dtype, device=volume.device) - n // 2
    frequency = torch.fft.fftfreq(n, dtype=volume.dtype, device=volume.device)
    shape_by, shape_along = [1, 1, 1, 1], [1, 1, 1, 1]
    shape_by[by], shape_along[along] = n, n
    shift = factors.reshape(-1, 1, 1, 1) * coordinate.reshape(shape_by)
    phase = torch.exp(-2j * torch.pi * shift * frequency.reshape(shape_along))
    return torch.fft.ifft(torch.fft.fft(volume, dim=along) * phase, dim=along).real


def _turned_stack(volumes: Tensor, turns_deg: Tensor) -> Tensor:
    """Each of ``volumes (r, n, n, n)`` turned about z by its own turn (``turned_maps``)."""
    angle = -torch.deg2rad(turns_deg.to(volumes.dtype))  # the image rotation that matches R
    tangent, sine = -torch.tan(angle / 2), torch.sin(angle)
    turned = _shear(volumes, along=3, by=2, factors=tangent)
    turned = _shear(turned, along=2, by=3, factors=sine)
    return _shear(turned, along=3, by=2, factors=tangent)


def turned_maps(volume: Float[Tensor, "n n n"], turns_deg: Float[Tensor, " r"]) -> Tensor:
    """``volume`` turned about z by each of ``turns_deg``, ``(r, n, n, n)``: ``v(R^T x)`` with
    ``R`` the turn of ``z_turns`` (``fourier.rotate_volume``'s convention), made by three
    shears of every z-slice (x, y, x; Unser et al. 1995), each a phase ramp along a line:
    no interpolation."""
    return _turned_stack(volume[None].expand(len(turns_deg), *volume.shape), turns_deg)


def _summed_correlations(
    map_1: Tensor, map_2: Tensor, shells: int, move: Callable[[Tensor, Tensor], Tensor]
) -> Callable[[Tensor], Tensor]:
    """The function of ``r`` candidates giving the sum over shells 1 to ``shells`` of the FSC
    of ``map_1`` and ``move(map_2, candidates)`` (``(r, m, m, m)``), both maps cropped to the
    box of the shells searched (the same coefficients, fewer voxels). Each shell weighs
    alike, so that the high-resolution shells that fix the frame are not swamped."""
    n = map_1.shape[-1]
    m = min(n, 2 * (max(1, shells) + 2))
    small = [v.to(torch.float64) for v in (map_1, map_2)]
    if m < n:
        small = [from_fourier(fourier_crop(to_fourier(v, 3), m, ndim=3), m, 3) for v in small]
    target = to_fourier(small[0], 3)
    per_chunk = max(1, _CHUNK_BYTES // (16 * m**3))
    last = max(1, shells)

    def summed(candidates: Tensor) -> Tensor:
        scores = []
        for chunk in candidates.split(per_chunk):
            moved = to_fourier(move(small[1], chunk), 3)
            curves = fsc(target.expand_as(moved), moved, ndim=3)  # (r, m // 2 + 1)
            scores.append(curves[:, 1 : last + 1].sum(dim=1))
        return torch.cat(scores)

    return summed


def best_axial_turn_deg(
    map_1: Float[Tensor, "n n n"],
    map_2: Float[Tensor, "n n n"],
    *,
    shells: int,
    max_turn_deg: float = MAX_TURN_DEG,
) -> float:
    """The turn about z (degrees) that best matches ``map_2`` turned to ``map_1``.

    ``shells``: the correlation runs over shells 1 to ``shells`` (module docstring).
    """
    summed = _summed_correlations(map_1, map_2, shells, turned_maps)
    real, device = torch.float64, map_1.device
    centre, span = 0.0, max_turn_deg
    for step in _STEPS_DEG:
        candidates = centre + torch.arange(-span, span + step / 2, step, dtype=real, device=device)
        centre = float(candidates[int(summed(candidates).argmax())])
        span = step
    return centre


def turned_map(volume: Float[Tensor, "n n n"], turn_deg: float) -> Float[Tensor, "n n n"]:
    """``volume`` turned about z by ``turn_deg`` (``turned_maps``), in its own dtype."""
    turn = torch.tensor([turn_deg], dtype=torch.float64, device=volume.device)
    return turned_maps(volume.to(torch.float64), turn)[0].to(volume.dtype)


def turned_angles(angles_deg: Float[np.ndarray, "b 3"], turn_deg: float) -> np.ndarray:
    """Poses ``A R^T`` (rot, tilt, psi in degrees) of the map turned by ``R`` about z:
    ``rot - turn_deg``, tilt and psi (and so their priors) as they were."""
    turned = np.array(angles_deg, dtype=np.float64)
    turned[:, 0] = (turned[:, 0] - turn_deg + 180.0) % 360.0 - 180.0
    return turned


#: Volume axes ``(z, y, x)`` permuted so that the map's x, y or z axis comes first: turning
#: the permuted volume about its first axis by ``-angle`` turns the map about that axis by
#: ``angle`` (right-handed), as ``fourier.rotate_volume`` does with the active rotation.
_AXIS_FIRST = ((2, 0, 1), (1, 2, 0), (0, 1, 2))

MAX_ROTATION_DEG = 6.0
"""C1: the largest rotation searched about each of x, y and z, either way (degrees)."""

_ROTATION_GRID_DEG = 2.0
_ROTATION_STEPS_DEG = (1.0, 0.3, 0.1, 0.03, 0.01)


def full_gauge(group: SymmetryGroup) -> bool:
    """Whether ``group`` is C1: any rotation of the map and its poses keeps the likelihood."""
    return group.rotations.shape[0] == 1


def axis_rotations(angles_deg: Float[Tensor, "r 3"]) -> Float[Tensor, "r 3 3"]:
    """``R = Rz(c) Ry(b) Rx(a)`` of ``(a, b, c)``: active, right-handed turns about the map's
    x, y and z axes (float64)."""
    angles = angles_deg.to(torch.float64)
    axes = torch.eye(3, dtype=torch.float64, device=angles.device)
    turns = axis_angle_to_matrix(axes, angles)  # (r, 3, 3, 3): about x, y and z
    return turns[:, 2] @ turns[:, 1] @ turns[:, 0]


def rotated_maps(volume: Float[Tensor, "n n n"], angles_deg: Float[Tensor, "r 3"]) -> Tensor:
    """``volume`` rotated by each ``axis_rotations(angles_deg)``: ``v(R^T x)``, ``(r, n, n, n)``,
    as three turns about x, then y, then z, each three shears (``turned_maps``)."""
    rotated = volume[None].expand(len(angles_deg), *volume.shape)
    for axis, order in enumerate(_AXIS_FIRST):
        back = [order.index(k) + 1 for k in range(3)]
        permuted = rotated.permute(0, *(k + 1 for k in order))
        rotated = _turned_stack(permuted, -angles_deg[:, axis]).permute(0, *back)
    return rotated


def best_rotation_deg(
    map_1: Float[Tensor, "n n n"],
    map_2: Float[Tensor, "n n n"],
    *,
    shells: int,
    max_rotation_deg: float = MAX_ROTATION_DEG,
) -> tuple[float, float, float]:
    """C1: the angles ``(a, b, c)`` (``axis_rotations``) that best match ``map_2`` rotated to
    ``map_1``, by the sum over shells 1 to ``shells`` of their FSC: a grid of 2-degree steps
    within ``max_rotation_deg`` about each axis, then grids of 5 x 5 x 5 steps of 1, 0.3,
    0.1, 0.03 and 0.01 degree about the best so far."""
    summed = _summed_correlations(map_1, map_2, shells, rotated_maps)
    device = map_1.device
    reach = torch.arange(
        -max_rotation_deg, max_rotation_deg + 1e-9, _ROTATION_GRID_DEG, dtype=torch.float64
    )
    candidates = torch.cartesian_prod(reach, reach, reach).to(device)
    centre = candidates[int(summed(candidates).argmax())]
    offsets = torch.cartesian_prod(*[torch.arange(-2.0, 2.5, 1.0, dtype=torch.float64)] * 3)
    for step in _ROTATION_STEPS_DEG:
        candidates = centre[None] + step * offsets.to(device)
        centre = candidates[int(summed(candidates).argmax())]
    a, b, c = (float(value) for value in centre)
    return a, b, c


def rotated_map(volume: Float[Tensor, "n n n"], angles_deg: tuple[float, float, float]) -> Tensor:
    """``volume`` rotated by ``axis_rotations`` of ``angles_deg`` (``rotated_maps``), its dtype."""
    angles = torch.tensor([angles_deg], dtype=torch.float64, device=volume.device)
    return rotated_maps(volume.to(torch.float64), angles)[0].to(volume.dtype)


def rotated_angles(
    angles_deg: Float[np.ndarray, "b 3"], rotation_deg: tuple[float, float, float]
) -> np.ndarray:
    """Poses ``A R^T`` (rot, tilt, psi in degrees) of the map rotated by ``R`` =
    ``axis_rotations(rotation_deg)``."""
    rotation = axis_rotations(torch.tensor([rotation_deg], dtype=torch.float64))[0]
    matrices = euler_to_matrix(torch.as_tensor(np.asarray(angles_deg, dtype=np.float64)))
    return matrix_to_euler(matrices @ rotation.T).numpy()
