"""Random particle parameters (poses, origins, half sets, defocus) and the tilt scheme.

Everything here is drawn from one ``torch.Generator`` in a fixed order, in
float64 on the generator's device, so a seed fixes the whole table whatever the
chunking of the images later on.

Poses
    Uniform on SO(3): unit quaternions from normalised 4D Gaussian vectors
    (Shoemake 1992), turned into matrices, then into RELION's Euler angles
    (``geometry.matrix_to_euler``); the matrices used for the images are rebuilt
    from those angles (``geometry.euler_to_matrix``), so the angles written to
    the STAR file are the pose exactly. ``A`` maps reference coordinates to the
    particle frame (``geometry.conventions``).
Origins
    Each coordinate uniform in ``[-max_offset_px, max_offset_px]`` (z = 0 for 2D
    data). The particle centre lies at ``-origin`` from the box centre
    (REFINE_SPEC §1.2).
Half sets
    A random permutation: its first ``ceil(b / 2)`` particles are half set 1,
    the others 2 (balanced, ``rlnRandomSubset``).
Tilt scheme (tomography)
    Tilts ``R_f = euler_to_matrix((0, tilt_f, 0))``: RELION's frame rotation about
    the y axis, mapping the tomogram frame (= the particle frame: subtomogram
    angles 0) to the frame of tilt image ``f``. Dose-symmetric acquisition
    starting at the tilt nearest 0 degrees, then alternating by increasing
    ``|tilt|``, positive side first at equal ``|tilt|`` (0, +3, -3, +6, -6, ...).
    The cumulative dose of a tilt (``rlnMicrographPreExposure``, and the dose
    its Grant & Grigorieff weight uses) is the dose per tilt times the number of
    tilts taken before it (0 for the first).
"""

import math
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from cryorefine.geometry import euler_to_matrix, matrix_to_euler
from cryorefine.tomo import ParticleTilts

__all__ = [
    "ParticleDraws",
    "TiltScheme",
    "draw_particles",
    "quaternion_to_matrix",
    "random_rotations",
    "scheme_tilts",
    "tilt_scheme",
]


def quaternion_to_matrix(quaternions: Float[Tensor, "... 4"]) -> Float[Tensor, "... 3 3"]:
    """Active rotation matrix of unit quaternions ``(w, x, y, z)`` (normalised here)."""
    q = quaternions / torch.linalg.vector_norm(quaternions, dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    rows = (
        (1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)),
        (2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)),
        (2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)),
    )
    return torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)


def random_rotations(count: int, *, generator: torch.Generator) -> Float[Tensor, "b 3 3"]:
    """``count`` rotations uniform on SO(3) (Haar measure), float64 on the generator's device.

    A normalised 4D standard Gaussian vector is uniform on the unit 3-sphere, and
    the unit quaternions map 2:1 onto SO(3) preserving the uniform measure.
    """
    draws = torch.randn(count, 4, generator=generator, device=generator.device, dtype=torch.float64)
    return quaternion_to_matrix(draws)


@dataclass(frozen=True)
class ParticleDraws:
    """The random parameters of ``b`` particles (module docstring), float64.

    Attributes
    ----------
    angles_deg
        ``(rot, tilt, psi)`` in degrees, RELION's ZYZ convention.
    rotations
        ``euler_to_matrix(angles_deg)``.
    origins_px
        ``(x, y, z)`` origin in pixels (``rlnOrigin*Angst`` divided by the pixel size).
    half_sets
        1 or 2 (int64).
    defocus_angst
        Defocus (U = V, angle 0), Angstrom underfocus; the same for every tilt.
    """

    angles_deg: Float[Tensor, "b 3"]
    rotations: Float[Tensor, "b 3 3"]
    origins_px: Float[Tensor, "b 3"]
    half_sets: Int[Tensor, " b"]
    defocus_angst: Float[Tensor, " b"]


def draw_particles(
    count: int,
    *,
    max_offset_px: float,
    defocus_range_angst: tuple[float, float],
    three_d: bool,
    generator: torch.Generator,
) -> ParticleDraws:
    """Poses, origins, half sets and defocus of ``count`` particles, in that drawing order.

    ``three_d`` draws a z origin; otherwise ``origins_px[:, 2]`` is 0 (and no
    random numbers are spent on it).
    """
    device = generator.device
    angles = matrix_to_euler(random_rotations(count, generator=generator))
    dims = 3 if three_d else 2
    unit = torch.rand(count, dims, generator=generator, device=device, dtype=torch.float64)
    origins = torch.zeros(count, 3, device=device, dtype=torch.float64)
    origins[:, :dims] = (2 * unit - 1) * max_offset_px
    order = torch.randperm(count, generator=generator, device=device)
    half_sets = torch.full((count,), 2, dtype=torch.int64, device=device)
    half_sets[order[: math.ceil(count / 2)]] = 1
    low, high = defocus_range_angst
    defocus = low + (high - low) * torch.rand(
        count, generator=generator, device=device, dtype=torch.float64
    )
    return ParticleDraws(
        angles_deg=angles,
        rotations=euler_to_matrix(angles),
        origins_px=origins,
        half_sets=half_sets,
        defocus_angst=defocus,
    )


@dataclass(frozen=True)
class TiltScheme:
    """Tilt images of every tilt series, in ascending tilt angle (module docstring).

    Attributes
    ----------
    tilt_deg
        Tilt angle of each image about the y axis, ascending.
    acquisition_order
        0 for the first image taken, 1 for the next, ... (int64).
    pre_exposure_e_per_angst2
        Dose received before each image: ``dose_per_tilt * acquisition_order``.
    matrices
        ``R_f``, tomogram (particle) frame to tilt-image frame.
    """

    tilt_deg: Float[Tensor, " f"]
    acquisition_order: Int[Tensor, " f"]
    pre_exposure_e_per_angst2: Float[Tensor, " f"]
    matrices: Float[Tensor, "f 3 3"]


def tilt_scheme(tilt_deg: Float[Tensor, " f"], *, dose_per_tilt_e_per_angst2: float) -> TiltScheme:
    """The dose-symmetric scheme of ascending angles ``tilt_deg`` (module docstring)."""
    angles = torch.sort(tilt_deg.to(torch.float64)).values
    # Start nearest 0; by increasing |tilt|, positive first: key |t| then sign (+ before -).
    key = angles.abs() + (angles < 0).to(torch.float64) * 1e-9
    order = torch.empty_like(angles, dtype=torch.int64)
    order[torch.argsort(key)] = torch.arange(len(angles), device=angles.device)
    zeros = torch.zeros_like(angles)
    matrices = euler_to_matrix(torch.stack([zeros, angles, zeros], dim=-1))
    return TiltScheme(
        tilt_deg=angles,
        acquisition_order=order,
        pre_exposure_e_per_angst2=order.to(torch.float64) * dose_per_tilt_e_per_angst2,
        matrices=matrices,
    )


def scheme_tilts(scheme: TiltScheme, defocus_angst: Float[Tensor, " b"]) -> ParticleTilts:
    """The scheme's tilts for ``b`` particles at the image centre, one defocus each (U = V).

    Every tilt sees every particle at depth 0 with its own defocus, astigmatism
    angle 0, the scheme's pre-exposure, B-factor 0 and scale 1; float64 on the
    device of ``defocus_angst``.
    """
    b, f = defocus_angst.shape[0], scheme.matrices.shape[0]
    device = defocus_angst.device
    defocus = defocus_angst.to(torch.float64)[:, None].expand(b, f)
    zeros = torch.zeros(b, f, dtype=torch.float64, device=device)
    return ParticleTilts(
        position_px=torch.zeros(b, f, 2, dtype=torch.float64, device=device),
        depth_px=zeros,
        rotations=scheme.matrices.to(device, torch.float64)[None].expand(b, f, 3, 3),
        defocus_u_angst=defocus,
        defocus_v_angst=defocus,
        defocus_angle_deg=zeros,
        dose_e_per_angst2=scheme.pre_exposure_e_per_angst2.to(device)[None].expand(b, f),
        bfactor_angst2=zeros,
        scale=torch.ones_like(zeros),
        visible=torch.ones(b, f, dtype=torch.bool, device=device),
    )
