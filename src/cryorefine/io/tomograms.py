"""Tomogram sets (``tomograms.star``): one tilt series per tomogram, one row per tilt image.

``data_global`` has one row per tomogram (``rlnTomoName``, microscope, pixel size,
hand, tomogram size). The per-tilt table of tomogram NAME is

- RELION 4: block ``data_NAME`` of the same file;
- RELION 5: the file named by ``rlnTomoTiltSeriesStarFile`` (its block ``data_NAME``,
  or its only loop block). Such paths are relative to the project directory; they
  resolve as ``paths`` says (current directory, then the folder of tomograms.star
  and the folders above it: ``Tomograms/job006/tomograms.star`` finds
  ``Tomograms/job006/tilt_series/TS_01.star`` two levels up).

Per-tilt geometry is kept as written: the projection rows ``rlnTomoProjX/Y/Z/W``
(RELION 4, parsed to 4x4 matrices here) or RELION 5's alignment angles and shifts
(``rlnTomoXTilt``, ``rlnTomoYTilt``, ``rlnTomoZRot``, ``rlnTomoXShiftAngst``,
``rlnTomoYShiftAngst``); turning those into matrices is the tomo layer's job.
"""

from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np
import pandas as pd
from jaxtyping import Float64

from cryorefine.errors import InputError
from cryorefine.io.particles import ParticleSet
from cryorefine.io.paths import not_found, resolve_path
from cryorefine.io.star import StarBlock, read_star
from cryorefine.io.tables import CtfParameters, describe_rows, float_column, require_labels

__all__ = [
    "TiltAlignment",
    "TiltSeries",
    "TomogramSet",
    "check_particles_against_tomograms",
    "load_tomograms",
]

_PROJECTION = ("rlnTomoProjX", "rlnTomoProjY", "rlnTomoProjZ", "rlnTomoProjW")
_ALIGNMENT = (
    "rlnTomoXTilt",
    "rlnTomoYTilt",
    "rlnTomoZRot",
    "rlnTomoXShiftAngst",
    "rlnTomoYShiftAngst",
)


@dataclass(frozen=True)
class TiltAlignment:
    """RELION-5 per-tilt alignment, as written (degrees and Angstrom), ``i`` tilts."""

    x_tilt_deg: Float64[np.ndarray, " i"]
    y_tilt_deg: Float64[np.ndarray, " i"]
    z_rot_deg: Float64[np.ndarray, " i"]
    x_shift_angst: Float64[np.ndarray, " i"]
    y_shift_angst: Float64[np.ndarray, " i"]


@dataclass(frozen=True)
class TiltSeries:
    """One tomogram: its row of data_global and its per-tilt table (file order).

    Attributes
    ----------
    name
        rlnTomoName.
    global_row
        Its data_global row, label -> value.
    tilts
        One row per tilt image.
    source
        The STAR file holding ``tilts``.
    """

    name: str
    global_row: dict[str, object]
    tilts: pd.DataFrame
    source: Path

    def __len__(self) -> int:
        """Number of tilt images."""
        return len(self.tilts)

    def _global(self, label: str, fallback: str | None = None) -> float:
        for key in (label, fallback):
            if key is not None and key in self.global_row:
                value = self.global_row[key]
                if isinstance(value, int | float) and np.isfinite(value):
                    return float(value)
                raise InputError(
                    f"{self.source}: data_global {self.name}: {key} is {value!r}, expected a number"
                )
        raise InputError(
            f"{self.source}: data_global {self.name}: required label {label} is missing"
        )

    @property
    def pixel_size_angst(self) -> float:
        """rlnTomoTiltSeriesPixelSize (rlnMicrographOriginalPixelSize where absent, RELION 4)."""
        return self._global("rlnTomoTiltSeriesPixelSize", "rlnMicrographOriginalPixelSize")

    @property
    def hand(self) -> float:
        """rlnTomoHand: +1 or -1, the sign of the defocus slope with depth."""
        return self._global("rlnTomoHand")

    @property
    def size_px(self) -> tuple[int, int, int]:
        """Bin-1 tomogram size (x, y, z) in pixels (rlnTomoSizeX/Y/Z)."""
        return tuple(int(self._global(f"rlnTomoSize{axis}")) for axis in "XYZ")  # type: ignore[return-value]

    @property
    def has_projection_matrices(self) -> bool:
        """Whether the table holds rlnTomoProjX/Y/Z/W (else RELION 5 angles and shifts)."""
        return all(label in self.tilts.columns for label in _PROJECTION)

    def projection_matrices(self) -> Float64[np.ndarray, "i 4 4"]:
        """Rows rlnTomoProjX, Y, Z, W of each tilt: the 4x4 map from tomogram to tilt image."""
        require_labels(self.tilts, _PROJECTION, path=self.source, block=self.name)
        rows = [
            _parse_vectors(self.tilts[label], self.source, self.name, label)
            for label in _PROJECTION
        ]
        return np.stack(rows, axis=1)

    def alignment(self) -> TiltAlignment:
        """RELION-5 alignment angles and shifts of each tilt, as written."""
        values = [self._column(label) for label in _ALIGNMENT]
        return TiltAlignment(*values)

    def ctf_parameters(self) -> CtfParameters:
        """Per-tilt CTF: defocus from the tilt table, microscope from data_global."""
        n = len(self)
        return CtfParameters(
            defocus_u_angst=self._column("rlnDefocusU"),
            defocus_v_angst=self._column("rlnDefocusV"),
            defocus_angle_deg=self._column("rlnDefocusAngle"),
            voltage_kv=np.full(n, self._global("rlnVoltage")),
            spherical_aberration_mm=np.full(n, self._global("rlnSphericalAberration")),
            amplitude_contrast=np.full(n, self._global("rlnAmplitudeContrast")),
            phase_shift_deg=self._column("rlnPhaseShift", 0.0),
            bfactor_angst2=self._column("rlnCtfBfactor", 0.0),
            scale=self._column("rlnCtfScalefactor", 1.0),
        )

    def pre_exposure_e_per_angst2(self) -> Float64[np.ndarray, " i"]:
        """rlnMicrographPreExposure: electrons per square Angstrom before each tilt."""
        return self._column("rlnMicrographPreExposure")

    def nominal_tilt_angles_deg(self) -> Float64[np.ndarray, " i"]:
        """rlnTomoNominalStageTiltAngle of each tilt (degrees)."""
        return self._column("rlnTomoNominalStageTiltAngle")

    def _column(self, label: str, default: float | None = None) -> Float64[np.ndarray, " i"]:
        return float_column(self.tilts, label, path=self.source, block=self.name, default=default)


@dataclass(frozen=True)
class TomogramSet:
    """A tomograms.star: data_global and one ``TiltSeries`` per tomogram, in file order."""

    path: Path
    global_table: pd.DataFrame
    tilt_series: dict[str, TiltSeries]
    blocks: dict[str, StarBlock]

    def names(self) -> list[str]:
        """rlnTomoName of every tomogram, in file order."""
        return list(self.tilt_series)

    def __getitem__(self, name: str) -> TiltSeries:
        """The tilt series called ``name``."""
        if name not in self.tilt_series:
            raise InputError(f"{self.path}: no tomogram called {name!r} (known: {self.names()})")
        return self.tilt_series[name]


def load_tomograms(path: str | PathLike[str]) -> TomogramSet:
    """Read a tomograms.star of RELION 4 or 5 and every per-tilt table it points to.

    Raises
    ------
    InputError
        No data_global, a missing rlnTomoName, a repeated tomogram, a missing
        per-tilt table or file, a per-tilt table without geometry (neither
        projection rows nor alignment angles), or a wrong frame count.
    """
    star = Path(path)
    blocks = read_star(star)
    table = blocks.get("global")
    if not isinstance(table, pd.DataFrame):
        raise InputError(f"{star}: no data_global loop table (one row per tomogram)")
    require_labels(table, ["rlnTomoName"], path=star, block="global")
    names = table["rlnTomoName"].astype(str).tolist()
    repeated = [row for row, name in enumerate(names) if name in names[:row]]
    if repeated:
        raise InputError(
            f"{star}: data_global {describe_rows(repeated)}: rlnTomoName {names[repeated[0]]!r} "
            "appears twice"
        )
    series = {}
    for row, name in enumerate(names):
        global_row = {label: _plain(table[label].iloc[row]) for label in table.columns}
        tilts, source = _tilt_table(star, blocks, global_row, name, row)
        series[name] = TiltSeries(name=name, global_row=global_row, tilts=tilts, source=source)
    return TomogramSet(path=star, global_table=table, tilt_series=series, blocks=blocks)


def _plain(value: object) -> object:
    return value.item() if hasattr(value, "item") else value


def _tilt_table(
    star: Path, blocks: dict[str, StarBlock], global_row: dict[str, object], name: str, row: int
) -> tuple[pd.DataFrame, Path]:
    where = f"{star}: data_global row {row + 1} ({name})"
    file_name = global_row.get("rlnTomoTiltSeriesStarFile")
    own = blocks.get(name)
    tilts: pd.DataFrame
    if isinstance(own, pd.DataFrame):
        tilts, source = own, star
    elif file_name:
        source = resolve_path(str(file_name), star)
        if not source.is_file():
            raise InputError(f"{where}: rlnTomoTiltSeriesStarFile {not_found(str(file_name))}")
        inner = read_star(source)
        loops = [b for b in inner.values() if isinstance(b, pd.DataFrame)]
        chosen = inner.get(name)
        if not isinstance(chosen, pd.DataFrame):
            if len(loops) != 1:
                raise InputError(f"{source}: no data_{name} loop table (one row per tilt image)")
            chosen = loops[0]
        tilts = chosen
    else:
        raise InputError(
            f"{where}: no per-tilt table: no data_{name} block and no rlnTomoTiltSeriesStarFile"
        )
    block = name
    if len(tilts) == 0:
        raise InputError(f"{source}: data_{block} has no rows (no tilt images)")
    has_projection = all(label in tilts.columns for label in _PROJECTION)
    if not has_projection and not all(label in tilts.columns for label in _ALIGNMENT):
        raise InputError(
            f"{source}: data_{block}: no tilt geometry: expected {', '.join(_PROJECTION)} "
            f"or {', '.join(_ALIGNMENT)}"
        )
    count = global_row.get("rlnTomoFrameCount")
    if isinstance(count, int | float) and int(count) != len(tilts):
        raise InputError(
            f"{where}: rlnTomoFrameCount is {count} but data_{block} has {len(tilts)} tilt rows"
        )
    return tilts, source


def _parse_vectors(
    column: pd.Series, source: Path, block: str, label: str
) -> Float64[np.ndarray, "i 4"]:
    """``[a,b,c,d]`` strings (one per tilt) as an ``(i, 4)`` float64 array."""
    out = np.empty((len(column), 4))
    for row, text in enumerate(column.astype(str)):
        try:
            values = [float(v) for v in text.strip().strip("[]").split(",")]
        except ValueError:
            values = []
        if len(values) != 4:
            raise InputError(
                f"{source}: data_{block} row {row + 1}: {label} is {text!r}, expected [a,b,c,d]"
            )
        out[row] = values
    return out


def check_particles_against_tomograms(particle_set: ParticleSet, tomograms: TomogramSet) -> None:
    """Every particle's tomogram exists; rlnTomoVisibleFrames has one entry per tilt.

    Raises
    ------
    InputError
        Naming the particles file, the rows, and the tomograms file.
    """
    names = particle_set.tomo_names()
    unknown = [row for row, name in enumerate(names) if name not in tomograms.tilt_series]
    if unknown:
        raise InputError(
            f"{particle_set.path}: data_particles {describe_rows(unknown)}: rlnTomoName "
            f"{names[unknown[0]]!r} is not a tomogram of {tomograms.path} "
            f"(known: {tomograms.names()})"
        )
    if "rlnTomoVisibleFrames" not in particle_set.particles.columns:
        return
    frames = particle_set.visible_frames()
    wrong = [row for row, name in enumerate(names) if len(frames[row]) != len(tomograms[name])]
    if wrong:
        row = wrong[0]
        raise InputError(
            f"{particle_set.path}: data_particles {describe_rows(wrong)}: rlnTomoVisibleFrames "
            f"has {len(frames[row])} entries but tomogram {names[row]} has "
            f"{len(tomograms[names[row]])} tilt images in {tomograms.path}"
        )
