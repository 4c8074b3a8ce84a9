"""Outputs written whole or not at all: write a hidden partial file, then rename."""

import os
from collections.abc import Callable
from pathlib import Path

from cryorefine.errors import InputError

__all__ = ["write_atomically"]


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
        raise InputError(f"{target}: output folder {folder} does not exist")
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
