"""The starting reference and the solvent mask handed to a refinement of simulated data.

Reference (``reference_rotation``, ``make_reference``)
    The truth turned by ``angle_deg`` about a random axis, ``reference(x) =
    truth(Q.T x)`` with ``Q`` the active rotation (``geometry.axis_angle_to_matrix``),
    then low-passed with RELION's raised cosine (``fourier.low_pass``: 0.5 at
    ``n p / lowpass_angst`` shells, 2 shells wide). Relative to the reference,
    the true pose of a particle with pose ``A`` is ``A Q.T`` (its image is the
    reference's projection at ``A Q.T``). The axis is redrawn until the identity
    is the nearest of the group's rotations to ``Q``, by at least
    ``SYMMETRY_MARGIN_DEG``: the reference is then ``angle_deg`` away from the
    truth also modulo the symmetry, not (close to) a symmetry-equivalent copy.
Mask (``make_mask``)
    From the reference (so that it fits it): voxels above ``threshold_fraction``
    of the maximum, dilated by ``dilation_px`` (all voxels within that distance),
    with a raised-cosine edge of ``edge_width_px`` beyond (1 at the dilated
    surface, 0 from ``edge_width_px`` further out), times a soft sphere of radius
    ``n / 2 - MASK_BOX_EDGE_PX`` with a raised-cosine edge of ``MASK_BOX_EDGE_PX``,
    which reaches 0 at the box faces (so that nothing wraps around). Values in [0, 1].
"""

import numpy as np
import torch
from jaxtyping import Float
from scipy import ndimage
from torch import Tensor

from cryorefine.errors import InputError
from cryorefine.fourier.conventions import from_fourier
from cryorefine.fourier.filters import low_pass
from cryorefine.fourier.masks import soft_sphere_mask
from cryorefine.fourier.projector import prepare_reference, rotate_volume
from cryorefine.geometry import angular_distance_deg, axis_angle_to_matrix
from cryorefine.simulate.truth import PADDING_FACTOR

__all__ = [
    "MASK_BOX_EDGE_PX",
    "MASK_DILATION_PX",
    "MASK_EDGE_WIDTH_PX",
    "MASK_THRESHOLD_FRACTION",
    "SYMMETRY_MARGIN_DEG",
    "make_mask",
    "make_reference",
    "reference_rotation",
]

#: How much nearer the identity must be to the reference's rotation than any other operator.
SYMMETRY_MARGIN_DEG = 1.0
#: Mask threshold as a fraction of the reference's maximum.
MASK_THRESHOLD_FRACTION = 0.1
#: Dilation of the thresholded region, pixels.
MASK_DILATION_PX = 3.0
#: Width of the mask's raised-cosine edge, pixels.
MASK_EDGE_WIDTH_PX = 6.0
#: Width of the soft sphere that brings the mask to 0 at the box faces, pixels.
MASK_BOX_EDGE_PX = 3.0

_AXIS_TRIES = 1000


def reference_rotation(
    angle_deg: float,
    rotations: Float[Tensor, "g 3 3"],
    *,
    generator: torch.Generator,
) -> tuple[Float[Tensor, "3 3"], Float[Tensor, " 3"]]:
    """A turn by ``angle_deg`` about a random axis, ``angle_deg`` away modulo ``rotations``.

    For C1 the axis is random; for a cyclic group it is the symmetry axis z
    (the turned reference keeps the group's frame, as a symmetric refinement
    needs); for groups with axes off z (D, T, O, I) the reference is not turned.

    Parameters
    ----------
    angle_deg
        Rotation angle (``--ref_rotation_deg``).
    rotations
        Proper rotations of the point group, identity first
        (``geometry.point_group(...).rotations``).
    generator
        Source of the axes (uniform on the sphere), tried in turn.

    Returns
    -------
    matrix, axis
        The active rotation ``Q`` (float64) and its unit axis ``(x, y, z)``.

    Raises
    ------
    InputError
        No axis among the tries keeps another operator more than
        ``SYMMETRY_MARGIN_DEG`` farther from ``Q`` than the identity (the angle
        is too large for the group).
    """
    device = generator.device
    ops = rotations.to(device=device, dtype=torch.float64)
    z_axis = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64, device=device)
    if ops.shape[0] > 1 and not torch.allclose(ops[:, 2, :], z_axis.expand(ops.shape[0], 3)):
        # D, T, O, I: the symmetry axes fix the frame; a turned reference would be a wrong
        # input to a symmetric refinement, so the reference keeps the truth's frame.
        return torch.eye(3, dtype=torch.float64, device=device), z_axis
    axes = torch.randn(_AXIS_TRIES, 3, generator=generator, device=device, dtype=torch.float64)
    if ops.shape[0] > 1:  # Cn: turn about the symmetry axis, which keeps the group's frame
        axes = z_axis.expand(_AXIS_TRIES, 3).clone()
    axes = axes / torch.linalg.vector_norm(axes, dim=-1, keepdim=True)
    angle = torch.full((_AXIS_TRIES,), float(angle_deg), dtype=torch.float64, device=device)
    candidates = axis_angle_to_matrix(axes, angle)  # (tries, 3, 3)
    distance = angular_distance_deg(candidates[:, None], ops[None])  # (tries, g)
    others = distance[:, 1:].amin(dim=-1) if ops.shape[0] > 1 else distance[:, 0] + 360.0
    good = torch.nonzero(others >= distance[:, 0] + SYMMETRY_MARGIN_DEG).flatten()
    if good.numel() == 0:
        raise InputError(
            f"--ref_rotation_deg {angle_deg:g}: every axis tried brings the turned reference "
            f"within {SYMMETRY_MARGIN_DEG:g} degrees of a symmetry-equivalent copy of the "
            "truth; choose a smaller angle"
        )
    first = int(good[0])
    return candidates[first], axes[first]


def make_reference(
    truth: Float[Tensor, "n n n"],
    rotation: Float[Tensor, "3 3"],
    *,
    pixel_size_angst: float,
    lowpass_angst: float,
) -> Float[Tensor, "n n n"]:
    """``truth(Q.T x)`` low-passed to ``lowpass_angst`` (module docstring), dtype of ``truth``."""
    n = truth.shape[-1]
    reference_ft = prepare_reference(
        truth, padding_factor=PADDING_FACTOR, gridding_correction="separable"
    )
    turned = rotate_volume(
        reference_ft, rotation.to(truth)[None], out_size=n, padding_factor=PADDING_FACTOR
    )[0]
    cutoff = n * pixel_size_angst / lowpass_angst
    filtered = low_pass(turned, cutoff_shells=cutoff, ndim=3, edge_width_shells=2.0)
    return from_fourier(filtered, n, 3)


def make_mask(
    volume: Float[Tensor, "n n n"],
    *,
    threshold_fraction: float = MASK_THRESHOLD_FRACTION,
    dilation_px: float = MASK_DILATION_PX,
    edge_width_px: float = MASK_EDGE_WIDTH_PX,
) -> Float[Tensor, "n n n"]:
    """Soft solvent mask of ``volume`` in [0, 1] (module docstring), float32 on its device.

    Raises
    ------
    InputError
        The map has no positive density to threshold.
    """
    n = volume.shape[-1]
    values = volume.detach().to("cpu", torch.float64).numpy()
    top = float(values.max())
    if not top > 0:
        raise InputError(
            f"the truth has no positive density (maximum {top:g}): no mask can be made "
            "(--map: is the contrast inverted?)"
        )
    inside = values > threshold_fraction * top
    distance = ndimage.distance_transform_edt(~inside)  # 0 inside, voxels to the region outside
    t = np.clip((distance - dilation_px) / edge_width_px, 0.0, 1.0)
    mask = torch.from_numpy(0.5 + 0.5 * np.cos(np.pi * t)).to(volume.device)
    sphere = soft_sphere_mask(
        n,
        3,
        radius_px=n / 2 - MASK_BOX_EDGE_PX,
        edge_width_px=MASK_BOX_EDGE_PX,
        device=volume.device,
        dtype=torch.float64,
    )
    return (mask * sphere).clamp(0.0, 1.0).to(torch.float32)
