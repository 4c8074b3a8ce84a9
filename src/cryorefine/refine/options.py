"""relion_refine's options as one frozen dataclass, and its command line both ways.

Field names are RELION's option names (``--ini_high`` is ``ini_high``), except
the four files named by one-letter options: ``--i`` ``input_particles``,
``--ios`` ``optimisation_set``, ``--ref`` ``reference``, ``--o``
``output_root`` (``COMMAND_LINE_FLAGS`` holds every field's flag). Defaults are
RELION's (REFINE_SPEC §4.1), except ``auto_refine`` and
``split_random_halves``, which cryorefine's refine always does. Units as
RELION: ``offset_range`` and ``offset_step`` in pixels, ``offset`` (initial
offset sigma), ``ini_high``, ``particle_diameter`` and
``low_resol_join_halves`` in Angstrom, angles in degrees.

``to_command_line`` writes the options as RELION's command line (the second
comment line of ``run_itNNN_optimiser.star``); ``options_from_command_line``
reads such a line back, RELION's own included, skipping the flags it does not
know (``--pipeline_control``, ``--scratch_dir``...).
"""

import dataclasses
import math
import shlex
import types
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryorefine.errors import InputError

__all__ = [
    "COMMAND_LINE_FLAGS",
    "RefineOptions",
    "check_option_ranges",
    "options_from_command_line",
]


@dataclass(frozen=True)
class RefineOptions:
    """Every relion_refine option the refine engine reads (module docstring for names, units)."""

    # files
    input_particles: Path | None = None
    optimisation_set: Path | None = None
    tomograms: Path | None = None
    trajectories: Path | None = None
    reference: Path | None = None
    output_root: Path | None = None
    solvent_mask: Path | None = None
    solvent_mask2: Path | None = None
    # kind of run
    auto_refine: bool = True
    split_random_halves: bool = True
    firstiter_cc: bool = False
    trust_ref_size: bool = False
    # reference and regularisation
    ini_high: float = -1.0
    ref_angpix: float = -1.0
    pad: int = 2
    sym: str = "C1"
    tau2_fudge: float = 1.0
    r_min_nn: int = 10
    minres_map: int = 5
    dont_skip_gridding: bool = False
    gridding_iter: int = 10
    # masks
    particle_diameter: float = -1.0
    maskedge: int = 5
    zero_mask: bool = False
    flatten_solvent: bool = False
    solvent_correct_fsc: bool = False
    # CTF and grey scale
    ctf: bool = False
    ctf_intact_first_peak: bool = False
    ctf3d_not_squared: bool = False
    subtomo_multi_thr: float = 0.01
    subtomo_noise_multiplicity: bool = False
    norm: bool = False
    scale: bool = False
    # sampling
    healpix_order: int = 2
    psi_step: float = -1.0
    oversampling: int = 1
    offset_range: float = 6.0
    offset_step: float = 2.0
    offset: float = 10.0
    perturb: float = 0.5
    limit_tilt: float = -91.0
    sigma_ang: float = -1.0
    sigma_rot: float = -1.0
    sigma_tilt: float = -1.0
    sigma_psi: float = -1.0
    adaptive_fraction: float = 0.999
    coarse_size: int = -1
    # auto-refine
    auto_local_healpix_order: int = 4
    auto_ignore_angles: bool = False
    auto_resol_angles: bool = False
    maximum_angular_sampling: float = 0.0
    minimum_angular_sampling: float = 0.0
    low_resol_join_halves: float = -1.0
    incr_size: int = 10
    min_sigma2_offset: float = 2.0
    fix_sigma_noise: bool = False
    fix_sigma_offset: bool = False
    nr_parts_sigma2noise: int = -1
    sigma2_fudge: float = 1.0
    iter: int = -1
    auto_iter_max: int = 999
    random_seed: int = -1
    # resources
    pool: int = 1
    j: int = 1
    gpu: str | None = None

    def to_command_line(self) -> list[str]:
        """RELION-style tokens for the options that differ from the defaults, ``--o`` first.

        Booleans become bare flags, ``gpu = ""`` a bare ``--gpu``, ``None`` is
        left out. Floats are written with ``repr``, so they read back exactly.
        """
        defaults = RefineOptions()
        tokens: list[str] = []
        names = [field.name for field in dataclasses.fields(self)]
        first = ["output_root", "auto_refine", "split_random_halves"]  # RELION's GUI order
        for name in first + [name for name in names if name not in first]:
            value, default = getattr(self, name), getattr(defaults, name)
            flag = COMMAND_LINE_FLAGS[name]
            if value is None or (value == default and name not in _ALWAYS_WRITTEN):
                continue
            if isinstance(value, bool):
                if value or default:
                    tokens.append(flag if value else f"--no_{flag[2:]}")
            elif name == "gpu" and value == "":
                tokens.append(flag)
            else:
                tokens.extend([flag, repr(value) if isinstance(value, float) else str(value)])
        return tokens

    def command_line_text(self) -> str:
        """``to_command_line`` joined into one shell-quoted line."""
        return " ".join(shlex.quote(token) for token in self.to_command_line())


#: Field of ``RefineOptions`` -> relion_refine flag.
COMMAND_LINE_FLAGS: dict[str, str] = {
    field.name: f"--{field.name}" for field in dataclasses.fields(RefineOptions)
} | {
    "input_particles": "--i",
    "optimisation_set": "--ios",
    "reference": "--ref",
    "output_root": "--o",
}

_FIELD_OF_FLAG = {flag: name for name, flag in COMMAND_LINE_FLAGS.items()}
_ALWAYS_WRITTEN = frozenset({"output_root", "auto_refine", "split_random_halves", "sym"})


def _kind(name: str) -> type:
    """``bool``, ``int``, ``float``, ``str`` or ``Path`` of a field (``X | None`` gives ``X``)."""
    annotation = RefineOptions.__dataclass_fields__[name].type
    if isinstance(annotation, types.UnionType):
        annotation = next(t for t in annotation.__args__ if t is not type(None))
    assert isinstance(annotation, type)
    return annotation


def _convert(name: str, flag: str, values: list[str], source: str) -> object:
    kind = _kind(name)
    if kind is bool:
        return True
    if name == "gpu":
        return " ".join(values)
    if len(values) != 1:
        raise InputError(f"{source}: option {flag} needs one value, found {values or 'none'}")
    try:
        return kind(values[0])
    except ValueError as error:
        raise InputError(
            f"{source}: option {flag} is {values[0]!r}, expected {kind.__name__}"
        ) from error


def options_from_command_line(
    tokens: Sequence[str] | str, *, base: RefineOptions | None = None, source: str = "command line"
) -> RefineOptions:
    """Options from relion_refine tokens (or a line), starting from ``base`` (default options).

    Flags not in ``COMMAND_LINE_FLAGS`` are skipped with their values;
    ``--no_X`` switches a boolean ``X`` off (RELION's ``--no_norm``...);
    ``--tau2_fudge`` of 0 or less means "not given" (1), as in RELION.

    Raises
    ------
    InputError
        A known option with a missing or malformed value (``source`` names the file).
    """
    words = shlex.split(tokens) if isinstance(tokens, str) else list(tokens)
    values: dict[str, Any] = {}
    index = 0
    while index < len(words):
        flag = words[index]
        end = index + 1
        while end < len(words) and not words[end].startswith("--"):
            end += 1
        arguments = words[index + 1 : end]
        name = _FIELD_OF_FLAG.get(flag)
        if name is None and flag.startswith("--no_") and f"--{flag[5:]}" in _FIELD_OF_FLAG:
            negated = _FIELD_OF_FLAG[f"--{flag[5:]}"]
            if _kind(negated) is bool:
                values[negated] = False
        elif name is not None:
            values[name] = _convert(name, flag, arguments, source)
        index = end
    if isinstance(values.get("tau2_fudge"), float) and values["tau2_fudge"] <= 0:
        values["tau2_fudge"] = 1.0  # RELION's -1: not given
    return dataclasses.replace(base or RefineOptions(), **values)


def check_option_ranges(options: RefineOptions) -> None:
    """Refuse values no refinement can run with, naming the option.

    Raises
    ------
    InputError
        ``--pad`` below 1, a negative ``--healpix_order``, ``--auto_local_healpix_order``
        or ``--oversampling``, an ``--offset_step`` that is not positive, a negative
        ``--offset_range``, or a NaN ``--ini_high`` / ``--particle_diameter``.
    """
    checks = [
        ("--pad", options.pad, options.pad >= 1, "an integer of at least 1 (RELION: 2)"),
        ("--healpix_order", options.healpix_order, options.healpix_order >= 0, "0 or more"),
        (
            "--auto_local_healpix_order",
            options.auto_local_healpix_order,
            options.auto_local_healpix_order >= 0,
            "0 or more",
        ),
        ("--oversampling", options.oversampling, options.oversampling >= 0, "0 or more"),
        ("--offset_step", options.offset_step, options.offset_step > 0, "a positive number"),
        ("--offset_range", options.offset_range, options.offset_range >= 0, "0 or more"),
        ("--ini_high", options.ini_high, not math.isnan(options.ini_high), "a number (A)"),
        (
            "--particle_diameter",
            options.particle_diameter,
            not math.isnan(options.particle_diameter),
            "a number (A)",
        ),
    ]
    for flag, value, good, expected in checks:
        if not good:
            raise InputError(f"option {flag} is {value}, expected {expected}")
