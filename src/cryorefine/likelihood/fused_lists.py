"""Each particle's own candidate list scored straight from the reference: one fused kernel.

In a local search each particle has its own list of candidate orientations, and
neighbouring particles barely share them. Projecting the lists' union, holding
it, gathering each particle's rows and multiplying them with its ``Z`` moves
every projection through memory three times (for 3D data a rotated volume each).
Here one Triton kernel, for a particle and a block of its slots, walks the
window's frequencies: it samples the reference at ``A.T k padding_factor``
(trilinear, as ``fourier.trilinear_kernels``), multiplies the samples with the
particle's ``Z`` tile on the spot (``sum_k Re(conj(Z) P)`` for every
translation) and adds ``sum_k w K^2 |P|^2``. No projection is written.

The score is then ``sum w |X|^2 + sum w K^2 |P|^2 - 2 sum Re(conj(Z) P)``, as
``likelihood.scores``. Float32 sums (TF32 products of ``Z`` and ``P`` for the
``"tf32"`` precision); ``passes.score_held_lists`` is the reference the kernel
is tested against, and the path everywhere the kernel is not ``available``.
"""

from typing import no_type_check

import torch
from jaxtyping import Bool, Complex, Float, Int
from torch import Tensor

from cryorefine.fourier import texture as texture_module
from cryorefine.fourier import trilinear_kernels
from cryorefine.fourier.texture import ReferenceTexture
from cryorefine.likelihood.passes import ParticleWindowData
from cryorefine.likelihood.scores import data_terms

__all__ = ["available", "fused_list_scores", "list_cross"]

triton = trilinear_kernels.triton
tl = trilinear_kernels.tl

_BLOCK_R = 16  # slots per program (the products' N)
_BLOCK_K = 64  # frequencies per step (32 where the translations' tile passes 32 rows)
_NUM_WARPS = 4
_MAX_SLOT_BLOCKS = 65_535  # the grid's second dimension


def available(reference_ft: Tensor, *, precision: str, cross_correlation: bool) -> bool:
    """Whether ``fused_list_scores`` runs for this reference, precision and score."""
    return (
        trilinear_kernels.available(reference_ft)
        and reference_ft.dtype == torch.complex64
        and precision == "float32"  # TF32 products: no bound of their error measured here
        and not cross_correlation
    )


if triton is not None:
    _rotated_axis = trilinear_kernels._axis
    texture_fetch = texture_module.fetch

    @triton.jit
    @no_type_check  # the test suite's jaxtyping hook would wrap it; Triton needs the function
    def _list_cross(
        table_ptr, texture, rot_ptr, rows_ptr, freq_ptr, z_ptr, cp_ptr, cross_ptr, power_ptr,
        k, t, r, p, ph, pad, radius2, scale,
        BLOCK_K: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_R: tl.constexpr, TF32: tl.constexpr,
        TEXTURE: tl.constexpr,
    ):  # fmt: skip
        particle = tl.program_id(0).to(tl.int64)
        slots = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
        in_r = slots < r
        row = tl.load(rows_ptr + particle * r + slots, mask=in_r, other=0).to(tl.int64)
        base = rot_ptr + row * 9
        a0 = tl.load(base, mask=in_r, other=0.0)
        a1 = tl.load(base + 1, mask=in_r, other=0.0)
        a2 = tl.load(base + 2, mask=in_r, other=0.0)
        a3 = tl.load(base + 3, mask=in_r, other=0.0)
        a4 = tl.load(base + 4, mask=in_r, other=0.0)
        a5 = tl.load(base + 5, mask=in_r, other=0.0)
        a6 = tl.load(base + 6, mask=in_r, other=0.0)
        a7 = tl.load(base + 7, mask=in_r, other=0.0)
        a8 = tl.load(base + 8, mask=in_r, other=0.0)
        translations = tl.arange(0, BLOCK_T)
        in_t = translations < t
        z_rows = (particle * t + translations.to(tl.int64)) * (2 * k)  # (BLOCK_T,)
        cross = tl.zeros((BLOCK_T, BLOCK_R), dtype=tl.float32)
        power = tl.zeros((BLOCK_R,), dtype=tl.float32)
        start = 0
        while start < k:  # a while loop: Triton's interpreter cannot range over a runtime k
            offs = start + tl.arange(0, BLOCK_K)
            in_k = offs < k
            fx = tl.load(freq_ptr + offs * 3, mask=in_k, other=0).to(tl.float32)
            fy = tl.load(freq_ptr + offs * 3 + 1, mask=in_k, other=0).to(tl.float32)
            fz = tl.load(freq_ptr + offs * 3 + 2, mask=in_k, other=0).to(tl.float32)
            keep = in_k & ((fx * fx + fy * fy + fz * fz) <= radius2)
            # tiles (slots, frequencies): a warp walks one rotation's consecutive frequencies,
            # whose corners lie close together in the reference (as ``_sample``'s rows)
            fx2, fy2, fz2 = fx[None, :], fy[None, :], fz[None, :]
            qx = (a0[:, None] * fx2 + a3[:, None] * fy2 + a6[:, None] * fz2) * pad
            qy = (a1[:, None] * fx2 + a4[:, None] * fy2 + a7[:, None] * fz2) * pad
            qz = (a2[:, None] * fx2 + a5[:, None] * fy2 + a8[:, None] * fz2) * pad
            flip = qx < 0
            qx = tl.where(flip, -qx, qx)
            qy = tl.where(flip, -qy, qy)
            qz = tl.where(flip, -qz, qz)
            live = in_r[:, None] & keep[None, :]
            if TEXTURE:  # the texture units fetch and weigh the 8 corners
                re, im = texture_fetch(texture, qx, qy, qz, p, ph)
            else:
                x0f = tl.floor(qx)
                tx = qx - x0f
                x0 = x0f.to(tl.int32)
                y0, y1, ty = _rotated_axis(qy, p, p // 2)
                z0, z1, tz = _rotated_axis(qz, p, p // 2)
                re = tl.zeros((BLOCK_R, BLOCK_K), dtype=tl.float32)
                im = tl.zeros((BLOCK_R, BLOCK_K), dtype=tl.float32)
                for corner in tl.static_range(8):
                    dx = corner % 2
                    dy = (corner // 2) % 2
                    dz = corner // 4
                    ix = x0 + dx
                    iy = y0 + dy * (y1 - y0)
                    iz = z0 + dz * (z1 - z0)
                    w = (dx * tx + (1 - dx) * (1 - tx)) * (dy * ty + (1 - dy) * (1 - ty))
                    w = w * (dz * tz + (1 - dz) * (1 - tz))
                    inside = live & (ix < ph)
                    index = ((iz * p + iy) * ph + ix).to(tl.int64) * 2
                    re += w * tl.load(table_ptr + index, mask=inside, other=0.0)
                    im += w * tl.load(table_ptr + index + 1, mask=inside, other=0.0)
            re = tl.where(live, re * scale, 0.0)
            im = tl.where(live, tl.where(flip, -im, im) * scale, 0.0)
            z_at = z_rows[:, None] + 2 * offs[None, :].to(tl.int64)  # (BLOCK_T, BLOCK_K)
            z_live = in_t[:, None] & in_k[None, :]
            z_re = tl.load(z_ptr + z_at, mask=z_live, other=0.0)
            z_im = tl.load(z_ptr + z_at + 1, mask=z_live, other=0.0)
            if TF32:
                cross += tl.dot(z_re, tl.trans(re), input_precision="tf32")
                cross += tl.dot(z_im, tl.trans(im), input_precision="tf32")
            else:
                cross += tl.dot(z_re, tl.trans(re), input_precision="ieee")
                cross += tl.dot(z_im, tl.trans(im), input_precision="ieee")
            ctf_power = tl.load(cp_ptr + particle * k + offs, mask=in_k, other=0.0)
            power += tl.sum(ctf_power[None, :] * (re * re + im * im), axis=1)
            start += BLOCK_K
        out = (particle * t + translations.to(tl.int64))[:, None] * r + slots[None, :]
        tl.store(cross_ptr + out, cross, mask=in_t[:, None] & in_r[None, :])
        tl.store(power_ptr + particle * r + slots, power, mask=in_r)


def _pow2_at_least(value: int, floor: int) -> int:
    out = floor
    while out < value:
        out *= 2
    return out


def list_cross(
    shifted: Float[Tensor, "s t k2"],
    ctf_power: Float[Tensor, "s k"],
    reference_ft: Complex[Tensor, "p p ph"],
    rotations: Float[Tensor, "n 3 3"],
    rows: Int[Tensor, "s r"],
    frequencies: Int[Tensor, "k 3"],
    *,
    padding_factor: int,
    max_radius: float,
    scale: float,
    tf32: bool,
    texture: ReferenceTexture | None = None,
) -> tuple[Float[Tensor, "s t r"], Float[Tensor, "s r"]]:
    """``(sum_k Re(conj(Z) P), sum_k w K^2 |P|^2)`` of each particle's rows of ``rotations``.

    ``shifted``: ``Z`` as real pairs; ``P`` of row ``n`` is ``sample_rotated``'s
    value of ``reference_ft`` at ``rotations[n]`` on ``frequencies`` (0 beyond
    ``max_radius``), times ``scale``. Needs Triton (``trilinear_kernels.triton``).
    With ``texture`` (of ``reference_ft``) the texture units sample it.
    """
    s, t, k2 = shifted.shape
    r, k = rows.shape[1], frequencies.shape[0]
    p, ph = reference_ft.shape[0], reference_ft.shape[2]
    cross = shifted.new_zeros((s, t, r))
    power = shifted.new_zeros((s, r))
    if not (s and r and k):
        return cross, power
    if k2 != 2 * k:
        raise ValueError(f"shifted has {k2} reals per translation, frequencies {k}")
    block_t = _pow2_at_least(t, 16)
    block_k = _BLOCK_K if block_t <= 32 else _BLOCK_K // 2  # Z tile and samples in registers
    table = torch.view_as_real(reference_ft.contiguous())
    rotation_rows = rotations.to(torch.float32).reshape(-1, 9).contiguous()
    slot_rows = rows.to(torch.int32).contiguous()
    freq = frequencies.to(device=shifted.device, dtype=torch.int32).contiguous()
    z = shifted.to(torch.float32).contiguous()
    cp = ctf_power.to(torch.float32).contiguous()
    blocks = triton.cdiv(r, _BLOCK_R)
    if blocks > _MAX_SLOT_BLOCKS:
        raise ValueError(f"{r} slots per particle: more than one launch holds")
    _list_cross[(s, blocks)](
        table, 0 if texture is None else texture.handle, rotation_rows, slot_rows, freq, z, cp,
        cross, power, k, t, r, p, ph, float(padding_factor), float(max_radius) ** 2,
        float(scale), BLOCK_K=block_k, BLOCK_T=block_t, BLOCK_R=_BLOCK_R, TF32=tf32,
        TEXTURE=texture is not None, num_warps=_NUM_WARPS,
    )  # fmt: skip
    return cross, power


def fused_list_scores(
    particles: ParticleWindowData,
    reference_ft: Complex[Tensor, "p p ph"],
    rotations: Float[Tensor, "n 3 3"],
    rows: Int[Tensor, "b r"],
    valid: Bool[Tensor, "b r"],
    frequencies: Int[Tensor, "k 3"],
    *,
    padding_factor: int,
    max_radius: float,
    scale: float,
    precision: str,
    max_bytes: int,
    texture: ReferenceTexture | None = None,
) -> Float[Tensor, "b t r"]:
    """``passes.score_held_lists``'s scores (+inf at padded slots), no projection held.

    ``rows`` index ``rotations`` (the union of the lists); ``particles.phases``
    shared by all particles (expanded). Particles go in chunks whose ``Z`` (and
    the complex array it is made from) take at most half of ``max_bytes``.
    """
    b, t, k = particles.phases.shape
    out = particles.ctf.new_empty((b, t, rows.shape[1]), dtype=torch.float32)
    step = max(1, (max_bytes // 2) // (16 * t * k))
    phases = particles.phases[0]
    for lo in range(0, b, step):
        chunk = slice(lo, min(lo + step, b))
        terms = data_terms(
            particles.data[chunk],
            particles.ctf[chunk],
            particles.weight[chunk],
            phases,
            precision=precision,
        )
        cross, power = list_cross(
            terms.shifted,
            terms.ctf_power,
            reference_ft,
            rotations,
            rows[chunk],
            frequencies,
            padding_factor=padding_factor,
            max_radius=max_radius,
            scale=scale,
            tf32=precision == "tf32",
            texture=texture,
        )
        out[chunk] = cross.mul_(-2.0).add_(power[:, None, :]).add_(terms.data_power[:, None, None])
    return out.masked_fill_(~valid[:, None, :], torch.inf)
