"""Outputs written whole or not at all: write a hidden partial file, then rename.

A run killed at any moment (even by SIGKILL) leaves every output it had
finished whole under its name, and at most one hidden ``.NAME.partial`` file,
which no reader takes for an output. A full disk or an unwritable folder is
the user's ``InputError`` naming the file; what was at the path before stays.
"""

import os
from collections.abc import Callable
from pathlib import Path

from cryorefine.errors import InputError

__all__ = ["make_output_folder", "write_atomically"]


def write_atomically(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Write ``path`` through ``write(partial_path)``, then rename it into place.

    A reader never sees a half-written file under ``path``: the content goes to
    ``.NAME.partial`` in the same folder and ``os.replace`` (atomic on one file
    system) gives it its name. If ``write`` fails, the partial file is removed
    and whatever was at ``path`` before is left untouched.

    Raises
    ------
    InputError
        The folder does not exist or cannot be written, or the disk is full.
    """
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise InputError(f"{target}: output folder {folder} {what}")
    partial = folder / f".{target.name}.partial"
    try:
        write(partial)
        os.replace(partial, target)
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise InputError(f"{target}: cannot write ({error.strerror or error})") from error
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return target


def make_output_folder(folder: str | os.PathLike[str], *, option: str) -> Path:
    """Create ``folder`` (and its parents) for the outputs named by ``option``, e.g. ``--o``.

    Raises
    ------
    InputError
        A part of the path is a file, or the folder cannot be created
        (permissions, a read-only or full file system); the message names
        ``option`` and the folder.
    """
    target = Path(folder)
    try:
        target.mkdir(parents=True, exist_ok=True)
    except FileExistsError as error:
        raise InputError(
            f"{option}: cannot create the output folder {target}: {target} is a file"
        ) from error
    except OSError as error:
        reason = error.strerror or str(error)
        raise InputError(
            f"{option}: cannot create the output folder {target} ({reason})"
        ) from error
    return target
