"""Which files of a refinement run exist: per iteration, final, maps, particles, solvent mask.

A run is named by its output root ``ROOT`` (``--o Refine3D/job012/run``); its
files carry RELION's names (REFINE_SPEC §3): ``ROOT_itNNN_optimiser.star``,
``ROOT_itNNN_sampling.star``, ``ROOT_itNNN_half1_model.star`` (``ROOT_itNNN_model.star``
for runs that do not split half sets), ``ROOT_itNNN_data.star``, the final
``ROOT_optimiser.star``, ``ROOT_sampling.star``, ``ROOT_model.star``,
``ROOT_data.star``, the final map ``ROOT_class001.mrc`` and ``run.log`` beside them.
A folder given as the root stands for ``FOLDER/run``, RELION's name.
"""

import re
from dataclasses import dataclass, field
from pathlib import Path

from cryorefine.errors import InputError
from cryorefine.io import read_star, resolve_path

__all__ = ["FILE_KINDS", "RunFiles", "command_line_option", "find_run_files", "solvent_mask_name"]

#: Per-iteration STAR files, by kind: the suffix after ``ROOT_itNNN_``.
FILE_KINDS = ("optimiser", "sampling", "half1_model", "model", "data")


@dataclass(frozen=True)
class RunFiles:
    """The files of one run that exist (paths), found by ``find_run_files``.

    Attributes
    ----------
    root
        The output root ``ROOT`` (a path prefix, not a folder).
    numbered
        Kind (``FILE_KINDS``) -> iteration -> ``ROOT_itNNN_<kind>.star``.
    final
        Kind (``optimiser``, ``sampling``, ``model``, ``data``) -> ``ROOT_<kind>.star``.
    final_map
        ``ROOT_class001.mrc`` if it exists.
    iteration_maps
        Iteration -> ``ROOT_itNNN_half1_class001.mrc`` (or ``ROOT_itNNN_class001.mrc``).
    log
        ``run.log`` in the root's folder if it exists.
    """

    root: Path
    numbered: dict[str, dict[int, Path]] = field(default_factory=dict)
    final: dict[str, Path] = field(default_factory=dict)
    final_map: Path | None = None
    iteration_maps: dict[int, Path] = field(default_factory=dict)
    log: Path | None = None

    def iterations(self) -> list[int]:
        """Every iteration number for which some ``ROOT_itNNN_*.star`` file exists, sorted."""
        found: set[int] = set()
        for files in self.numbered.values():
            found.update(files)
        return sorted(found)

    def model_files(self) -> dict[int, Path]:
        """Iteration -> its model file: ``half1_model`` where it exists, else ``model``."""
        return self.numbered.get("model", {}) | self.numbered.get("half1_model", {})

    def latest(self, kind: str) -> Path | None:
        """The final file of ``kind`` if it exists, else that of the last iteration, else None."""
        if kind in self.final:
            return self.final[kind]
        files = self.numbered.get(kind, {})
        return files[max(files)] if files else None


def _numbered(folder: Path, name: str, suffix: str) -> dict[int, Path]:
    pattern = re.compile(rf"^{re.escape(name)}_it(\d{{3,}})_{re.escape(suffix)}$")
    found: dict[int, Path] = {}
    for path in folder.glob(f"{name}_it*_{suffix}"):
        match = pattern.match(path.name)
        if match and path.is_file():
            found[int(match.group(1))] = path
    return found


def find_run_files(run_root: Path | str) -> RunFiles:
    """The files of the run with output root ``run_root`` (a folder stands for ``FOLDER/run``).

    Raises
    ------
    InputError
        No file of a run with that root exists.
    """
    root = Path(run_root)
    if root.is_dir():
        root = root / "run"
    folder, name = root.parent, root.name
    numbered = {kind: _numbered(folder, name, f"{kind}.star") for kind in FILE_KINDS}
    numbered = {kind: files for kind, files in numbered.items() if files}
    final = {
        kind: folder / f"{name}_{kind}.star"
        for kind in ("optimiser", "sampling", "model", "data")
        if (folder / f"{name}_{kind}.star").is_file()
    }
    if not numbered and not final:
        raise InputError(
            f"{run_root}: no refinement run found: expected RELION's files "
            f"{root}_itNNN_optimiser.star, {root}_itNNN_half1_model.star or "
            f"{root}_model.star (give the --o of the run, or its folder)"
        )
    maps = _numbered(folder, name, "half1_class001.mrc") or _numbered(folder, name, "class001.mrc")
    final_map = folder / f"{name}_class001.mrc"
    log = folder / "run.log"
    return RunFiles(
        root=root,
        numbered=numbered,
        final=final,
        final_map=final_map if final_map.is_file() else None,
        iteration_maps=maps,
        log=log if log.is_file() else None,
    )


def command_line_option(optimiser: Path, option: str) -> str | None:
    """The value of ``option`` (e.g. ``--sym``) on the command line in an optimiser file.

    RELION (and cryorefine) write the command line as a comment line ``# --o ...``
    above the first block; None if it is absent or does not hold ``option``.
    """
    pattern = re.compile(rf"(?<!\S){re.escape(option)}\s+(?!--)(\S+)")
    try:
        with optimiser.open(errors="replace") as lines:
            for line in lines:
                if line.strip() and not line.startswith("#"):
                    break
                match = pattern.search(line)
                if line.startswith("# --") and match:
                    return match.group(1)
    except OSError:
        return None
    return None


def solvent_mask_name(optimiser: Path) -> tuple[str | None, Path | None]:
    """The run's ``--solvent_mask``: its name as written, and the file it resolves to.

    Read from ``rlnSolventMaskName`` of ``data_optimiser_general`` (``None``
    means no mask); where the label is absent, from the command line in the
    file's comment lines.
    The name resolves as every path RELION writes (``io.resolve_path``); the
    returned path may not exist (the caller says so).

    Raises
    ------
    InputError
        The optimiser file cannot be read.
    """
    general = read_star(optimiser).get("optimiser_general")
    if isinstance(general, dict) and "rlnSolventMaskName" in general:
        name: str | None = str(general["rlnSolventMaskName"]).strip()
    else:
        name = command_line_option(optimiser, "--solvent_mask")
    if not name or name == "None":
        return None, None
    return name, resolve_path(name, optimiser)
