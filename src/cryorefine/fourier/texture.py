"""Trilinear sampling of a padded Fourier reference by the GPU's texture units.

The same values as ``fourier.trilinear_kernels.sample_kernel`` (layout, Friedel
fold, wrap-around in y and z, corners beyond ``kx = p // 2`` counted as zero),
but the 8 corners are fetched and weighted by the texture hardware in one
instruction, as RELION's GPU projector does. The hardware keeps each axis's
interpolation fraction in 8 fractional bits (CUDA C++ Programming Guide,
"Linear filtering"), so a value differs from the exact trilinear one by at most
``2**-8`` times the sum over axes of the largest difference between corners
along that axis; on a smooth reference that is ~0.4 % of the values' RMS.

The texture holds the reference in float16, over ``scale``, the power of two at
or above its largest real or imaginary part (exact), which the kernel multiplies
back. Rounding adds at most ``2**-11`` of each corner's modulus (``2**-24`` of
``scale`` where a part is below float16's normal range), 0.03 % of the values'
RMS on a map's fall-off, a tenth of the fractions' error; the texels take 4
bytes, not 8, and the sampling rate of a local search's rows rose from 42 to
55-57 G samples/s on an H100 with 8 rows per program
(``bench/texture_layout_bench.py``).

The reference is copied once into a CUDA array bound to a texture object
(driver API through ``ctypes``: PyTorch exposes no textures), and a Triton
kernel fetches it with the PTX ``tex.3d`` instruction. Each program samples one
block of coefficients at ``ROWS`` consecutive rotations, loading the
frequencies once; where asked (``powers``) it also stores each value's
``re^2 + im^2``, which the scores need, so that no pass reads the values again
to square them (session 24: the final iteration about 5 % faster with the
masking change, ``docs/performance.md``). ``reference_texture``
registers the texture for one reference tensor for the duration of a ``with``
block; inside it ``fourier.sample_rotated`` on that tensor (the same object,
unchanged since) samples through the texture. Outside, or on the CPU, nothing
changes.
"""

import ctypes
import math
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import no_type_check

import torch
from torch import Tensor

from cryorefine.fourier import trilinear_kernels

__all__ = [
    "ReferenceTexture",
    "available",
    "reference_texture",
    "registered_texture",
    "sample_texture",
    "storage_scale",
]

# The launch from bench/fourier_kernel_configs.py on an H200 (session 33): 4.32 ms against
# 4.96 ms for 128 coefficients with 4 warps, the same values bitwise (one per thread)
_BLOCK = 256
_ROWS = 8  # rotations per program
_WARPS = 8
_TEXEL_FORMATS = {torch.float16: 0x10, torch.float32: 0x20}  # CU_AD_FORMAT_HALF, _FLOAT
_DEVICE_MEMORY, _ARRAY_MEMORY = 2, 3  # CUmemorytype
_WRAP, _BORDER = 0, 3  # CUaddress_mode
_LINEAR = 1  # CUfilter_mode
_NORMALISED = 2  # CU_TRSF_NORMALIZED_COORDINATES (wrap-around needs them)
_OUT_OF_MEMORY = 2  # CUDA_ERROR_OUT_OF_MEMORY


class _Array3D(ctypes.Structure):
    _fields_ = [("width", ctypes.c_size_t), ("height", ctypes.c_size_t),
                ("depth", ctypes.c_size_t), ("format", ctypes.c_int),
                ("channels", ctypes.c_uint), ("flags", ctypes.c_uint)]  # fmt: skip


def _copy_fields(side: str) -> list[tuple[str, type]]:
    size, pointer = ctypes.c_size_t, ctypes.c_void_p
    return [(f"{side}_x_bytes", size), (f"{side}_y", size), (f"{side}_z", size),
            (f"{side}_lod", size), (f"{side}_memory_type", ctypes.c_int),
            (f"{side}_host", pointer), (f"{side}_device", ctypes.c_uint64),
            (f"{side}_array", pointer), (f"{side}_reserved", pointer),
            (f"{side}_pitch", size), (f"{side}_height", size)]  # fmt: skip


class _Copy3D(ctypes.Structure):
    _fields_ = [*_copy_fields("src"), *_copy_fields("dst"), ("width_bytes", ctypes.c_size_t),
                ("height", ctypes.c_size_t), ("depth", ctypes.c_size_t)]  # fmt: skip


class _ResourceDesc(ctypes.Structure):  # the union is 32 ints; an array is its first member
    _fields_ = [("type", ctypes.c_int), ("array", ctypes.c_void_p),
                ("rest", ctypes.c_int * 30), ("flags", ctypes.c_uint)]  # fmt: skip


class _TextureDesc(ctypes.Structure):
    _fields_ = [("address_mode", ctypes.c_int * 3), ("filter_mode", ctypes.c_int),
                ("flags", ctypes.c_uint), ("max_anisotropy", ctypes.c_uint),
                ("mipmap_filter_mode", ctypes.c_int), ("mipmap_bias", ctypes.c_float),
                ("min_mipmap_clamp", ctypes.c_float), ("max_mipmap_clamp", ctypes.c_float),
                ("border_colour", ctypes.c_float * 4), ("reserved", ctypes.c_int * 12)]  # fmt: skip


@lru_cache(maxsize=1)
def _driver() -> ctypes.CDLL | None:
    """The CUDA driver library, or None where it cannot be loaded."""
    try:
        return ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None


def _check(status: int, call: str) -> None:
    if status != 0:
        message = ctypes.c_char_p()
        _driver().cuGetErrorString(status, ctypes.byref(message))  # type: ignore[union-attr]
        text = message.value.decode() if message.value else "unknown error"
        raise RuntimeError(f"CUDA driver call {call} failed ({status}): {text}")


def available(tensor: Tensor) -> bool:
    """Whether textures can sample ``tensor`` (a CUDA tensor, Triton and the driver present)."""
    return trilinear_kernels.available(tensor) and _driver() is not None


def _release(texture: int | None, array: int, device: torch.device) -> None:
    driver = _driver()
    assert driver is not None  # a texture was made
    with torch.cuda.device(device):  # the objects belong to this device's context
        torch.cuda.synchronize(device)  # no kernel may still read them
        if texture is not None:
            _check(driver.cuTexObjectDestroy(ctypes.c_uint64(texture)), "cuTexObjectDestroy")
        _check(driver.cuArrayDestroy(ctypes.c_void_p(array)), "cuArrayDestroy")


def storage_scale(reference_ft: Tensor) -> float:
    """The power of two at or above the largest real or imaginary part (1 for zeros, and
    where a value is not finite: those stay as they are)."""
    largest = float(torch.view_as_real(reference_ft).abs().amax()) if reference_ft.numel() else 0.0
    return 2.0 ** math.ceil(math.log2(largest)) if 0 < largest < math.inf else 1.0


class ReferenceTexture:
    """A float16 copy of a complex64 ``(p, p, ph)`` padded half-grid over ``scale``, bound to
    a texture object.

    ``texels=torch.float32`` keeps the values as they are (``scale`` 1, 8 bytes per
    texel: the layout before float16, for comparisons). Freed by ``close`` or when the
    object is collected.
    """

    def __init__(self, reference_ft: Tensor, *, texels: torch.dtype = torch.float16) -> None:
        if not available(reference_ft) or reference_ft.dtype != torch.complex64:
            raise ValueError("a ReferenceTexture needs a complex64 CUDA tensor, Triton and CUDA")
        if texels not in _TEXEL_FORMATS:
            raise ValueError(f"texels must be torch.float16 or torch.float32, got {texels}")
        shape = tuple(reference_ft.shape)
        if len(shape) != 3 or shape[0] != shape[1] or shape[2] != shape[0] // 2 + 1:
            raise ValueError(f"expected a (p, p, p // 2 + 1) half-grid, got shape {shape}")
        driver = _driver()
        half = texels == torch.float16
        self.scale: float = storage_scale(reference_ft) if half else 1.0
        # (p, p, ph, 2) over the scale (a power of two: only the float16 rounding)
        pairs = torch.view_as_real(reference_ft)
        table = (pairs.div(self.scale).to(torch.float16) if half else pairs).contiguous()
        texel_bytes = 2 * table.element_size()
        p, _, ph = reference_ft.shape
        self.shape: tuple[int, int, int] = (int(p), int(p), int(ph))
        self.device = table.device
        array, handle = ctypes.c_void_p(), ctypes.c_uint64()
        with torch.cuda.device(self.device):
            description = _Array3D(ph, p, p, _TEXEL_FORMATS[texels], 2, 0)
            status = driver.cuArray3DCreate_v2(ctypes.byref(array), ctypes.byref(description))
            if status == _OUT_OF_MEMORY:  # torch's allocator may hold the free memory cached
                torch.cuda.empty_cache()
                status = driver.cuArray3DCreate_v2(ctypes.byref(array), ctypes.byref(description))
            _check(status, "cuArray3DCreate")
            try:
                copy = _Copy3D(src_memory_type=_DEVICE_MEMORY, src_device=table.data_ptr(),
                               src_pitch=ph * texel_bytes, src_height=p,
                               dst_memory_type=_ARRAY_MEMORY, dst_array=array,
                               width_bytes=ph * texel_bytes, height=p, depth=p)  # fmt: skip
                stream = ctypes.c_void_p(torch.cuda.current_stream(self.device).cuda_stream)
                _check(driver.cuMemcpy3DAsync_v2(ctypes.byref(copy), stream), "cuMemcpy3DAsync")
                resource = _ResourceDesc(type=0, array=array)  # CU_RESOURCE_TYPE_ARRAY
                sampling = _TextureDesc(filter_mode=_LINEAR, flags=_NORMALISED)
                sampling.address_mode[:] = (_BORDER, _WRAP, _WRAP)  # x beyond ph reads 0
                status = driver.cuTexObjectCreate(
                    ctypes.byref(handle), ctypes.byref(resource), ctypes.byref(sampling), None
                )
                _check(status, "cuTexObjectCreate")
            except RuntimeError:
                _release(None, int(array.value or 0), self.device)  # the array alone
                raise
        self.handle: int = int(handle.value or 0)
        self._finalizer = weakref.finalize(self, _release, self.handle, array.value, self.device)
        self._finalizer.atexit = False  # the driver may be gone by then; the process frees it

    def close(self) -> None:
        """Free the texture and its array (waits for the device first)."""
        self._finalizer()


if trilinear_kernels.triton is not None:
    import triton
    import triton.language as tl

    @triton.jit
    @no_type_check  # the test suite's jaxtyping hook would wrap it; Triton needs the function
    def _fetch(handle, qx, qy, qz, flip, centre, side, width):
        """The texture's trilinear value at folded ``q`` (``q_x >= 0``), conjugated where
        ``flip``: real and imaginary parts. ``centre`` is ``p // 2 + 0.5`` (texel centres
        lie at ``i + 0.5``), ``side`` ``p`` and ``width`` ``ph``, as floats."""
        re, im, _, _ = tl.inline_asm_elementwise(
            "tex.3d.v4.f32.f32 {$0, $1, $2, $3}, [$4, {$5, $6, $7, $7}];",
            "=f,=f,=f,=f,l,f,f,f",
            [handle, (qx + 0.5) / width, (qy + centre) / side, (qz + centre) / side],
            dtype=(tl.float32, tl.float32, tl.float32, tl.float32),
            is_pure=True,
            pack=1,
        )
        return re, tl.where(flip, -im, im)

    @triton.jit
    @no_type_check  # the test suite's jaxtyping hook would wrap it; Triton needs the function
    def _sample(
        texture, rot_ptr, freq_ptr, out_ptr, power_ptr, n_rows, k, p, ph, pad, radius2, scale,
        ROWS: tl.constexpr, BLOCK: tl.constexpr, POWER: tl.constexpr,
    ):  # fmt: skip
        """One block of ``BLOCK`` coefficients at ``ROWS`` consecutive rotations (and their
        squared magnitudes where ``POWER``)."""
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < k
        fx, fy, fz = trilinear_kernels._frequencies(freq_ptr, offs, mask)
        keep = (fx * fx + fy * fy + fz * fz) <= radius2
        centre, side, width = (p // 2).to(tl.float32) + 0.5, p.to(tl.float32), ph.to(tl.float32)
        handle = tl.full([BLOCK], 0, tl.int64) + texture
        for step in tl.static_range(ROWS):
            row = tl.program_id(1) * ROWS + step
            if row < n_rows:
                qx, qy, qz, flip = trilinear_kernels._turned(fx, fy, fz, rot_ptr, row, pad)
                re, im = _fetch(handle, qx, qy, qz, flip, centre, side, width)
                re, im = tl.where(keep, re * scale, 0.0), tl.where(keep, im * scale, 0.0)
                at = row.to(tl.int64) * k + offs
                tl.store(out_ptr + at * 2, re, mask=mask)
                tl.store(out_ptr + at * 2 + 1, im, mask=mask)
                if POWER:
                    tl.store(power_ptr + at, re * re + im * im, mask=mask)


def sample_texture(
    texture: ReferenceTexture,
    rotations: Tensor,
    frequencies: Tensor,
    *,
    padding_factor: int,
    max_radius: float,
    scale: float,
    out: Tensor | None = None,
    powers: Tensor | None = None,
) -> Tensor:
    """``(r, k)`` complex64 values at ``A.T k padding_factor`` (0 beyond ``max_radius``).

    As ``trilinear_kernels.sample_kernel``, through ``texture``; ``frequencies``
    integer ``(k, 3)`` in ``(x, y, z)`` order on the texture's device. Written into
    ``out`` (``trilinear_kernels.output_pairs``) where given. ``powers``: a contiguous
    float32 ``(r, k)`` array that receives ``re^2 + im^2`` of each value as it is
    written (each square and the sum rounded once, or fused), or None.
    """
    p, _, ph = texture.shape
    r, k = rotations.shape[0], frequencies.shape[0]
    out = trilinear_kernels.output_pairs(out, r, k, texture.device)
    if powers is not None and (
        powers.dtype != torch.float32 or tuple(powers.shape) != (r, k) or not powers.is_contiguous()
    ):
        raise ValueError(f"powers must be a contiguous float32 ({r}, {k}) array, got "
                         f"{powers.dtype} {tuple(powers.shape)}")  # fmt: skip
    freq = frequencies.to(torch.int32).contiguous()
    rows = trilinear_kernels._rotation_rows(rotations.to(texture.device))
    limit = trilinear_kernels._MAX_GRID_ROWS * _ROWS  # CUDA's grid y-dimension limit
    with torch.cuda.device(texture.device):  # a texture object is valid on its own GPU only
        for lo in range(0, r if k else 0, limit):
            hi = min(lo + limit, r)
            power = out[lo:hi] if powers is None else powers[lo:hi]  # unused without powers
            _sample[(triton.cdiv(k, _BLOCK), triton.cdiv(hi - lo, _ROWS))](
                texture.handle, rows[lo:hi], freq, out[lo:hi], power, hi - lo, k, p, ph,
                float(padding_factor), float(max_radius) ** 2, float(scale) * texture.scale,
                ROWS=_ROWS, BLOCK=_BLOCK, POWER=powers is not None, num_warps=_WARPS,
            )  # fmt: skip
    return torch.view_as_complex(out)


_registered: dict[int, tuple[weakref.ref, int, ReferenceTexture]] = {}


def registered_texture(reference_ft: Tensor) -> ReferenceTexture | None:
    """The texture ``reference_texture`` holds for this very tensor, if unchanged since."""
    entry = _registered.get(id(reference_ft))
    if entry is None or entry[0]() is not reference_ft or entry[1] != reference_ft._version:
        return None
    return entry[2]


@contextmanager
def reference_texture(reference_ft: Tensor) -> Iterator[ReferenceTexture | None]:
    """Sample ``reference_ft`` through a texture inside the block (nothing where unavailable).

    Yields the texture, or None for tensors textures cannot hold (CPU,
    double precision). The texture is freed on leaving the block; a block
    inside another for the same tensor gives the outer one back on leaving.
    The copy into the texture is queued on the current stream: sample on it.
    """
    if not available(reference_ft) or reference_ft.dtype != torch.complex64:
        yield None
        return
    texture = ReferenceTexture(reference_ft)
    key = id(reference_ft)
    outer = _registered.get(key)  # a block around this one, for the same tensor
    _registered[key] = (weakref.ref(reference_ft), reference_ft._version, texture)
    try:
        yield texture
    finally:
        if outer is None:
            _registered.pop(key, None)
        else:
            _registered[key] = outer
        texture.close()
