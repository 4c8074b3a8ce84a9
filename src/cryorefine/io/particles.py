"""Particle sets: a RELION particles STAR file, validated, with accessors in field words.

``load_particles`` reads the file, decides its flavour (``particle_checks``), checks
labels, optics groups and (by default) the image files, converts RELION-3.0 origins
in pixels to Angstrom, and returns a ``ParticleSet``. The layers above read it
through accessors returning float64 numpy arrays with one row per particle, in
file order; they never see a STAR label. ``write_particles`` writes a set back,
every block and every unknown column untouched, e.g. after ``with_poses``.

Relative image names resolve as ``paths`` says: the current directory, then the
STAR file's folder and the folders above it; one folder serves the whole set.
"""

from collections.abc import Mapping
from dataclasses import dataclass, replace
from os import PathLike
from pathlib import Path

import numpy as np
import pandas as pd
from jaxtyping import Bool, Float64, Int64

from cryorefine.errors import InputError
from cryorefine.io.labels import NUMERIC_LABELS, TEXT_LABELS
from cryorefine.io.mrc import split_image_names
from cryorefine.io.particle_checks import (
    check_image_files,
    detect_flavour,
    is_ctf_premultiplied,
    map_optics,
    parse_visible_frames,
    pixel_origins_to_angst,
    required_labels,
)
from cryorefine.io.paths import find_base_folder, names_from_project_directory
from cryorefine.io.relion30 import convert_relion30, is_relion30
from cryorefine.io.star import StarBlock, read_star, write_star
from cryorefine.io.tables import (
    CtfParameters,
    describe_rows,
    float_column,
    int_column,
    require_labels,
    warn_misspelt_labels,
)

__all__ = ["FIELD_LABELS", "ParticleSet", "load_particles", "write_particles"]

#: Field words accepted by ``ParticleSet.with_columns`` and the STAR label each one sets.
FIELD_LABELS: dict[str, str] = {
    "rot_deg": "rlnAngleRot",
    "tilt_deg": "rlnAngleTilt",
    "psi_deg": "rlnAnglePsi",
    "origin_x_angst": "rlnOriginXAngst",
    "origin_y_angst": "rlnOriginYAngst",
    "origin_z_angst": "rlnOriginZAngst",
    "half_set": "rlnRandomSubset",
    "class_number": "rlnClassNumber",
    "group_number": "rlnGroupNumber",
    "norm_correction": "rlnNormCorrection",
    "log_likelihood_contribution": "rlnLogLikeliContribution",
    "max_probability": "rlnMaxValueProbDistribution",
    "significant_samples": "rlnNrOfSignificantSamples",
}

_ANGLES = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
_ORIGINS = ("rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst")
_PRIORS = ("rlnAngleRotPrior", "rlnAngleTiltPrior", "rlnAnglePsiPrior")
_SUBTOMOGRAM = ("rlnTomoSubtomogramRot", "rlnTomoSubtomogramTilt", "rlnTomoSubtomogramPsi")


@dataclass(frozen=True)
class ParticleSet:
    """A validated particles file (see ``load_particles``); ``b`` particles in file order.

    Attributes
    ----------
    path
        The STAR file it was read from.
    flavour
        ``"spa"``, ``"subtomo3d"``, ``"relion4"``, ``"relion5_stack2d"`` or
        ``"relion5_picks"`` (``particle_checks``).
    optics
        data_optics (``None`` for picks without one).
    particles
        data_particles; origins in pixels already converted to ``rlnOrigin*Angst``.
    blocks
        Every block of the file, in order (written back by ``write_particles``).
    image_folder
        Folder against which relative image names resolve.
    optics_row
        0-based row of ``optics`` of each particle (0 for picks).
    pixel_size_angst, box_size_px
        rlnImagePixelSize and rlnImageSize of each particle's optics group
        (NaN and 0 for picks, which have no images).
    image_dimensionality
        2 or 3 (0 for picks).
    """

    path: Path
    flavour: str
    optics: pd.DataFrame | None
    particles: pd.DataFrame
    blocks: dict[str, StarBlock]
    image_folder: Path
    optics_row: Int64[np.ndarray, " b"]
    pixel_size_angst: Float64[np.ndarray, " b"]
    box_size_px: Int64[np.ndarray, " b"]
    image_dimensionality: int

    def __len__(self) -> int:
        """Number of particles."""
        return len(self.particles)

    def _floats(self, labels: tuple[str, ...], default: float | None) -> Float64[np.ndarray, "b c"]:
        columns = [
            float_column(self.particles, label, path=self.path, block="particles", default=default)
            for label in labels
        ]
        return np.stack(columns, axis=1)

    def angles_deg(self) -> Float64[np.ndarray, "b 3"]:
        """(rot, tilt, psi) in degrees, RELION's ZYZ convention; 0 where a label is absent."""
        return self._floats(_ANGLES, 0.0)

    def origins_angst(self) -> Float64[np.ndarray, "b 3"]:
        """Origin (x, y, z) in Angstrom (rlnOrigin*Angst, REFINE_SPEC §1.2); 0 where absent."""
        return self._floats(_ORIGINS, 0.0)

    def norm_corrections(self) -> Float64[np.ndarray, " b"]:
        """rlnNormCorrection of each particle (RELION's ``--norm``); 1 where absent."""
        return self._floats(("rlnNormCorrection",), 1.0)[:, 0]

    def angle_priors_deg(self) -> Float64[np.ndarray, "b 3"]:
        """Prior (rot, tilt, psi) in degrees (rlnAngle*Prior); NaN where a label is absent."""
        out = np.full((len(self), 3), np.nan)
        for axis, label in enumerate(_PRIORS):
            if label in self.particles.columns:
                out[:, axis] = float_column(
                    self.particles, label, path=self.path, block="particles"
                )
        return out

    def subtomogram_angles_deg(self) -> Float64[np.ndarray, "b 3"]:
        """rlnTomoSubtomogramRot/Tilt/Psi in degrees: the frame of each subtomogram; 0 if absent."""
        return self._floats(_SUBTOMOGRAM, 0.0)

    def half_sets(self) -> Int64[np.ndarray, " b"]:
        """rlnRandomSubset (1 or 2) of each particle; 0 where the file has no such label."""
        return int_column(
            self.particles, "rlnRandomSubset", path=self.path, block="particles", default=0
        )

    def image_names(self) -> list[str]:
        """rlnImageName as written (``000012@stack.mrcs`` or ``file.mrc``)."""
        return self._text("rlnImageName")

    def image_paths(self) -> list[Path]:
        """Image file of each particle, resolved against ``image_folder``."""
        return [self.image_folder / name for name in split_image_names(self.image_names())[1]]

    def image_indices(self) -> Int64[np.ndarray, " b"]:
        """1-based index of each image in its stack; 0 where the name is a whole file."""
        return split_image_names(self.image_names())[0]

    def ctf_image_names(self) -> list[str]:
        """rlnCtfImage as written (3D CTF, or CTF^2 and multiplicity, volumes)."""
        return self._text("rlnCtfImage")

    def ctf_image_paths(self) -> list[Path]:
        """rlnCtfImage files, resolved against ``image_folder``."""
        return [self.image_folder / name for name in split_image_names(self.ctf_image_names())[1]]

    def tomo_names(self) -> list[str]:
        """rlnTomoName of each particle (the tilt series it comes from)."""
        return self._text("rlnTomoName")

    def tomo_particle_names(self) -> list[str]:
        """rlnTomoParticleName (``TS_01/17``), the key of trajectories."""
        return self._text("rlnTomoParticleName")

    def centered_coordinates_angst(self) -> Float64[np.ndarray, "b 3"]:
        """(x, y, z) in Angstrom from the tomogram centre (rlnCenteredCoordinate*Angst)."""
        return self._floats(
            (
                "rlnCenteredCoordinateXAngst",
                "rlnCenteredCoordinateYAngst",
                "rlnCenteredCoordinateZAngst",
            ),
            None,
        )

    def coordinates_px(self) -> Float64[np.ndarray, "b 3"]:
        """rlnCoordinateX/Y/Z in pixels (tomography: bin-1, from the corner); z 0 where absent."""
        xy = self._floats(("rlnCoordinateX", "rlnCoordinateY"), None)
        z = float_column(
            self.particles, "rlnCoordinateZ", path=self.path, block="particles", default=0.0
        )
        return np.concatenate([xy, z[:, np.newaxis]], axis=1)

    def visible_frames(self) -> list[np.ndarray]:
        """rlnTomoVisibleFrames: per particle, which tilts of its tilt series are in its stack."""
        self._text("rlnTomoVisibleFrames")
        return parse_visible_frames(self.path, self.particles)

    @property
    def ctf_premultiplied(self) -> bool:
        """rlnCtfDataAreCtfPremultiplied of the optics table (False where absent)."""
        return self.optics is not None and is_ctf_premultiplied(self.path, self.optics)

    def ctf_parameters(self) -> CtfParameters:
        """Per-particle CTF parameters: defocus from data_particles, microscope from data_optics.

        Raises
        ------
        InputError
            A required label is missing (defocus U/V/angle; voltage, Cs and
            amplitude contrast in data_optics). Tomography flavours keep defocus
            per tilt in tomograms.star instead (``tomograms.TiltSeries``).
        """
        if self.optics is None:
            raise InputError(
                f"{self.path}: no data_optics table: no voltage, Cs or amplitude contrast"
            )

        def particle(label: str, default: float | None = None) -> np.ndarray:
            return float_column(
                self.particles, label, path=self.path, block="particles", default=default
            )

        def optics(label: str) -> np.ndarray:
            assert self.optics is not None
            values = float_column(self.optics, label, path=self.path, block="optics")
            return np.asarray(values[self.optics_row])

        return CtfParameters(
            defocus_u_angst=particle("rlnDefocusU"),
            defocus_v_angst=particle("rlnDefocusV"),
            defocus_angle_deg=particle("rlnDefocusAngle"),
            voltage_kv=optics("rlnVoltage"),
            spherical_aberration_mm=optics("rlnSphericalAberration"),
            amplitude_contrast=optics("rlnAmplitudeContrast"),
            phase_shift_deg=particle("rlnPhaseShift", 0.0),
            bfactor_angst2=particle("rlnCtfBfactor", 0.0),
            scale=particle("rlnCtfScalefactor", 1.0),
        )

    def subset(self, rows: Int64[np.ndarray, " c"] | Bool[np.ndarray, " b"]) -> "ParticleSet":
        """The particles at ``rows`` (0-based positions, or a mask), in that order."""
        positions = np.flatnonzero(rows) if rows.dtype == np.bool_ else rows
        return replace(
            self,
            particles=self.particles.iloc[positions].reset_index(drop=True),
            optics_row=self.optics_row[positions],
            pixel_size_angst=self.pixel_size_angst[positions],
            box_size_px=self.box_size_px[positions],
        )

    def with_poses(
        self,
        *,
        angles_deg: Float64[np.ndarray, "b 3"] | None = None,
        origins_angst: Float64[np.ndarray, "b 3"] | None = None,
    ) -> "ParticleSet":
        """A copy with new (rot, tilt, psi) and/or origins (x, y, z); z written for 3D data only."""
        values: dict[str, np.ndarray] = {}
        if angles_deg is not None:
            values.update(zip(("rot_deg", "tilt_deg", "psi_deg"), angles_deg.T, strict=True))
        if origins_angst is not None:
            values.update(origin_x_angst=origins_angst[:, 0], origin_y_angst=origins_angst[:, 1])
            if (
                self.image_dimensionality == 3
                or self.flavour.startswith("relion5")
                or ("rlnOriginZAngst" in self.particles.columns)
            ):
                values["origin_z_angst"] = origins_angst[:, 2]
        return self.with_columns(values)

    def with_columns(self, values: Mapping[str, np.ndarray]) -> "ParticleSet":
        """A copy with columns set from field words (``FIELD_LABELS``); other columns untouched.

        Existing columns keep their place; new ones are appended.
        """
        table = self.particles.copy()
        for word, column in values.items():
            if word not in FIELD_LABELS:
                raise ValueError(f"unknown particle field {word!r}; known: {sorted(FIELD_LABELS)}")
            if column.shape != (len(table),):
                raise ValueError(f"{word}: shape {column.shape}, expected ({len(table)},)")
            table[FIELD_LABELS[word]] = column
        return replace(self, particles=table)

    def _text(self, label: str) -> list[str]:
        if label not in self.particles.columns:
            require_labels(self.particles, [label], path=self.path, block="particles")
        return [str(value) for value in self.particles[label]]


def load_particles(path: str | PathLike[str], *, check_images: bool = True) -> ParticleSet:
    """Read and validate a particles STAR file of any flavour (``particle_checks``).

    Parameters
    ----------
    path
        The particles STAR file (data_optics + data_particles, or picks).
    check_images
        Check that every image (and rlnCtfImage) file exists and that one
        header per file has the box size, the stack length and the pixel size
        of the optics table (``particle_checks.PIXEL_SIZE_TOLERANCE``). Off for
        metadata-only work.

    Raises
    ------
    InputError
        Anything wrong with the file, each named with its file, block, row or label.
    """
    star = Path(path)
    blocks = read_star(star)
    if is_relion30(blocks):  # as RELION 3.1+ reads them
        blocks = convert_relion30(star, blocks)
    flavour, optics, particles = detect_flavour(star, blocks)
    for block, table in (("particles", particles), ("optics", optics)):
        if table is not None:
            warn_misspelt_labels(table, NUMERIC_LABELS | TEXT_LABELS, path=star, block=block)
    required_labels(flavour, particles, star)
    if flavour == "relion5_picks":
        n = len(particles)
        row = np.zeros(n, dtype=np.int64)
        pixel, box, dimensionality = np.full(n, np.nan), np.zeros(n, dtype=np.int64), 0
    else:
        assert optics is not None
        row, pixel, box = map_optics(star, optics, particles)
        dimensionality = 3 if flavour in ("subtomo3d", "relion4") else 2
        particles = pixel_origins_to_angst(particles, pixel)
        blocks["particles"] = particles
    names = particles["rlnImageName"].astype(str).tolist() if "rlnImageName" in particles else []
    particle_set = ParticleSet(
        path=star,
        flavour=flavour,
        optics=optics,
        particles=particles,
        blocks=blocks,
        image_folder=find_base_folder(split_image_names(names)[1], star),
        optics_row=row,
        pixel_size_angst=pixel,
        box_size_px=box,
        image_dimensionality=dimensionality,
    )
    _check_values(particle_set)
    if check_images and flavour != "relion5_picks":
        for label in ("rlnImageName", "rlnCtfImage"):
            if label in particles.columns:
                check_image_files(
                    star, flavour, particles, label=label, pixel_size_angst=pixel, box_size_px=box
                )
    return particle_set


#: Per-particle CTF labels checked at loading (finite numbers) where present.
_CTF_LABELS = (
    "rlnDefocusU rlnDefocusV rlnDefocusAngle rlnPhaseShift rlnCtfBfactor rlnCtfScalefactor"
)


def _check_values(particle_set: ParticleSet) -> None:
    """Angles, origins, CTF labels are finite numbers; half sets are 1 or 2."""
    particle_set.angles_deg()
    particle_set.origins_angst()
    for label in _CTF_LABELS.split():
        if label in particle_set.particles.columns:
            float_column(particle_set.particles, label, path=particle_set.path, block="particles")
    half_sets = particle_set.half_sets()
    if "rlnRandomSubset" in particle_set.particles.columns:
        bad = np.flatnonzero((half_sets != 1) & (half_sets != 2))
        if len(bad):
            raise InputError(
                f"{particle_set.path}: data_particles {describe_rows(bad)}: rlnRandomSubset is "
                f"{half_sets[bad[0]]}, expected 1 or 2"
            )
    if particle_set.flavour == "relion5_stack2d":
        particle_set.visible_frames()


def write_particles(particle_set: ParticleSet, path: str | PathLike[str]) -> Path:
    """Write a particle set as STAR: its blocks in their order, data_particles as it is now.

    Raises
    ------
    InputError
        ``path`` is the file the set was read from (inputs are never overwritten).
    """
    if Path(path).resolve() == particle_set.path.resolve():
        raise InputError(f"{path}: is the input particles file; refusing to overwrite it")
    blocks = dict(particle_set.blocks)
    blocks["particles"] = names_from_project_directory(
        particle_set.particles, particle_set.image_folder
    )
    if particle_set.optics is not None:
        blocks["optics"] = particle_set.optics
    return write_star(blocks, path)
