"""Optimisation sets (``optimisation_set.star``): the file names of a tomography job.

One block of labels (a list block as RELION writes it, or a one-row loop table as
the ``starfile`` package writes it), each naming a file: particles, tomograms,
trajectories, manifolds, the two reference half maps, the mask and the FSC. An
empty value (``""``) means "none".

Relative names are relative to the project directory, which is the current
directory when RELION runs. They resolve as ``paths`` says: the current directory
first, then the folder of the optimisation set and the folders above it (so
``Refine3D/job012/run_optimisation_set.star`` finds ``Refine3D/job012/run_data.star``
from the project directory two levels up, whatever the current directory).
"""

import dataclasses
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

import pandas as pd

from cryorefine.errors import InputError
from cryorefine.io.paths import not_found, resolve_path
from cryorefine.io.star import read_star, write_star

__all__ = [
    "OPTIMISATION_SET_LABELS",
    "OptimisationSet",
    "load_optimisation_set",
    "write_optimisation_set",
]

#: Field of ``OptimisationSet`` -> RELION label.
OPTIMISATION_SET_LABELS: dict[str, str] = {
    "particles_file": "rlnTomoParticlesFile",
    "tomograms_file": "rlnTomoTomogramsFile",
    "trajectories_file": "rlnTomoTrajectoriesFile",
    "manifolds_file": "rlnTomoManifoldsFile",
    "reference_map1": "rlnTomoReferenceMap1File",
    "reference_map2": "rlnTomoReferenceMap2File",
    "reference_mask": "rlnTomoReferenceMaskFile",
    "reference_fsc": "rlnTomoReferenceFscFile",
}


@dataclass(frozen=True)
class OptimisationSet:
    """The files of an optimisation set; ``None`` where an entry is absent or empty.

    Attributes
    ----------
    path
        The file it was read from (``None`` for a new set).
    particles_file, tomograms_file, trajectories_file, manifolds_file
        Resolved paths (module docstring).
    reference_map1, reference_map2, reference_mask, reference_fsc
        Resolved paths of the reference half maps, mask and FSC STAR file.
    entries
        Every label of the file -> its value as written, in file order (kept on writing).
    block_name
        The block's name (RELION writes ``data_``, i.e. ``""``).
    """

    path: Path | None = None
    particles_file: Path | None = None
    tomograms_file: Path | None = None
    trajectories_file: Path | None = None
    manifolds_file: Path | None = None
    reference_map1: Path | None = None
    reference_map2: Path | None = None
    reference_mask: Path | None = None
    reference_fsc: Path | None = None
    entries: dict[str, str] = field(default_factory=dict)
    block_name: str = ""

    def replace(self, **paths: Path | None) -> "OptimisationSet":
        """A copy with some files replaced: ``replace(particles_file=Path("run_data.star"))``."""
        unknown = set(paths) - set(OPTIMISATION_SET_LABELS)
        if unknown:
            raise ValueError(f"unknown optimisation set fields {sorted(unknown)}")
        return dataclasses.replace(self, **paths)  # type: ignore[arg-type]


def load_optimisation_set(
    path: str | PathLike[str], *, check_files: bool = True
) -> OptimisationSet:
    """Read an optimisation set and resolve its file names (module docstring).

    Parameters
    ----------
    path
        The optimisation set STAR file.
    check_files
        Require every named file to exist.

    Raises
    ------
    InputError
        The file is unreadable, has no single block of labels, or (with
        ``check_files``) names a file that does not exist.
    """
    star = Path(path)
    blocks = read_star(star)
    if len(blocks) != 1:
        raise InputError(f"{star}: expected one block of file names, found {len(blocks)}")
    block_name, block = next(iter(blocks.items()))
    if isinstance(block, pd.DataFrame):
        if len(block) != 1:
            raise InputError(f"{star}: data_{block_name} has {len(block)} rows, expected one")
        entries = {str(label): str(block[label].iloc[0]) for label in block.columns}
    else:
        entries = {label: str(value) for label, value in block.items()}
    files: dict[str, Path | None] = {}
    for name, label in OPTIMISATION_SET_LABELS.items():
        raw = entries.get(label, "")
        files[name] = resolve_path(raw, star) if raw else None
        if check_files and files[name] is not None and not files[name].exists():  # type: ignore[union-attr]
            raise InputError(f"{star}: {label} {not_found(raw)}")
    return OptimisationSet(path=star, entries=entries, block_name=block_name, **files)


def write_optimisation_set(optimisation_set: OptimisationSet, path: str | PathLike[str]) -> Path:
    """Write an optimisation set as a list block, other entries kept as they were.

    A file that did not change since loading is written as it was written
    before (e.g. still relative to the project directory) if that name still
    finds it from ``path``; otherwise, and for a new one, as its path.
    Entries set to ``None`` are left out.

    Raises
    ------
    InputError
        ``path`` is the file the set was read from (inputs are never overwritten).
    """
    source = optimisation_set.path
    if source is not None and Path(path).resolve() == source.resolve():
        raise InputError(f"{path}: is the input optimisation set; refusing to overwrite it")
    entries = dict(optimisation_set.entries)
    for name, label in OPTIMISATION_SET_LABELS.items():
        value: Path | None = getattr(optimisation_set, name)
        raw = entries.get(label, "")
        if value is None:
            if raw:
                del entries[label]
            continue
        unchanged = (  # and still naming the same file from where it is written now
            raw
            and optimisation_set.path is not None
            and resolve_path(raw, optimisation_set.path) == value
            and resolve_path(raw, Path(path).absolute()) == value
        )
        entries[label] = raw if unchanged else str(value)
    if not entries:
        raise ValueError("an optimisation set needs at least one file")
    return write_star({optimisation_set.block_name: entries}, path)
