"""Where relative paths written inside STAR files point.

RELION writes paths relative to the project directory and runs with the
project directory as the current directory. We look for a relative path:

1. in the current directory (RELION's own reading);
2. in the folder of the STAR file that names it;
3. in each folder above that one, nearest first (``Refine3D/job074/run_data.star``
   names ``Extract/job071/...``: found two levels up, in the project directory).

The first folder in which the path exists wins. Where it exists nowhere, the
path is taken relative to the current directory, as RELION would, and the
caller reports it as missing. Absolute paths are used as they are.
"""

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

__all__ = [
    "find_base_folder",
    "names_from_project_directory",
    "not_found",
    "resolve_path",
    "search_folders",
]


def search_folders(star_path: Path) -> list[Path]:
    """Folders searched for relative paths named in ``star_path``, in order (see module)."""
    folders = [Path.cwd()]
    here = star_path.resolve().parent
    folders.extend([here, *here.parents])
    unique: list[Path] = []
    for folder in folders:
        if folder not in unique:
            unique.append(folder)
    return unique


def resolve_path(name: str, star_path: Path) -> Path:
    """The file that ``name``, written in ``star_path``, refers to (see module)."""
    path = Path(name)
    if path.is_absolute():
        return path
    for folder in search_folders(star_path):
        if (folder / path).exists():
            return folder / path
    return Path.cwd() / path


def find_base_folder(names: Sequence[str], star_path: Path) -> Path:
    """One folder for many relative names: the first where the first relative name exists.

    Used for the image files of a particle set, so that all of them resolve
    against one folder (checked one by one by the caller). The current
    directory where none is found.
    """
    first = next((name for name in names if not Path(name).is_absolute()), None)
    if first is None:
        return Path.cwd()
    for folder in search_folders(star_path):
        if (folder / first).exists():
            return folder
    return Path.cwd()


def not_found(name: str, base: Path | None = None) -> str:
    """Message end for a file that does not exist: the name as written, and where we looked."""
    if Path(name).is_absolute():
        return f"{name} does not exist"
    if base is not None:
        return f"{name!r} does not exist in {base} (where the first one was found)"
    return (
        f"{name!r} does not exist in the current directory ({Path.cwd()}), beside the "
        "STAR file or in the folders above it"
    )


def names_from_project_directory(table: pd.DataFrame, base: Path) -> pd.DataFrame:
    """The particle table with image names valid from the current (project) directory.

    Names in a STAR file are read relative to the project directory, as
    RELION does; a table whose images were found (in ``base``) beside its STAR file (or a
    folder above it) gets names that include that folder, so that the new
    file, written anywhere, still finds them.
    """
    if base.resolve() == Path.cwd().resolve():
        return table
    prefix = os.path.relpath(base.resolve(), Path.cwd().resolve())
    table = table.copy()
    for label in ("rlnImageName", "rlnCtfImage"):
        if label not in table.columns:
            continue
        renamed = []
        for name in table[label].astype(str):
            index, path = name.split("@", 1) if "@" in name else ("", name)
            full = path if os.path.isabs(path) else os.path.join(prefix, path)
            renamed.append(f"{index}@{full}" if index else full)
        table[label] = renamed
    return table
