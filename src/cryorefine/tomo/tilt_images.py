"""Particles in tilt images: boxes cut around each particle, binned, centred, CTF-premultiplied.

The 2D half of ``relion_tomo_subtomo`` (REFINE_SPEC sections 7.1 to 7.3), batched over
particles and tilts; layout and shift sign: ``fourier.conventions``.

Boxes (``cut_boxes``)
    Particle ``b`` lies at ``c = (u, v)`` in tilt ``f`` (bin-1 pixels,
    ``tilt_geometry.particle_tilts``). Its box of side ``s0`` (bin-1 pixels) has
    its centre pixel ``s0 // 2`` on image pixel ``round(c)`` (halves rounded up,
    as C's ``round`` for the positive positions of an image); pixels beyond the
    image are 0. The particle centre then lies at ``r = c - round(c)`` from the
    box centre: ``|r_x|, |r_y| <= 1/2``.
Binning and centring (``boxes_to_fourier``)
    ``Y = crop(shift(to_fourier(box), -r)) / binning``: the content is moved by
    ``-r`` (a Fourier phase, ``fourier.shift_fourier``), so that the particle
    centre lies on the box centre; the frequencies of a box of ``box_size``
    binned pixels are kept (``fourier.fourier_crop``; ``s0 = round(binning *
    box_size)`` as RELION). With the forward-normalised transform a crop keeps
    the amplitudes of the waves, i.e. the sample values of the low-passed image;
    dividing by ``binning`` turns a projection summed over bin-1 voxels along the
    beam into one summed over binned voxels. So, for a particle of map ``V``
    (pixel ``binning * p``, box ``n``) at pose ``R``, ``Y = n V_R`` on its central
    slice, the relation ``fourier.extract_slices`` states, at every binning
    (RELION divides by the binning at the same step).
CTF (``premultiply``)
    ``Z = s CTF_f D_f Y`` with ``s = -1`` (RELION's default contrast inversion:
    particles are dark in the tilt images and white after it; ``+1`` with
    ``--no_ic``), ``CTF_f`` the particle's CTF in tilt ``f`` (``fourier.ctf_2d``:
    defocus with the depth of the particle, astigmatism, B-factor and scale of
    the tilt) and ``D_f`` the tilt's dose weight (``fourier.dose_weight``, its
    pre-exposure, no voltage factor). Without the CTF (``--no_ctf``) ``Z = s Y``.
All four in turn: ``tilt_image_transforms``.
Crop (``crop_boxes``)
    To ``crop_size < n`` in real space about the box centre, after the CTF (so
    that what the CTF moves out of the particle's disc is kept up to the larger
    box). With ``circle``: RELION's ``cropCircle``, the mean of the pixels
    beyond radius ``crop_size / 2`` is subtracted and a raised cosine of
    ``CIRCLE_EDGE_PX`` inside that radius brings the image to 0. The transform
    of the cropped box keeps ``Z = m V_R`` (``m = crop_size``) on its central slice.
"""

import torch
from jaxtyping import Complex, Float
from torch import Tensor

from cryorefine.fourier.conventions import from_fourier, to_fourier
from cryorefine.fourier.ctf import ctf_2d, dose_weight
from cryorefine.fourier.filters import fourier_crop, shift_fourier
from cryorefine.fourier.masks import radius_from_centre, soft_sphere_mask
from cryorefine.tomo.tilt_geometry import ParticleTilts, TiltSeriesGeometry

__all__ = [
    "CIRCLE_EDGE_PX",
    "boxes_to_fourier",
    "crop_boxes",
    "cut_boxes",
    "premultiply",
    "source_box_size",
    "tilt_image_transforms",
]

#: Width of the raised-cosine edge of the circular crop (RELION's ``EDGE_FALLOFF``, ``--taper``).
CIRCLE_EDGE_PX = 5.0


def source_box_size(box_size: int, binning: float) -> int:
    """Side ``s0`` of the bin-1 box that bins to ``box_size``: ``round(binning * box_size)``."""
    return int(binning * box_size + 0.5)


def cut_boxes(
    tilt_images: Float[Tensor, "i h w"],
    positions_px: Float[Tensor, "b i 2"],
    *,
    box_size: int,
) -> tuple[Float[Tensor, "b i s s"], Float[Tensor, "b i 2"]]:
    """The box of side ``box_size`` (bin-1 pixels) of each particle in each tilt (module docstring).

    Parameters
    ----------
    tilt_images
        One tilt series, tensor axes ``(tilt, y, x)``.
    positions_px
        ``(u, v)`` of each particle in each tilt image (``ParticleTilts.position_px``).
    box_size
        Side ``s`` of the boxes.

    Returns
    -------
    boxes, remainders_px
        Boxes in the dtype of ``tilt_images``, 0 beyond the image; the particle
        centre relative to each box centre, ``(x, y)`` in pixels, float64.
    """
    f, height, width = tilt_images.shape
    device = tilt_images.device
    positions = positions_px.to(device, torch.float64)
    centre = torch.floor(positions + 0.5)
    corner = centre.to(torch.int64) - box_size // 2  # (b, i, 2)
    steps = torch.arange(box_size, device=device)
    x = corner[..., 0, None] + steps  # (b, i, s)
    y = corner[..., 1, None] + steps
    inside = ((y >= 0) & (y < height))[..., :, None] & ((x >= 0) & (x < width))[..., None, :]
    tilt = torch.arange(f, device=device)[None, :, None, None]
    values = tilt_images[
        tilt, y.clamp(0, height - 1)[..., :, None], x.clamp(0, width - 1)[..., None, :]
    ]
    boxes = torch.where(inside, values, torch.zeros_like(values))
    return boxes, positions - centre


def boxes_to_fourier(
    boxes: Float[Tensor, "b i s s"],
    remainders_px: Float[Tensor, "b i 2"],
    *,
    binning: float,
    box_size: int,
) -> Complex[Tensor, "b i n nh"]:
    """Centred, binned transforms ``Y`` of the boxes (module docstring), ``n = box_size``.

    ``remainders_px`` (bin-1 pixels, from ``cut_boxes``) is removed by a phase in
    the dtype of ``boxes``. Returns the complex dtype of ``boxes``.
    """
    ft = to_fourier(boxes, 2)
    ft = shift_fourier(ft, -remainders_px.to(boxes.device))
    if boxes.shape[-1] != box_size:
        ft = fourier_crop(ft, box_size, ndim=2)
    if binning != 1.0:
        ft = ft / binning
    return ft


def premultiply(
    transforms: Complex[Tensor, "b i n nh"],
    tilts: ParticleTilts,
    *,
    voltage_kv: float,
    spherical_aberration_mm: float,
    amplitude_contrast: float,
    pixel_size_angst: float,
    invert_contrast: bool = True,
    use_ctf: bool = True,
) -> Complex[Tensor, "b i n nh"]:
    """``Z = s CTF_f D_f Y`` for every particle and tilt (module docstring).

    ``pixel_size_angst`` is the binned pixel of ``transforms``; the CTF is
    computed in float64 and applied in the dtype of ``transforms``.
    """
    sign = -1.0 if invert_contrast else 1.0
    if not use_ctf:
        return transforms * sign
    b, f, n = transforms.shape[0], transforms.shape[1], transforms.shape[2]
    device = transforms.device

    def flat(value: Tensor) -> Tensor:
        return value.reshape(b * f).to(device, torch.float64)

    ctf = ctf_2d(
        defocus_u_angst=flat(tilts.defocus_u_angst),
        defocus_v_angst=flat(tilts.defocus_v_angst),
        defocus_angle_deg=flat(tilts.defocus_angle_deg),
        voltage_kv=voltage_kv,
        spherical_aberration_mm=spherical_aberration_mm,
        amplitude_contrast=amplitude_contrast,
        bfactor_angst2=flat(tilts.bfactor_angst2),
        scale=flat(tilts.scale),
        pixel_size_angst=pixel_size_angst,
        box_size=n,
    )
    dose = dose_weight(flat(tilts.dose_e_per_angst2), pixel_size_angst=pixel_size_angst, box_size=n)
    weight = (sign * ctf * dose).to(transforms.real.dtype).reshape(b, f, n, n // 2 + 1)
    return transforms * weight


def crop_boxes(
    transforms: Complex[Tensor, "b i n nh"],
    *,
    crop_size: int,
    circle: bool = True,
) -> Complex[Tensor, "b i m mh"]:
    """Crop to ``crop_size`` about the box centre in real space (module docstring).

    Unchanged if ``crop_size`` is the box size and ``circle`` is off. Returns the
    transform of the cropped boxes, forward-normalised for their own size.
    """
    n = transforms.shape[-2]
    if crop_size == n and not circle:
        return transforms
    images = from_fourier(transforms, n, 2)
    if circle:
        radius = crop_size / 2.0
        r = radius_from_centre(n, 2, device=images.device, dtype=images.dtype)
        outside = r > radius
        count = outside.sum().clamp(min=1)
        mean = (images * outside).sum(dim=(-2, -1), keepdim=True) / count
        mask = soft_sphere_mask(
            n,
            2,
            radius_px=radius - CIRCLE_EDGE_PX,
            edge_width_px=CIRCLE_EDGE_PX,
            device=images.device,
            dtype=images.dtype,
        )
        images = (images - mean) * mask
    start = n // 2 - crop_size // 2
    images = images[..., start : start + crop_size, start : start + crop_size]
    return to_fourier(images, 2)


def tilt_image_transforms(
    tilt_images: Float[Tensor, "i h w"],
    tilts: ParticleTilts,
    geometry: TiltSeriesGeometry,
    *,
    binning: float,
    box_size: int,
    crop_size: int,
    invert_contrast: bool = True,
    use_ctf: bool = True,
    circle_crop: bool = True,
) -> Complex[Tensor, "b i m mh"]:
    """``Z`` of every particle in every tilt of one tilt series: cut, bin, CTF, crop.

    ``geometry`` gives the tilt-series pixel and the microscope; the binned
    pixel is ``binning * geometry.pixel_size_angst`` (module docstring for each step).
    """
    source = source_box_size(box_size, binning)
    boxes, remainders = cut_boxes(tilt_images, tilts.position_px, box_size=source)
    transforms = boxes_to_fourier(boxes, remainders, binning=binning, box_size=box_size)
    transforms = premultiply(
        transforms,
        tilts,
        voltage_kv=geometry.voltage_kv,
        spherical_aberration_mm=geometry.spherical_aberration_mm,
        amplitude_contrast=geometry.amplitude_contrast,
        pixel_size_angst=binning * geometry.pixel_size_angst,
        invert_contrast=invert_contrast,
        use_ctf=use_ctf,
    )
    return crop_boxes(transforms, crop_size=crop_size, circle=circle_crop)
