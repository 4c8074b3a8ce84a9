"""Options of a simulated data set, checked once, and the signal-to-noise ratio they refer to.

``SimulationOptions`` is what ``cryorefine simulate`` builds from its command line;
every check names the command-line option (``--box``, ``--snr``, ...) so a mistake
reads as one line. ``SNR_DEFINITION`` is the text written into ``simulation.json``.
"""

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from jaxtyping import Float64

from cryorefine.errors import InputError

__all__ = [
    "DATA_FORMATS",
    "SNR_DEFINITION",
    "SimulationOptions",
]

#: Particle flavours ``simulate`` writes (``io.particle_checks`` names them the same way).
DATA_FORMATS = ("relion4", "subtomo3d", "spa", "tilt_series")

SNR_DEFINITION = (
    "SNR = S / N for one noisy measurement: an image (spa), a tilt image (relion4), the "
    "subtomogram itself (subtomo3d). S is the mean of |F(k)|^2 over the Fourier coefficients "
    "k of the measurement with round(|k|) <= n/2 of the truth's CTF-free signal (no CTF, dose "
    "weight or B-factor): for 2D measurements the projection, averaged over uniformly random "
    "orientations, i.e. n^2 times the mean over the 2D coefficients of the truth's 3D shell "
    "power at the coefficient's shell; for subtomo3d the 3D transform of the truth. N is the "
    "noise power per Fourier coefficient of that measurement (tilt_series: a tilt-image box of "
    "n pixels). Both use the forward-normalised "
    "transform of fourier.conventions (F = sum / n^d), so white real-space noise of variance "
    "sigma^2 per pixel has N = sigma^2 / n^d (d = 2 or 3)."
)
"""The signal-to-noise ratio that ``--snr`` sets (written into ``simulation.json``)."""


@dataclass(frozen=True)
class SimulationOptions:
    """Everything a simulated data set depends on; the seed makes it reproducible.

    Attributes
    ----------
    output_dir
        ``--o``: folder of every output file (created if needed).
    map_path
        ``--map``: the truth as an MRC file; ``None`` takes the embedded HIV CA hexamer.
    symmetry
        ``--sym``: point group; the truth is averaged over its operators unless C1.
    n_particles
        ``--n_particles``; ``None``: every pick of ``particles_star`` (only with it).
    box_size
        ``--box``: side ``n`` of the particle boxes (even), in pixels.
    pixel_size_angst
        ``--angpix``: pixel size of the particles; the truth is resampled to it. With
        ``tomograms_star`` it sets the binning (``pixel / rlnTomoTiltSeriesPixelSize``)
        unless ``binning`` is given.
    snr
        ``--snr``: ``SNR_DEFINITION``; ``math.inf`` gives noise-free data.
    defocus_range_angst
        ``--defocus_range``: defocus of each particle is uniform in this range.
    tilt_range_deg, tilt_step_deg
        ``--tilt_range``, ``--tilt_step``: tilt angles about the y axis (tomography).
    dose_per_tilt_e_per_angst2
        ``--dose``: electrons per square Angstrom per tilt image.
    max_offset_px
        ``--max_offset``: each origin coordinate is uniform in ``[-max, max]`` pixels.
    data_format
        ``--format``: ``relion4``, ``subtomo3d``, ``spa`` or ``tilt_series`` (whole tilt
        series to extract particles from, ``simulate.tilt_series``; ``DATA_FORMATS``).
    ref_lowpass_angst
        ``--ref_lowpass``: resolution of the starting reference's raised-cosine low-pass.
    ref_rotation_deg
        ``--ref_rotation_deg``: the reference is the truth turned by this angle.
    bfactor_angst2
        ``--bfactor``: B-factor envelope ``exp(-B s^2 / 4)`` on the signal of every
        particle (not written as ``rlnCtfBfactor``: the refinement does not know it).
    seed
        ``--seed``.
    tomograms_star, particles_star
        ``--tomograms``, ``--particles``: a real tomograms.star (RELION 4 or 5) and
        picked positions in it (``rlnTomoName``, ``rlnCenteredCoordinate*Angst`` or
        ``rlnCoordinate*``). Together they replace the tilt scheme, the defocus and
        the dose options (``simulate.picks``); tomography formats only.
    binning
        ``--bin``: particle pixel = ``binning * rlnTomoTiltSeriesPixelSize``
        (with ``tomograms_star``; ``None``: from ``pixel_size_angst``).
    tilt_image_size_px
        ``--tilt_image_size``: ``(width, height)`` of the real tilt images, which no
        STAR file records; ``None``: each tomogram's ``rlnTomoSizeX/Y``. With
        ``tilt_series``: the simulated tilt images (``None``: ``4 box`` square).
    particles_per_tomogram
        ``--per_tomogram``: particles in each simulated tomogram (``tilt_series``).
    float16
        ``--float16``: write the 3D particle files in half precision (MRC mode 12).
    surface_normals
        ``--surface_normals``: the picks lie on a surface; each particle gets a
        subtomogram frame along its normal, its true pose near tilt 90 and psi 0
        in that frame, and those angles as priors (``simulate.surface_frames``);
        relion4 with ``particles_star`` only.
    normal_spread_deg
        ``--normal_spread``: standard deviation of the true tilt and psi about
        the priors, degrees.
    """

    output_dir: Path
    map_path: Path | None = None
    symmetry: str = "C1"
    n_particles: int | None = 200
    box_size: int = 64
    pixel_size_angst: float = 2.7
    snr: float = 0.05
    defocus_range_angst: tuple[float, float] = (15000.0, 30000.0)
    tilt_range_deg: tuple[float, float] = (-60.0, 60.0)
    tilt_step_deg: float = 3.0
    dose_per_tilt_e_per_angst2: float = 3.0
    max_offset_px: float = 2.0
    data_format: str = "relion4"
    ref_lowpass_angst: float = 40.0
    ref_rotation_deg: float = 15.0
    bfactor_angst2: float = 0.0
    seed: int = 0
    tomograms_star: Path | None = None
    particles_star: Path | None = None
    binning: float | None = None
    tilt_image_size_px: tuple[int, int] | None = None
    float16: bool = False
    particles_per_tomogram: int = 4
    surface_normals: bool = False
    normal_spread_deg: float = 8.0

    def __post_init__(self) -> None:
        """Check every option (``InputError`` naming the command-line option)."""
        if self.n_particles is not None:
            _positive_int("--n_particles", self.n_particles)
        self._check_real_geometry()
        _positive_int("--box", self.box_size)
        if self.box_size % 2 or self.box_size < 8:
            raise InputError(f"--box {self.box_size}: expected an even box of at least 8 pixels")
        _positive("--angpix", self.pixel_size_angst)
        if not (self.snr > 0 and not math.isnan(self.snr)):
            raise InputError(f"--snr {self.snr}: expected a positive number (or inf, no noise)")
        low, high = self.defocus_range_angst
        if not (math.isfinite(low) and math.isfinite(high) and 0 < low <= high):
            raise InputError(
                f"--defocus_range {low:g} {high:g}: expected 0 < min <= max (Angstrom, underfocus)"
            )
        first, last = self.tilt_range_deg
        if not (-90 < first <= last < 90):
            raise InputError(
                f"--tilt_range {first:g} {last:g}: expected -90 < min <= max < 90 (degrees)"
            )
        _positive("--tilt_step", self.tilt_step_deg)
        dose = self.dose_per_tilt_e_per_angst2
        if not (math.isfinite(dose) and dose >= 0):
            raise InputError(f"--dose {dose}: expected a number >= 0")
        if not (0 <= self.max_offset_px <= self.box_size / 4):
            raise InputError(
                f"--max_offset {self.max_offset_px}: expected 0 to a quarter of the box "
                f"({self.box_size / 4:g} pixels)"
            )
        if self.data_format not in DATA_FORMATS:
            raise InputError(
                f"--format {self.data_format}: expected one of {', '.join(DATA_FORMATS)}"
            )
        _positive("--ref_lowpass", self.ref_lowpass_angst)
        _positive_int("--per_tomogram", self.particles_per_tomogram)
        if not (0 <= self.ref_rotation_deg <= 180):
            raise InputError(f"--ref_rotation_deg {self.ref_rotation_deg}: expected 0 to 180")
        if not math.isfinite(self.bfactor_angst2):
            raise InputError(f"--bfactor {self.bfactor_angst2}: expected a finite number")
        if self.surface_normals and (self.particles_star is None or self.data_format != "relion4"):
            raise InputError(
                "--surface_normals: needs --tomograms and --particles with --format relion4 "
                "(frames of pseudo-subtomograms)"
            )
        if not 0 <= self.normal_spread_deg <= 45:
            raise InputError(f"--normal_spread {self.normal_spread_deg}: expected 0 to 45 degrees")
        if not 0 <= self.seed < 2**63:
            raise InputError(f"--seed {self.seed}: expected a whole number from 0 to 2^63 - 1")

    def _check_real_geometry(self) -> None:
        given = (self.tomograms_star is not None, self.particles_star is not None)
        if given[0] != given[1]:
            raise InputError(
                "--tomograms and --particles go together: the tilt series and the picked "
                f"positions in them (got only {'--tomograms' if given[0] else '--particles'})"
            )
        if not given[0]:
            if self.n_particles is None:
                raise InputError("--n_particles: expected a number (all picks needs --particles)")
            for option, value in (
                ("--bin", self.binning),
                ("--tilt_image_size", self.tilt_image_size_px),
            ):
                if value is not None and not (
                    option == "--tilt_image_size" and self.data_format == "tilt_series"
                ):
                    raise InputError(f"{option}: only with --tomograms and --particles")
            self._check_image_size()
            return
        if self.data_format in ("spa", "tilt_series"):
            raise InputError("--tomograms: real tilt series need --format relion4 or subtomo3d")
        if self.binning is not None:
            _positive("--bin", self.binning)
        self._check_image_size()

    def _check_image_size(self) -> None:
        if self.tilt_image_size_px is not None and min(self.tilt_image_size_px) < 1:
            width, height = self.tilt_image_size_px
            raise InputError(f"--tilt_image_size {width} {height}: expected two positive sizes")

    @property
    def uses_real_tilt_series(self) -> bool:
        """``--tomograms`` and ``--particles`` given: the geometry of real files (``picks``)."""
        return self.tomograms_star is not None

    @property
    def is_tomography(self) -> bool:
        """3D particles from a tilt series (relion4, subtomo3d) rather than 2D images (spa)."""
        return self.data_format != "spa"

    @property
    def noise_free(self) -> bool:
        """``--snr inf``: no noise is added."""
        return math.isinf(self.snr)

    def tilt_angles_deg(self) -> Float64[np.ndarray, " f"]:
        """Tilt angles ``min, min + step, ...`` up to ``max`` (inclusive within 1e-9 degrees)."""
        first, last = self.tilt_range_deg
        count = math.floor((last - first) / self.tilt_step_deg + 1e-9) + 1
        return first + self.tilt_step_deg * np.arange(count, dtype=np.float64)


def _positive(option: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise InputError(f"{option} {value}: expected a positive number")


def _positive_int(option: str, value: int) -> None:
    if value < 1:
        raise InputError(f"{option} {value}: expected a positive whole number")
