"""HEALPix in NESTED ordering, in torch: pixel centres and the pixel hierarchy.

Written from the HEALPix paper (Gorski et al. 2005, ApJ 622:759, sections 4 and 5):
``order`` ``k`` has ``nside = 2**k`` and ``12 * 4**k`` equal-area pixels on 12
base faces; a NESTED pixel number is ``face * nside**2`` plus the bit
interleave of the pixel's ``(ix, iy)`` position inside its face (``ix`` on the
even bits). The 4 children of pixel ``p`` at ``order + 1`` are ``4p .. 4p + 3``.
Angles are radians: colatitude ``theta`` in [0, pi] and longitude ``phi`` in
[0, 2 pi). The arithmetic follows the order of operations of the HEALPix C++
library that RELION ships, so pixel centres agree to the last bit and RELION's
``rot``/``tilt`` boundary tests select the same pixels.
"""

import functools
import math

import torch
from jaxtyping import Float, Int
from torch import Tensor

__all__ = [
    "healpix_children",
    "healpix_max_pixel_radius_rad",
    "healpix_nest2xyf",
    "healpix_npix",
    "healpix_pix2ang",
    "healpix_pix2vec",
    "healpix_pix2z_phi",
    "healpix_xyf2nest",
]

MAX_ORDER = 29  # nside = 2**29 keeps every pixel number inside int64

# Per base face: ring number of its southern-most corner in units of nside, and
# longitude of its centre in units of pi/4 (Gorski et al. 2005, Fig. 4); computed
# from the face number where used (``_face_ring_phi``): a table sent to a GPU per
# call would wait for the device's queue to drain.
_FACE_RING = (2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4)
_FACE_PHI = (1, 3, 5, 7, 0, 2, 4, 6, 1, 3, 5, 7)


def _check_order(order: int) -> None:
    if not 0 <= order <= MAX_ORDER:
        raise ValueError(f"HEALPix order must be in [0, {MAX_ORDER}], got {order}")


def healpix_npix(order: int) -> int:
    """Number of pixels ``12 * 4**order`` at a HEALPix order (``nside = 2**order``)."""
    _check_order(order)
    return 12 << (2 * order)


def _compress_bits(v: Tensor, order: int) -> Tensor:
    """Bits 0, 2, 4, .. of ``v`` packed into bits 0, 1, 2, .."""
    out = torch.zeros_like(v)
    for bit in range(order):
        out |= ((v >> (2 * bit)) & 1) << bit
    return out


def _spread_bits(v: Tensor, order: int) -> Tensor:
    """Bits 0, 1, 2, .. of ``v`` spread onto bits 0, 2, 4, .."""
    out = torch.zeros_like(v)
    for bit in range(order):
        out |= ((v >> bit) & 1) << (2 * bit)
    return out


def healpix_nest2xyf(
    order: int, pixels: Int[Tensor, "..."]
) -> tuple[Int[Tensor, "..."], Int[Tensor, "..."], Int[Tensor, "..."]]:
    """``(ix, iy, face)`` of NESTED pixels: position in the face (``0 .. nside - 1``) and face."""
    _check_order(order)
    face = pixels >> (2 * order)
    inner = pixels & ((1 << (2 * order)) - 1)
    split, _ = _bit_tables(pixels.device)
    ix, iy = torch.zeros_like(inner), torch.zeros_like(inner)
    for chunk in range(0, order, 8):  # 16 bits of inner, 8 of ix and of iy, at a time
        both = split[(inner >> (2 * chunk)) & 0xFFFF]
        ix, iy = ix | ((both & 0xFF) << chunk), iy | ((both >> 8) << chunk)
    return ix.to(pixels.dtype), iy.to(pixels.dtype), face


def healpix_xyf2nest(
    order: int, ix: Int[Tensor, "..."], iy: Int[Tensor, "..."], face: Int[Tensor, "..."]
) -> Int[Tensor, "..."]:
    """NESTED pixel of face position ``(ix, iy)`` on ``face`` (``healpix_nest2xyf`` inverted)."""
    _check_order(order)
    _, spread = _bit_tables(ix.device)
    nest = face << (2 * order)
    for chunk in range(0, order, 8):  # 8 bits of ix and of iy, 16 of inner, at a time
        bits = spread[(ix >> chunk) & 0xFF] | (spread[(iy >> chunk) & 0xFF] << 1)
        nest = nest + (bits << (2 * chunk))
    return nest.to(ix.dtype)


@functools.lru_cache(maxsize=8)
def _bit_tables(device: torch.device) -> tuple[Tensor, Tensor]:
    """Lookup tables on ``device``: 16 interleaved bits split, and 8 bits spread.

    ``split[v]`` has ``v``'s even bits packed into bits 0-7 and its odd bits into
    bits 8-15; ``spread[v]`` has the 8 bits of ``v`` on bits 0, 2, .., 14. One
    gather per 16 (or 8) bits instead of four launches per bit on a GPU.
    """
    v = torch.arange(1 << 16, dtype=torch.int64)
    split = _compress_bits(v, 8) | (_compress_bits(v >> 1, 8) << 8)
    spread = _spread_bits(torch.arange(1 << 8, dtype=torch.int64), 8)
    return split.to(device), spread.to(device)


def _face_ring_phi(face: Tensor) -> tuple[Tensor, Tensor]:
    """``_FACE_RING[face]`` and ``_FACE_PHI[face]``, from the face number."""
    row = face // 4  # 0 north, 1 equator, 2 south
    return row + 2, 2 * (face % 4) + (row != 1).to(face.dtype)


def healpix_pix2z_phi(
    order: int, pixels: Int[Tensor, "..."]
) -> tuple[Float[Tensor, "..."], Float[Tensor, "..."]]:
    """``(z = cos theta, phi)`` of NESTED pixel centres, float64 on the pixels' device.

    Polar caps (ring ``j < nside`` from a pole): ``z = +-(1 - j**2 / (3 nside**2))``
    and ``j`` pixels per quarter ring; equatorial belt: ``z = (2 nside - j) * 2 /
    (3 nside)`` and ``nside`` pixels per quarter ring, every other ring shifted by
    half a pixel.
    """
    _check_order(order)
    pixels = pixels.to(torch.int64)
    nside = 1 << order
    npix = 12 * nside * nside
    fact2 = 4.0 / npix
    fact1 = (2 * nside) * fact2
    ix, iy, face = healpix_nest2xyf(order, pixels)
    face_ring, face_phi = _face_ring_phi(face)
    ring = face_ring * nside - ix - iy - 1  # 1 .. 4 nside - 1 from the north pole
    north, south = ring < nside, ring > 3 * nside
    polar_ring = torch.where(north, ring, 4 * nside - ring)
    nr = torch.where(north | south, polar_ring, torch.full_like(ring, nside))
    shift = torch.where(north | south, 0, (ring - nside) & 1)
    nr_sq = (nr * nr).to(torch.float64)
    z = torch.where(
        north,
        1 - nr_sq * fact2,
        torch.where(south, nr_sq * fact2 - 1, (2 * nside - ring).to(torch.float64) * fact1),
    )
    # The numerator is always even (parity of ring and ix + iy), so the division is exact.
    jp = (face_phi * nr + ix - iy + 1 + shift) // 2
    jp = torch.where(jp > 4 * nside, jp - 4 * nside, jp)
    jp = torch.where(jp < 1, jp + 4 * nside, jp)
    phi = (jp.to(torch.float64) - (shift + 1).to(torch.float64) * 0.5) * (
        (math.pi / 2) / nr.to(torch.float64)
    )
    return z, phi


def healpix_pix2ang(
    order: int, pixels: Int[Tensor, "..."]
) -> tuple[Float[Tensor, "..."], Float[Tensor, "..."]]:
    """``(theta, phi)`` in radians of NESTED pixel centres (float64), as ``pix2ang(nest=True)``.

    ``theta = acos(z)`` is the colatitude in [0, pi]; ``phi`` in [0, 2 pi).
    """
    z, phi = healpix_pix2z_phi(order, pixels)
    return torch.acos(z), phi


def healpix_pix2vec(order: int, pixels: Int[Tensor, "..."]) -> Float[Tensor, "... 3"]:
    """Unit vectors ``(x, y, z)`` of NESTED pixel centres (float64)."""
    z, phi = healpix_pix2z_phi(order, pixels)
    s = torch.sqrt((1 - z) * (1 + z))
    return torch.stack([s * phi.cos(), s * phi.sin(), z], dim=-1)


def healpix_children(
    order: int, pixels: Int[Tensor, "..."], *, oversampling: int
) -> Int[Tensor, "... c"]:
    """The ``c = 4**oversampling`` pixels at ``order + oversampling`` inside each pixel.

    Listed as RELION lists oversampled directions (``HealpixSampling::
    getOrientations``): over the fine face grid, ``iy`` in the outer loop and
    ``ix`` in the inner loop. As a set these are ``c * p .. c * p + c - 1``; for
    ``oversampling >= 2`` the listing order differs from increasing numbers.
    """
    _check_order(order + oversampling)
    fact = 1 << oversampling
    ix, iy, face = healpix_nest2xyf(order, pixels.to(torch.int64))
    steps = torch.arange(fact, device=pixels.device)
    fine_y = (fact * iy)[..., None, None] + steps[:, None]  # (..., fact_y, 1)
    fine_x = (fact * ix)[..., None, None] + steps[None, :]  # (..., 1, fact_x)
    fine_y, fine_x = fine_y + 0 * fine_x, fine_x + 0 * fine_y  # broadcast to (..., fact, fact)
    children = healpix_xyf2nest(order + oversampling, fine_x, fine_y, face[..., None, None])
    return children.flatten(-2)


def healpix_max_pixel_radius_rad(order: int) -> float:
    """Largest angle (radians) between a pixel centre and any point of its pixel.

    The HEALPix library's ``max_pixrad``: the angle between the point at
    ``z = 2/3, phi = pi / (4 nside)`` and the point at ``z = 1 - (1 - 1/nside)**2 / 3,
    phi = 0``. RELION removes symmetry mates closer than half of it.
    """
    _check_order(order)
    nside = 1 << order
    za, phia = 2.0 / 3.0, math.pi / (4 * nside)
    zb, phib = 1 - (1 - 1 / nside) ** 2 / 3, 0.0

    def vec(z: float, phi: float) -> tuple[float, float, float]:
        s = math.sqrt((1 - z) * (1 + z))
        return (s * math.cos(phi), s * math.sin(phi), z)

    a, b = vec(za, phia), vec(zb, phib)
    cross = (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])
    return math.atan2(math.hypot(*cross), sum(p * q for p, q in zip(a, b, strict=True)))
