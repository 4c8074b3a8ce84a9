"""Where the map sits against its mask, and the command that recentres the particles on the mask.

Centres are centres of mass in pixels, as ``(x, y, z)`` vectors measured from
the box centre (voxel ``n // 2`` on each axis, REFINE_SPEC §2); tensors index
``(z, y, x)`` (``geometry.conventions``). The map's centre of mass weighs each
voxel by its positive part ``max(v, 0)``: the density, without the negative
ripples of noise and filtering (which would pull the centre towards nowhere in
particular); a mask's values lie in [0, 1] and weigh as they are.

``relion_star_handler --center --center_X/Y/Z`` (and ``cryorefine star-handler``,
``geometry.recentre``) take the point ``c`` of the reference to centre on, in
pixels from the box centre in the reference's frame; the new origins move that
point to the box centre, so the map reconstructed from them is the old one
shifted by ``-c``. Centring on ``c = map centre - mask centre`` therefore puts
the map's centre of mass onto the mask's centre.
"""

import shlex
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor

__all__ = ["centre_of_mass_px", "map_mask_offset_px", "recentre_command"]


def centre_of_mass_px(volume: Float[Tensor, "z y x"]) -> Float[Tensor, " 3"]:
    """Centre of mass of ``max(volume, 0)``, ``(x, y, z)`` pixels from the box centre.

    Parameters
    ----------
    volume
        A map or a mask, axes ``(z, y, x)``; the box centre is voxel
        ``(nz // 2, ny // 2, nx // 2)``.

    Returns
    -------
    Tensor
        ``(x, y, z)`` in pixels, float64, on the volume's device; NaN where the
        volume has no positive voxel.
    """
    weights = volume.to(torch.float64).clamp(min=0.0)
    total = weights.sum()
    centre = []
    for axis in (2, 1, 0):  # x, y, z
        others = tuple(a for a in range(3) if a != axis)
        profile = weights.sum(dim=others)
        n = volume.shape[axis]
        positions = torch.arange(n, dtype=torch.float64, device=volume.device) - n // 2
        centre.append((profile * positions).sum())
    com = torch.stack(centre) / total
    return torch.where(total > 0, com, torch.full_like(com, torch.nan))


def map_mask_offset_px(
    volume: Float[Tensor, "z y x"], mask: Float[Tensor, "z y x"]
) -> Float[Tensor, " 3"]:
    """The map's centre of mass minus the mask's, ``(x, y, z)`` pixels (``centre_of_mass_px``).

    This is the ``--center_X/Y/Z`` that recentres the particles so that the map
    moves onto the mask (module docstring).
    """
    if volume.shape != mask.shape:
        raise ValueError(f"map {tuple(volume.shape)} and mask {tuple(mask.shape)} differ in shape")
    return centre_of_mass_px(volume) - centre_of_mass_px(mask)


def recentre_command(
    data_star: Path | str, offset_px: tuple[float, float, float], *, output: Path | str
) -> str:
    """``cryorefine star-handler --center`` on ``offset_px`` (x, y, z pixels), as a shell line.

    Values are written with 3 decimals (0.0005 pixel at most from ``offset_px``);
    paths are quoted for the shell.
    """
    x, y, z = (f"{round(value, 3) + 0.0:.3f}" for value in offset_px)  # no "-0.000"
    return (
        f"cryorefine star-handler --i {shlex.quote(str(data_star))} "
        f"--o {shlex.quote(str(output))} --center "
        f"--center_X {x} --center_Y {y} --center_Z {z}"
    )
