"""``--continue``: a run recovered from its ``ROOT_itNNN_optimiser.star``, and which one to take.

An iteration's files are written optimiser file last (``run_files``), so an
optimiser file whose named files (data, sampling, both half models, their
maps) are all there marks a finished iteration; ``last_finished_iteration``
finds the newest one after a run was stopped, even by SIGKILL while writing.
``read_continue`` recovers the options (command-line comment and labels), the
state (optimiser and sampling files) and both half models (model files and maps).
"""

import dataclasses
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from cryorefine.errors import InputError
from cryorefine.io import read_star, resolve_path
from cryorefine.refine.model import HalfSetModel, RefineState
from cryorefine.refine.model_star import half_model_from_star
from cryorefine.refine.options import COMMAND_LINE_FLAGS, RefineOptions
from cryorefine.refine.run_state import (
    options_from_optimiser,
    state_from_optimiser,
    state_from_sampling,
)

logger = logging.getLogger(__name__)

__all__ = [
    "CONTINUE_OPTIONS",
    "ContinuedRun",
    "continued_options",
    "last_finished_iteration",
    "output_root_of",
    "read_continue",
]


@dataclass(frozen=True)
class ContinuedRun:
    """Everything ``read_continue`` recovers: options, state, both half models, the data file."""

    optimiser_file: Path
    options: RefineOptions
    state: RefineState
    half_models: tuple[HalfSetModel, HalfSetModel]
    data_file: Path


def _comments(path: Path) -> list[str]:
    lines = []
    for line in path.read_text().splitlines():
        if line.startswith("data_"):
            break
        if line.startswith("#"):
            lines.append(line)
    return lines


_NAMED = ("rlnModelStarFile", "rlnModelStarFile2", "rlnOrientSamplingStarFile")


def _named_file(
    block: Mapping[str, object], label: str, star: Path, *, must_exist: bool = True
) -> Path:
    """The file under ``label`` of an optimiser block; ``InputError`` if it is not there."""
    if label not in block:
        raise InputError(f"{star}: data_optimiser_general: label {label} is missing")
    path = resolve_path(str(block[label]), star)
    if must_exist and not path.is_file():
        raise InputError(
            f"{star}: {label} names {block[label]}, which does not exist: this iteration's "
            "files are incomplete (was the run stopped while writing them?); continue from "
            "the iteration before"
        )
    return path


def _split_block(star: Path, *, named: tuple[str, ...] = _NAMED) -> Mapping[str, object]:
    block = read_star(star).get("optimiser_general")
    if not isinstance(block, dict):
        raise InputError(f"{star}: no data_optimiser_general list block; not an optimiser file")
    if not block.get("rlnDoSplitRandomHalves") or "rlnModelStarFile2" not in block:
        raise InputError(
            f"{star}: rlnDoSplitRandomHalves is 0 (the final file of a finished run, or not a "
            f"gold-standard refinement); continue from a run_itNNN_optimiser.star instead"
        )
    for label in named:
        _named_file(block, label, star)
    return block


def last_finished_iteration(output_root: Path | str) -> Path | None:
    """The newest ``ROOT_itNNN_optimiser.star`` of ``output_root`` whose files are all there.

    An iteration's optimiser file is written after its other files; one that
    names a missing file (a run stopped while writing) is passed over. None if
    no iteration has finished.
    """
    root = Path(output_root)
    found = sorted(root.parent.glob(f"{root.name}_it[0-9][0-9][0-9]_optimiser.star"))
    for star in reversed(found):
        try:
            _split_block(star, named=(*_NAMED, "rlnExperimentalDataStarFile"))
        except InputError:
            continue
        return star
    return None


def read_continue(path: Path | str, *, device: torch.device | None = None) -> ContinuedRun:
    """Recover a run from its ``ROOT_itNNN_optimiser.star`` (``--continue``).

    The data file, the sampling file, both half model files and their maps are
    found through the names in the optimiser file (``io.resolve_path``: project
    directory first, then the folders of the file).

    Raises
    ------
    InputError
        The file is not an optimiser file of a split (gold-standard) iteration,
        or a model or sampling file it names is missing (``last_finished_iteration``
        finds the last complete iteration) or malformed.
    """
    star = Path(path)
    block = _split_block(star)
    comments = _comments(star)
    options = options_from_optimiser(block, comments, path=star)
    fields = state_from_optimiser(block, comments, path=star)
    sampling_file = _named_file(block, "rlnOrientSamplingStarFile", star)
    fields |= state_from_sampling(read_star(sampling_file), path=sampling_file)
    models, generals = [], []
    for half, label in ((1, "rlnModelStarFile"), (2, "rlnModelStarFile2")):
        model, general = half_model_from_star(
            _named_file(block, label, star), half_set=half, device=device
        )
        models.append(model)
        generals.append(general)
    run = generals[0]
    fields.setdefault("coarse_size", run.current_size)
    state = RefineState(
        current_resolution_inv_angst=run.current_resolution_inv_angst,
        current_size=run.current_size,
        local_searches=run.local_searches,
        sigma_rot_deg=run.sigma_rot_deg,
        sigma_tilt_deg=run.sigma_tilt_deg,
        sigma_psi_deg=run.sigma_psi_deg,
        **fields,  # type: ignore[arg-type]
    )
    options = dataclasses.replace(
        options, tau2_fudge=run.tau2_fudge, pad=run.padding_factor, r_min_nn=run.r_min_nn
    )
    # the data file is read by the caller, which names it if it is missing
    data_file = _named_file(block, "rlnExperimentalDataStarFile", star, must_exist=False)
    return ContinuedRun(star, options, state, (models[0], models[1]), data_file)


def output_root_of(optimiser_star: Path | str) -> Path:
    """The run's output root (``--o``) of ``ROOT_itNNN_optimiser.star``: as RELION, a continued
    run writes next to the optimiser file it continues from."""
    return Path(re.sub(r"_it\d+_optimiser\.star$", "", str(optimiser_star)))


#: Options that a command line given with ``--continue`` replaces: those of RELION's
#: parseContinue that are options here (the sampling it also reads is the run's state).
CONTINUE_OPTIONS = (
    "iter",
    "tau2_fudge",
    "solvent_mask",
    "solvent_mask2",
    "particle_diameter",
    "flatten_solvent",
    "oversampling",
    "auto_local_healpix_order",
    "auto_ignore_angles",
    "auto_resol_angles",
    "perturb",
    "norm",
    "scale",
    "output_root",
)

#: RELION's parseContinue sets these from whether the flag is on the new command line.
_FLAGS_OF_THE_NEW_LINE = ("auto_ignore_angles", "auto_resol_angles")


def continued_options(
    run: ContinuedRun, given: RefineOptions, names: frozenset[str] | None = None
) -> RefineOptions:
    """The options of a continued run: its own, with those of ``CONTINUE_OPTIONS`` that the
    command line gave put in their place.

    ``names``: the options on the command line (``cli.refine`` records them); None
    (from Python) takes those whose value differs from ``RefineOptions``' default.
    From a command line, ``--auto_ignore_angles`` and ``--auto_resol_angles`` are
    on only if given again (RELION).
    Outputs go under the continued run's root unless ``--o`` names another
    (RELION then appends ``_ctN`` to an unchanged root; here the root stays, so
    that a killed run's files go on in one series). A new ``--iter`` lifts the
    auto-refine limit (``auto_iter_max``) back to its default. Other options
    given are logged as ignored.
    """
    defaults = RefineOptions()
    if names is None:
        taken = {n for n in CONTINUE_OPTIONS if getattr(given, n) != getattr(defaults, n)}
    else:
        taken = set(names) & set(CONTINUE_OPTIONS)
        ignored = sorted(set(names) - set(CONTINUE_OPTIONS) - {"input_particles", "gpu"})
        if ignored:
            flags = ", ".join(COMMAND_LINE_FLAGS[name] for name in ignored)
            logger.warning("--continue: %s kept from the run (a continuation does not change it)",
                           flags)  # fmt: skip
    changed = {name: getattr(given, name) for name in taken}
    if names is not None:
        changed |= {name: name in names for name in _FLAGS_OF_THE_NEW_LINE}
        dropped = [COMMAND_LINE_FLAGS[n] for n in _FLAGS_OF_THE_NEW_LINE
                   if getattr(run.options, n) and n not in names]  # fmt: skip
        if dropped:
            logger.warning("--continue: %s was on in the run and is off now, as in RELION "
                           "(give it again to keep it)", ", ".join(dropped))  # fmt: skip
    if "iter" in changed:
        changed["auto_iter_max"] = defaults.auto_iter_max
    changed.setdefault("output_root", output_root_of(run.optimiser_file))
    return dataclasses.replace(run.options, input_particles=Path(run.data_file), **changed)
