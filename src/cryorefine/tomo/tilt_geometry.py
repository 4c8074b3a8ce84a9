"""Tilt-series geometry: projection matrices, and where each particle lands in each tilt image.

Frames and units (RELION 5, ``jaz/tomography``; REFINE_SPEC sections 2.3 and 2.5)
    Tomogram coordinates are bin-1 tilt-series pixels ``(x, y, z)`` from the
    tomogram's corner ("decentred"); the tomogram centre is ``c = (w, h, d) / 2``
    (``rlnTomoSizeX/Y/Z``). A particle's RELION-5 position
    ``rlnCenteredCoordinate*Angst`` ``a`` lies at ``a / p + c`` (``p`` the
    tilt-series pixel size). The 4x4 projection ``P_f`` of tilt ``f`` maps a
    tomogram point ``(x, y, z, 1)`` to tilt-image pixels ``(u, v)`` (rows 0
    and 1) and a depth along the beam (row 2).
Projection from RELION-5 alignment angles (``Tomogram::setProjectionMatrix``)
    ``P_f = T(s_img + t_f) Rz(zrot) Ry(ytilt) Rx(xtilt) T(-s_tomo)``, with active,
    right-handed rotations by the angles in degrees
    (``Ry(t) = [[cos t, 0, sin t], [0, 1, 0], [-sin t, 0, cos t]]``),
    ``s_tomo = (w // 2, h // 2, d // 2)``, the tilt-image centre
    ``s_img = (W // 2, H // 2, 0)`` for images of ``W x H`` pixels, and the shift
    ``t_f = (rlnTomoXShiftAngst, rlnTomoYShiftAngst, 0) / p``. RELION-4 tables
    (``rlnTomoProjX/Y/Z/W``) give ``P_f`` directly and win where both exist.
    The image size is not in the STAR files (RELION reads it from the tilt
    images' headers); where the caller does not know it, the tomogram's
    ``(w, h)`` stands in. (The tutorial's images are 3710 x 3838: with it this
    geometry reproduces RELION's ``rlnTomoVisibleFrames`` of Refine3D/job074.)
Depth and defocus (``Tomogram::getDepthOffset``, ``Tomogram::getCtf``)
    ``depth_f = (P_f q)_z - (P_f c)_z`` in bin-1 pixels for tomogram point ``q``;
    the particle's defocus in tilt ``f`` is the tilt's ``rlnDefocusU/V`` plus
    ``hand * p * slope * depth_f`` Angstrom (``rlnTomoHand``, the defocus slope
    ``rlnTomoDefocusSlope``, 1 by default); the astigmatism angle is the tilt's.
Dose
    The cumulative dose of tilt ``f`` is its ``rlnMicrographPreExposure``.
Visibility (``Tomogram::isVisible``, ``getVisibilityMinFramesMaxDose``)
    Tilt ``f`` sees the particle when ``r < u < W - r`` and ``r < v < H - r``
    for the radius ``r`` in bin-1 pixels (``relion_tomo_subtomo`` uses
    ``binning * box / 2``), and, with a maximum dose, its pre-exposure is not
    above it.
Particle frame
    The tilt rotation of a particle is ``R_f S``: ``R_f`` the 3x3 part of ``P_f``,
    ``S`` the subtomogram matrix (particle box frame to tomogram frame; the
    identity for ``rlnTomoSubtomogram*`` angles 0). It is what
    ``fourier.tilt_series_ctf_weights`` takes.
"""

from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from cryorefine.io import TiltSeries

__all__ = [
    "ParticleTilts",
    "TiltSeriesGeometry",
    "decentred_coordinates_px",
    "particle_tilts",
    "relion5_projection_matrices",
    "tilt_series_geometry",
]


@dataclass(frozen=True)
class TiltSeriesGeometry:
    """One tilt series as float64 tensors (module docstring), ``i`` tilt images in file order.

    Attributes
    ----------
    name
        rlnTomoName.
    projections
        ``P_f``: tomogram pixels (bin 1, from the corner) to tilt-image pixels and depth.
    tomogram_centre_px
        ``c = (w, h, d) / 2``.
    image_size_px
        ``(W, H)`` of the tilt images.
    pixel_size_angst
        Tilt-series pixel size ``p``.
    hand, defocus_slope
        ``rlnTomoHand`` and the defocus slope (module docstring).
    defocus_u_angst, defocus_v_angst, defocus_angle_deg, bfactor_angst2, scale
        Per-tilt CTF at the tomogram centre (``rlnDefocusU`` ... ``rlnCtfScalefactor``).
    pre_exposure_e_per_angst2
        Cumulative dose before each tilt.
    voltage_kv, spherical_aberration_mm, amplitude_contrast
        Microscope of the tilt series.
    """

    name: str
    projections: Float[Tensor, "i 4 4"]
    tomogram_centre_px: Float[Tensor, " 3"]
    image_size_px: tuple[int, int]
    pixel_size_angst: float
    hand: float
    defocus_slope: float
    defocus_u_angst: Float[Tensor, " i"]
    defocus_v_angst: Float[Tensor, " i"]
    defocus_angle_deg: Float[Tensor, " i"]
    bfactor_angst2: Float[Tensor, " i"]
    scale: Float[Tensor, " i"]
    pre_exposure_e_per_angst2: Float[Tensor, " i"]
    voltage_kv: float
    spherical_aberration_mm: float
    amplitude_contrast: float

    def __len__(self) -> int:
        """Number of tilt images."""
        return int(self.projections.shape[0])


@dataclass(frozen=True)
class ParticleTilts:
    """Each of ``b`` particles in each of the ``i`` tilts of its tilt series (module docstring).

    Attributes
    ----------
    position_px
        ``(u, v)`` in the tilt image, bin-1 pixels.
    depth_px
        Depth along the beam relative to the tomogram centre's, bin-1 pixels.
    rotations
        ``R_f S``: particle box frame to tilt-image frame.
    defocus_u_angst, defocus_v_angst, defocus_angle_deg
        The particle's defocus in each tilt (depth included) and astigmatism angle.
    dose_e_per_angst2
        Cumulative dose (pre-exposure) of each tilt.
    bfactor_angst2, scale
        Per-tilt CTF B-factor and scale.
    visible
        Tilts that see the particle.
    """

    position_px: Float[Tensor, "b i 2"]
    depth_px: Float[Tensor, "b i"]
    rotations: Float[Tensor, "b i 3 3"]
    defocus_u_angst: Float[Tensor, "b i"]
    defocus_v_angst: Float[Tensor, "b i"]
    defocus_angle_deg: Float[Tensor, "b i"]
    dose_e_per_angst2: Float[Tensor, "b i"]
    bfactor_angst2: Float[Tensor, "b i"]
    scale: Float[Tensor, "b i"]
    visible: Bool[Tensor, "b i"]


def _rotation(axis: int, angles_deg: Tensor) -> Tensor:
    """Active right-handed rotations ``(i, 3, 3)`` by ``angles_deg`` about axis 0, 1 or 2."""
    t = torch.deg2rad(angles_deg)
    c, s = torch.cos(t), torch.sin(t)
    out = torch.zeros(*t.shape, 3, 3, dtype=t.dtype, device=t.device)
    a, b = [(1, 2), (2, 0), (0, 1)][axis]  # the plane turned: y->z, z->x, x->y
    out[..., axis, axis] = 1.0
    out[..., a, a], out[..., a, b] = c, -s
    out[..., b, a], out[..., b, b] = s, c
    return out


def _translation(shift: Tensor) -> Tensor:
    """4x4 translations ``(..., 4, 4)`` by ``shift`` ``(..., 3)``."""
    out = torch.eye(4, dtype=shift.dtype, device=shift.device).expand(*shift.shape[:-1], 4, 4)
    out = out.clone()
    out[..., :3, 3] = shift
    return out


def relion5_projection_matrices(
    x_tilt_deg: Float[Tensor, " i"],
    y_tilt_deg: Float[Tensor, " i"],
    z_rot_deg: Float[Tensor, " i"],
    x_shift_angst: Float[Tensor, " i"],
    y_shift_angst: Float[Tensor, " i"],
    *,
    pixel_size_angst: float,
    tomogram_size_px: tuple[int, int, int],
    image_size_px: tuple[int, int],
) -> Float[Tensor, "i 4 4"]:
    """``P_f`` of RELION-5 alignment angles and shifts (module docstring).

    Follows the device and dtype of ``y_tilt_deg``.
    """
    like = y_tilt_deg
    rotation = torch.eye(4, dtype=like.dtype, device=like.device).repeat(like.shape[0], 1, 1)
    rotation[:, :3, :3] = (
        _rotation(2, z_rot_deg) @ _rotation(1, y_tilt_deg) @ _rotation(0, x_tilt_deg)
    )
    w, h, d = tomogram_size_px
    specimen = torch.tensor([w // 2, h // 2, d // 2], dtype=like.dtype, device=like.device)
    width, height = image_size_px
    image = torch.stack(
        [
            width // 2 + x_shift_angst / pixel_size_angst,
            height // 2 + y_shift_angst / pixel_size_angst,
            torch.zeros_like(x_shift_angst),
        ],
        dim=-1,
    )
    return _translation(image) @ rotation @ _translation(-specimen)


def _tensor(values: np.ndarray, device: torch.device) -> Tensor:
    return torch.as_tensor(np.array(values, dtype=np.float64), device=device)


def tilt_series_geometry(
    series: TiltSeries,
    *,
    device: torch.device | str,
    image_size_px: tuple[int, int] | None = None,
    defocus_slope: float = 1.0,
) -> TiltSeriesGeometry:
    """The geometry, CTF and dose of one tilt series of a tomograms.star, as tensors.

    Parameters
    ----------
    series
        One tomogram of ``io.load_tomograms`` (RELION 4 or 5).
    device
        Where the tensors live (float64).
    image_size_px
        ``(W, H)`` of the tilt images; ``None``: the tomogram's ``(w, h)``
        (module docstring).
    defocus_slope
        RELION's ``rlnTomoDefocusSlope`` (1 where the file has none).

    Raises
    ------
    InputError
        A label the geometry needs is missing or not a number (from ``io``).
    """
    device = torch.device(device)
    size = series.size_px
    image = (size[0], size[1]) if image_size_px is None else tuple(image_size_px)
    pixel = series.pixel_size_angst
    if series.has_projection_matrices:
        projections = _tensor(series.projection_matrices(), device)
    else:
        alignment = series.alignment()
        projections = relion5_projection_matrices(
            _tensor(alignment.x_tilt_deg, device),
            _tensor(alignment.y_tilt_deg, device),
            _tensor(alignment.z_rot_deg, device),
            _tensor(alignment.x_shift_angst, device),
            _tensor(alignment.y_shift_angst, device),
            pixel_size_angst=pixel,
            tomogram_size_px=size,
            image_size_px=(int(image[0]), int(image[1])),
        )
    ctf = series.ctf_parameters()
    return TiltSeriesGeometry(
        name=series.name,
        projections=projections,
        tomogram_centre_px=_tensor(np.array(size, dtype=np.float64) / 2.0, device),
        image_size_px=(int(image[0]), int(image[1])),
        pixel_size_angst=pixel,
        hand=series.hand,
        defocus_slope=float(defocus_slope),
        defocus_u_angst=_tensor(ctf.defocus_u_angst, device),
        defocus_v_angst=_tensor(ctf.defocus_v_angst, device),
        defocus_angle_deg=_tensor(ctf.defocus_angle_deg, device),
        bfactor_angst2=_tensor(ctf.bfactor_angst2, device),
        scale=_tensor(ctf.scale, device),
        pre_exposure_e_per_angst2=_tensor(series.pre_exposure_e_per_angst2(), device),
        voltage_kv=float(ctf.voltage_kv[0]),
        spherical_aberration_mm=float(ctf.spherical_aberration_mm[0]),
        amplitude_contrast=float(ctf.amplitude_contrast[0]),
    )


def decentred_coordinates_px(
    geometry: TiltSeriesGeometry, centered_coordinates_angst: Float[Tensor, "b 3"]
) -> Float[Tensor, "b 3"]:
    """Tomogram pixels from the corner (RELION-4 ``rlnCoordinateX/Y/Z``) of centred Angstrom."""
    centre = geometry.tomogram_centre_px.to(centered_coordinates_angst)
    return centered_coordinates_angst / geometry.pixel_size_angst + centre


def particle_tilts(
    geometry: TiltSeriesGeometry,
    centered_coordinates_angst: Float[Tensor, "b 3"],
    *,
    visibility_radius_px: float = 0.0,
    max_dose_e_per_angst2: float | None = None,
    subtomogram_rotations: Float[Tensor, "b 3 3"] | None = None,
) -> ParticleTilts:
    """Image position, depth, defocus, dose and visibility of ``b`` particles in every tilt.

    Batched over particles and tilts (module docstring for every formula).
    Float64 on the device of ``geometry``.

    Parameters
    ----------
    geometry
        The particles' tilt series (``tilt_series_geometry``).
    centered_coordinates_angst
        ``rlnCenteredCoordinateX/Y/ZAngst`` of each particle.
    visibility_radius_px
        ``r`` of the visibility test, bin-1 pixels (``binning * box / 2`` in RELION).
    max_dose_e_per_angst2
        Tilts with a larger pre-exposure are not visible (``--max_dose``); None: all.
    subtomogram_rotations
        ``S`` per particle; None: the identity (subtomogram angles 0).
    """
    p = geometry.projections
    b = centered_coordinates_angst.shape[0]
    points = decentred_coordinates_px(geometry, centered_coordinates_angst.to(p))
    homogeneous = torch.cat([points, torch.ones_like(points[:, :1])], dim=-1)
    mapped = torch.einsum("fij,bj->bfi", p, homogeneous)  # (b, i, 4)
    centre = torch.cat([geometry.tomogram_centre_px, torch.ones_like(p[0, 0, :1])])
    depth = mapped[..., 2] - (p[:, 2, :] @ centre)[None]
    shift = geometry.hand * geometry.pixel_size_angst * geometry.defocus_slope * depth
    position = mapped[..., :2]
    width, height = geometry.image_size_px
    r = visibility_radius_px
    visible = (position[..., 0] > r) & (position[..., 0] < width - r)
    visible &= (position[..., 1] > r) & (position[..., 1] < height - r)
    dose = geometry.pre_exposure_e_per_angst2.expand(b, -1)
    if max_dose_e_per_angst2 is not None:
        visible &= dose <= max_dose_e_per_angst2
    tilt = p[:, :3, :3].expand(b, -1, 3, 3)
    if subtomogram_rotations is not None:
        tilt = tilt @ subtomogram_rotations.to(p)[:, None]
    return ParticleTilts(
        position_px=position,
        depth_px=depth,
        rotations=tilt,
        defocus_u_angst=geometry.defocus_u_angst + shift,
        defocus_v_angst=geometry.defocus_v_angst + shift,
        defocus_angle_deg=geometry.defocus_angle_deg.expand(b, -1),
        dose_e_per_angst2=dose,
        bfactor_angst2=geometry.bfactor_angst2.expand(b, -1),
        scale=geometry.scale.expand(b, -1),
        visible=visible,
    )
