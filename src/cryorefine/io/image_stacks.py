"""Many particle images read at once: one file per particle read in parallel, headers cached.

RELION-4 writes one file per pseudo-subtomogram and one per CTF volume: a batch
of particles is a batch of files. Their headers are parsed once per file
version (``mrc.cached_mrc_header``); the data are read at the header's offset and
in its byte order, by a pool of threads (reads release the GIL), optionally
straight into a caller's buffer (e.g. pinned memory for a device copy).
"""

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from os import PathLike
from pathlib import Path

import numpy as np
from jaxtyping import Float32, Real

from cryorefine.errors import InputError
from cryorefine.io.mrc import _existing, cached_mrc_header

__all__ = ["read_image", "read_images", "stored_image_layout"]


def stored_image_layout(path: str | PathLike[str], index: int) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and stored dtype of image ``index`` (1-based; 0 = the whole file) of ``path``.

    From the header, parsed once per file version: what a buffer for
    ``read_images(..., out=)`` needs.
    """
    header = cached_mrc_header(Path(path))
    nz, ny, nx = header.shape
    shape = (nz, ny, nx) if index == 0 and nz > 1 else (ny, nx)
    return shape, np.dtype(header.data_dtype)


def read_images(
    paths: Sequence[str | PathLike[str]],
    indices: Sequence[int] | np.ndarray,
    *,
    out: np.ndarray | None = None,
) -> Real[np.ndarray, "b ..."]:
    """Images ``indices[i]`` (1-based; 0 = whole file) of ``paths[i]``, stacked, float32.

    Each distinct file is memory-mapped once and only the requested images are
    read. All requested images must have one shape. With ``out`` (shape
    ``(len(paths), *image_shape)``, any real dtype, e.g. a pinned float16 buffer
    for a host-to-device copy) the images are written into it, by the reading
    threads, and it is returned: no float32 copy and no stacking.

    Raises
    ------
    InputError
        A file is missing, not an MRC file or truncated; an index is beyond its
        stack; the images differ in shape.
    """
    wanted = np.asarray(indices, dtype=np.int64)
    if len(paths) != len(wanted):
        raise ValueError(f"{len(paths)} paths but {len(wanted)} indices")
    by_file: dict[Path, list[int]] = {}
    for position, name in enumerate(paths):
        by_file.setdefault(Path(name), []).append(position)
    images: list[np.ndarray | None] = [None] * len(wanted)
    files = list(by_file)
    parallel = len(files) >= _PARALLEL_FILES  # one file per particle (RELION-4)
    if parallel:
        for file in files:  # headers first, here: mrcfile's warnings are caught process-wide
            cached_mrc_header(file)
    if out is not None:
        _check_out(out, files, wanted, by_file)

        def into(file: Path) -> None:
            positions = by_file[file]
            if _read_whole_into(file, wanted[positions], out[positions[0]]):
                for position in positions[1:]:  # the same file requested again
                    out[position] = out[positions[0]]
                return
            read = _read_from_file(file, wanted[positions], keep_dtype=True)
            for position, image in zip(positions, read, strict=True):
                out[position] = image

        if parallel:
            list(_reader_pool().map(into, files))
        else:
            for file in files:
                into(file)
        return out
    if parallel:
        read = list(_reader_pool().map(lambda f: _read_from_file(f, wanted[by_file[f]]), files))
    else:
        read = [_read_from_file(file, wanted[by_file[file]]) for file in files]
    for file, file_images in zip(files, read, strict=True):
        for position, image in zip(by_file[file], file_images, strict=True):
            images[position] = image
    shapes = {image.shape for image in images if image is not None}
    if len(shapes) > 1:
        raise InputError(f"images of different shapes requested together: {sorted(shapes)}")
    return np.stack([image for image in images if image is not None])


_PARALLEL_FILES = 8


def _check_out(
    out: np.ndarray, files: list[Path], wanted: np.ndarray, by_file: dict[Path, list[int]]
) -> None:
    """``out`` must hold one image of the files' shape per requested image."""
    header = cached_mrc_header(files[0])
    first = wanted[by_file[files[0]][0]]
    nz, ny, nx = header.shape
    shape = (nz, ny, nx) if first == 0 and nz > 1 else (ny, nx)
    if out.shape != (len(wanted), *shape):
        raise InputError(
            f"{files[0]}: images of shape {shape} do not fit an output of shape {out.shape}"
        )


READER_THREADS = 4
"""Threads that read particle files. Reads release the GIL, so a few overlap their
page-cache copies; more took the host from the E-step running beside them: on an H100
with 16 host cores, 16 threads reading the next batch made the masking of the current
one (a host-paced chain of small launches) 3-4 times slower."""


@lru_cache(maxsize=1)
def _reader_pool() -> ThreadPoolExecutor:
    """The pool of ``READER_THREADS`` threads (at most the host's cores) reading files."""
    return ThreadPoolExecutor(max_workers=min(READER_THREADS, os.cpu_count() or 1))


def _read_whole_into(path: Path, indices: np.ndarray, row: np.ndarray) -> bool:
    """Read the whole file's data straight into ``row``; False where that cannot be done.

    Done when the whole file is requested (``indices`` all 0) and ``row`` is a
    C-contiguous array of the file's shape and stored dtype (byte order
    included): one copy from the page cache, made by the system with the GIL
    released, instead of a read into a fresh array and a second copy.
    """
    shape, stored = stored_image_layout(path, 0)
    if not (indices == 0).all() or row.shape != shape:
        return False
    if row.dtype != stored or not row.flags.c_contiguous:
        return False
    header = cached_mrc_header(path)
    target = memoryview(row).cast("B")
    try:
        with open(path, "rb") as stream:
            stream.seek(header.data_offset)
            count = stream.readinto(target)
    except OSError as error:
        raise InputError(f"{path}: not a readable MRC file ({error})") from error
    if count != row.nbytes:
        raise InputError(
            f"{path}: not a readable MRC file (expected {row.nbytes} data bytes, found {count})"
        )
    return True


def _read_from_file(
    path: Path, indices: np.ndarray, *, keep_dtype: bool = False
) -> list[np.ndarray]:
    """Images ``indices`` (1-based, 0 = whole file) of one file, through one memory map.

    float32 copies, or with ``keep_dtype`` views in the file's own dtype.
    """
    dtype = None if keep_dtype else np.float32
    header = cached_mrc_header(path)
    n_images = header.shape[0]
    beyond = indices[(indices < 0) | (indices > n_images)]
    if len(beyond):
        raise InputError(
            f"{path}: image {int(beyond[0])} requested but the stack holds {n_images} "
            "image(s) (indices are 1-based)"
        )
    # The data are read at the offset and in the dtype of the header mrcfile parsed.
    nz, ny, nx = header.shape
    try:
        if (indices == 0).all():
            count = nz * ny * nx
            data = np.fromfile(path, header.data_dtype, count, offset=header.data_offset)
            if data.size != count:
                raise ValueError(f"expected {count} values, found {data.size}")
            whole = data.reshape((nz, ny, nx) if nz > 1 else (ny, nx))
            return [whole if keep_dtype else whole.astype(np.float32)] * len(indices)
        stack = np.memmap(
            path, header.data_dtype, mode="r", offset=header.data_offset, shape=(nz, ny, nx)
        )
        volume = stack if nz > 1 else stack[0]
        return [np.array(volume if i == 0 else stack[i - 1], dtype=dtype) for i in indices]
    except (ValueError, OSError) as error:
        raise InputError(f"{path}: not a readable MRC file ({error})") from error


def read_image(path: str | PathLike[str], index: int | None = None) -> Float32[np.ndarray, "..."]:
    """One image of a stack (1-based ``index``), or the whole file, as float32.

    The file is memory-mapped: only the requested image is read from disk.

    Raises
    ------
    InputError
        The file is missing, not an MRC file, truncated, or has fewer images than ``index``.
    """
    wanted = np.array([0 if index is None else index], dtype=np.int64)
    if index is not None and index < 1:
        raise InputError(f"{path}: image index {index} is not 1-based (the first image is 1)")
    return _read_from_file(_existing(path), wanted)[0]
