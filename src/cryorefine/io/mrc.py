"""MRC maps, volumes and image stacks (through ``mrcfile``), and RELION image references.

Arrays index ``(z, y, x)`` (a stack: ``(image, y, x)``). The voxel size is the
header's ``cella.x / mx`` in Angstrom, as RELION reads it. Files are written as
RELION writes them (REFINE_SPEC §1.5): mode 2 (float32) or 12 (float16),
``mx, my, mz = nx, ny, nz``, cell = voxel size times the box, origin and
``nxstart`` fields 0, angles 90 degrees, no extended header; ``.mrcs`` files
are marked as image stacks (space group 0), other 3D files as volumes (1).

An image reference ``000012@Extract/job007/stack.mrcs`` names image 12
(1-based) of a stack; a name without ``@`` is the whole file.

Reading is strict (``permissive=False``): a file that is not MRC, a header with
a box of zero or negative size, an unknown mode, or a file shorter than its
header says raises ``InputError`` naming the file. A file longer than its
header says is read (as RELION reads it) and the surplus is logged as a
warning naming the file; ``mrcfile``'s own warnings never reach the caller.
"""

import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from os import PathLike
from pathlib import Path

import mrcfile
import numpy as np
from jaxtyping import Int64, Real

from cryorefine.errors import InputError
from cryorefine.io.atomic import write_atomically

__all__ = [
    "MrcHeader",
    "cached_mrc_header",
    "parse_image_name",
    "read_mrc",
    "read_mrc_header",
    "split_image_names",
    "write_mrc",
]

logger = logging.getLogger(__name__)

_HEADER_BYTES = 1024


@contextmanager
def _mrcfile_warnings_logged(path: Path) -> Iterator[None]:
    """Turn ``mrcfile``'s warnings about the file into one log line each, naming ``path``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for warning in caught:
        if issubclass(warning.category, DeprecationWarning):
            continue  # mrcfile's use of NumPy, not the user's file
        logger.warning("%s: %s", path, warning.message)


@dataclass(frozen=True)
class MrcHeader:
    """What a header says about the data, read without touching the data.

    Attributes
    ----------
    shape
        ``(nz, ny, nx)``; a stack of ``nz`` images, or a volume.
    voxel_size_angst
        ``cella.x / mx`` (0 where the header gives no usable cell: mx or cella.x not positive).
    mode
        MRC data mode (0 int8, 1 int16, 2 float32, 6 uint16, 12 float16).
    is_stack
        Space group 0 with ``nz > 1`` (an image stack rather than a volume).
    data_offset
        Bytes before the data (1024 plus the extended header).
    data_dtype
        NumPy dtype of the data, in the file's byte order.
    """

    shape: tuple[int, int, int]
    voxel_size_angst: float
    mode: int
    is_stack: bool
    data_offset: int
    data_dtype: np.dtype


def read_mrc_header(path: str | PathLike[str]) -> MrcHeader:
    """Read an MRC header and check that the file is long enough for its data.

    Raises
    ------
    InputError
        The file is missing, unreadable, not an MRC file, or truncated.
    """
    mrc_path = _existing(path)
    try:
        with (
            _mrcfile_warnings_logged(mrc_path),
            mrcfile.open(mrc_path, header_only=True, permissive=False) as mrc,
        ):
            header = mrc.header
            nx, ny, nz = int(header.nx), int(header.ny), int(header.nz)
            mode = int(header.mode)
            dtype = mrcfile.utils.dtype_from_mode(mode).newbyteorder(header.mode.dtype.byteorder)
            extended = int(header.nsymbt)
            mx = int(header.mx)
            cell_x = float(header.cella.x)
            ispg = int(header.ispg)
    except (ValueError, OSError) as error:
        raise InputError(f"{mrc_path}: not a readable MRC file ({error})") from error
    if min(nx, ny, nz) < 1 or extended < 0:
        raise InputError(
            f"{mrc_path}: not a readable MRC file: the header gives nx, ny, nz = {nx}, {ny}, "
            f"{nz} and an extended header of {extended} bytes; expected sizes of at least 1 "
            "and an extended header of 0 bytes or more"
        )
    expected = _HEADER_BYTES + extended + nx * ny * nz * np.dtype(dtype).itemsize
    found = os.path.getsize(mrc_path)
    if found < expected:
        raise InputError(
            f"{mrc_path}: truncated MRC file: the header describes {nx}x{ny}x{nz} voxels of "
            f"mode {mode} ({expected} bytes) but the file has {found} bytes"
        )
    voxel = cell_x / mx if mx > 0 and np.isfinite(cell_x) and cell_x > 0 else 0.0
    return MrcHeader(
        shape=(nz, ny, nx),
        voxel_size_angst=voxel,
        mode=mode,
        is_stack=ispg == 0,
        data_offset=_HEADER_BYTES + extended,
        data_dtype=dtype,
    )


@lru_cache(maxsize=2**18)
def _header_of_version(path: Path, modified_ns: int, size: int) -> MrcHeader:
    """``read_mrc_header`` of one version of a file (the key changes when the file does)."""
    return read_mrc_header(path)


def cached_mrc_header(path: Path) -> MrcHeader:
    """The header of ``path``, parsed once per version of the file.

    A refinement reads every particle file in every iteration; RELION-4 writes
    one file per pseudo-subtomogram (and one per CTF volume), so parsing each
    header again would cost more than reading its data.
    """
    try:
        status = os.stat(path)
    except OSError:
        return read_mrc_header(path)  # names the problem
    return _header_of_version(path, status.st_mtime_ns, status.st_size)


def read_mrc(
    path: str | PathLike[str], *, mmap: bool = False
) -> tuple[Real[np.ndarray, "..."], float]:
    """Read an MRC file: its data and its voxel size in Angstrom.

    Parameters
    ----------
    path
        The MRC file (map, volume, image or stack).
    mmap
        Map the file into memory instead of reading it: the array keeps the
        file's data type (e.g. float16) and is read-only. Otherwise a float32
        copy is returned.

    Returns
    -------
    data, voxel_size_angst
        ``(z, y, x)``, ``(image, y, x)`` or ``(y, x)`` array; ``cella.x / mx``.

    Raises
    ------
    InputError
        The file is missing, unreadable, not an MRC file or truncated.
    """
    header = read_mrc_header(path)
    try:
        with _mrcfile_warnings_logged(Path(path)):
            if mmap:
                with mrcfile.mmap(path, mode="r", permissive=False) as mrc:
                    data: np.ndarray = mrc.data
            else:
                with mrcfile.open(path, permissive=False) as mrc:
                    data = np.asarray(mrc.data, dtype=np.float32).copy()
    except (ValueError, OSError) as error:
        raise InputError(f"{path}: not a readable MRC file ({error})") from error
    return data, header.voxel_size_angst


def write_mrc(
    path: str | PathLike[str],
    data: Real[np.ndarray, "..."],
    *,
    voxel_size_angst: float,
    float16: bool = False,
) -> Path:
    """Write a 2D image, an image stack or a volume with RELION's header, atomically.

    Parameters
    ----------
    path
        Output file; a ``.mrcs`` name marks a 3D array as an image stack.
    data
        ``(y, x)`` or ``(z, y, x)`` (stack: ``(image, y, x)``).
    voxel_size_angst
        Written as the cell: ``cella = voxel_size_angst * (nx, ny, nz)``.
    float16
        Write mode 12 (half precision) instead of mode 2 (float32).
    """
    if data.ndim not in (2, 3):
        raise ValueError(f"MRC data must be 2D or 3D, got shape {data.shape}")
    if not voxel_size_angst > 0:
        raise ValueError(f"voxel_size_angst must be positive, got {voxel_size_angst}")
    target = Path(path)
    cell = voxel_size_angst * max(data.shape)
    if not cell < float(np.finfo(np.float32).max):  # the header's cell is float32
        raise InputError(
            f"{target}: a voxel size of {voxel_size_angst:g} A makes a cell of {cell:g} A, "
            "beyond what an MRC header (float32) holds"
        )
    values = np.ascontiguousarray(data, dtype=np.float16 if float16 else np.float32)

    def write(partial: Path) -> None:
        mrc = mrcfile.new(partial, overwrite=True)
        try:
            mrc.set_data(values)
            if values.ndim == 3 and target.suffix == ".mrcs":
                mrc.set_image_stack()
            header = mrc.header
            nz = 1 if values.ndim == 2 else values.shape[0]
            header.mx, header.my, header.mz = values.shape[-1], values.shape[-2], nz
            header.cella = (
                voxel_size_angst * values.shape[-1],
                voxel_size_angst * values.shape[-2],
                voxel_size_angst * nz,
            )
            header.cellb = (90.0, 90.0, 90.0)
            header.origin = (0.0, 0.0, 0.0)
            header.nxstart = header.nystart = header.nzstart = 0
            mrc.close()
        except BaseException:
            # a failed flush (full disk) leaves mrcfile's file object open: close it here
            stream = getattr(mrc, "_iostream", None)
            if stream is not None:
                stream.close()
            raise

    return write_atomically(target, write)


def parse_image_name(name: str) -> tuple[int | None, str]:
    """``"000012@stack.mrcs"`` -> ``(12, "stack.mrcs")``; ``"map.mrc"`` -> ``(None, "map.mrc")``.

    Raises
    ------
    InputError
        The part before ``@`` is not a positive whole number, or the path is empty.
    """
    indices, paths = split_image_names([name])
    if indices[0] < 0:
        raise InputError(
            f"image name {name!r}: expected INDEX@FILE with INDEX a positive whole number "
            "(1-based), or a file name"
        )
    return (int(indices[0]) or None), paths[0]


def split_image_names(names: Sequence[str]) -> tuple[Int64[np.ndarray, " b"], list[str]]:
    """Split many image references at once.

    Returns
    -------
    indices, paths
        1-based image index per name; 0 where the name has no ``@`` (the
        whole file); -1 where the reference is malformed (index not a
        positive whole number, or empty path). A RELION file-type suffix
        ``:mrc`` or ``:mrcs`` (e.g. ``ctf_001.mrc:mrc``) is not part of the path.
    """
    indices = np.zeros(len(names), dtype=np.int64)
    paths: list[str] = []
    for i, name in enumerate(names):
        text = str(name)
        for hint in (":mrcs", ":mrc"):
            text = text.removesuffix(hint)
        head, at, tail = text.partition("@")
        if not at:
            paths.append(text)
            indices[i] = 0 if text else -1
            continue
        paths.append(tail)
        indices[i] = int(head) if head.isdigit() and int(head) > 0 and tail else -1
    return indices, paths


def _existing(path: str | PathLike[str]) -> Path:
    mrc_path = Path(path)
    if not mrc_path.is_file():
        what = "is a folder, not a file" if mrc_path.is_dir() else "file does not exist"
        raise InputError(f"{mrc_path}: {what}")
    return mrc_path
