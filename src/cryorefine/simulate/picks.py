"""Real tilt series and picked positions as the geometry of a simulated data set.

With ``--tomograms T.star --particles P.star`` every simulated particle is a real
pick: it sits in its tomogram (``rlnTomoName``) at its position, and is seen by
the real tilts of that tomogram, each with the tilt's own projection, defocus
(plus the particle's depth, ``tomo.tilt_geometry``), CTF scale and B-factor and
cumulative dose. This replaces ``--tilt_range``, ``--tilt_step``, ``--dose``
and ``--defocus_range``; the poses, origins and noise stay random as usual.

Positions
    ``rlnCenteredCoordinate*Angst`` (RELION 5), else ``rlnCoordinate*`` (RELION 4,
    bin-1 pixels from the corner); the origins, if any, are folded in as
    RELION does (``position - S origin``, ``S`` the subtomogram matrix).
Pixel size
    ``binning * rlnTomoTiltSeriesPixelSize`` (``--bin``, else ``--angpix`` sets
    the binning); every tomogram used must have the same tilt-series pixel size
    and microscope (one optics group).
Which picks
    As ``relion_tomo_subtomo``: a pick that no tilt sees (its box of
    ``binning * box / 2`` bin-1 pixels' radius does not fit in any tilt image)
    is dropped. Of the others, all, or ``--n_particles`` of them drawn at random
    (reproducibly, from ``--seed``), kept in file order, grouped by tomogram in
    the order tomograms first appear, so that a chunk of particles shares one tilt
    series.
Frames (``--surface_normals``)
    Each particle's subtomogram frame: the picks file's ``rlnTomoSubtomogram*``
    where it has them (not all 0), else one whose z is the surface normal
    estimated from the neighbouring picks (``simulate.surface_frames``); the
    poses are then drawn in those frames.
"""

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float64, Int64

from cryorefine.errors import InputError
from cryorefine.geometry import euler_to_matrix
from cryorefine.io import (
    ParticleSet,
    TomogramSet,
    check_particles_against_tomograms,
    load_particles,
    load_tomograms,
)
from cryorefine.simulate.options import SimulationOptions
from cryorefine.simulate.surface_frames import frame_angles_deg, surface_normals
from cryorefine.tomo import ParticleTilts, TiltSeriesGeometry, particle_tilts, tilt_series_geometry
from cryorefine.tomo.extract_tables import particle_centres_angst

__all__ = ["PickedGeometry", "load_picked_geometry"]


@dataclass(frozen=True)
class PickedGeometry:
    """The chosen picks, their tilt series and the options they resolve (module docstring).

    Attributes
    ----------
    options
        The options with ``n_particles`` (the chosen picks) and ``pixel_size_angst``
        (binning times the tilt-series pixel) filled in.
    tomograms
        The tomograms.star as read.
    geometries
        Each used tomogram's ``TiltSeriesGeometry``, on the simulation's device.
    tomo_names
        Each particle's tomogram.
    particle_numbers
        Each particle's 1-based number among its tomogram's picks in the picks file.
    centered_coordinates_angst
        Each particle's position from its tomogram's centre (origins folded in).
    binning, tilt_series_pixel_size_angst
        ``pixel_size_angst = binning * tilt_series_pixel_size_angst``.
    picks, dropped
        Picks in the file, and those dropped because no tilt sees them.
    microscope
        ``voltage_kv``, ``spherical_aberration_mm``, ``amplitude_contrast`` of the tilt series.
    subtomogram_angles_deg
        Each particle's frame ``rlnTomoSubtomogramRot/Tilt/Psi`` (module docstring);
        None: the tomogram's frame (angles 0).
    """

    options: SimulationOptions
    tomograms: TomogramSet
    geometries: dict[str, TiltSeriesGeometry]
    tomo_names: list[str]
    particle_numbers: Int64[np.ndarray, " b"]
    centered_coordinates_angst: Float64[np.ndarray, "b 3"]
    binning: float
    tilt_series_pixel_size_angst: float
    picks: int
    dropped: int
    microscope: dict[str, float]
    subtomogram_angles_deg: Float64[np.ndarray, "b 3"] | None = None

    @property
    def visibility_radius_px(self) -> float:
        """Radius of the visibility test, bin-1 pixels: ``binning * box / 2``."""
        return self.binning * self.options.box_size / 2

    def chunks(self, step: int) -> list[slice]:
        """Consecutive rows of one tomogram each, at most ``step`` long, covering every row."""
        out, start = [], 0
        names = self.tomo_names
        for row in range(1, len(names) + 1):
            if row == len(names) or names[row] != names[start] or row - start == step:
                out.append(slice(start, row))
                start = row
        return out

    def tilts(self, rows: slice) -> ParticleTilts:
        """Every tilt of particles ``rows`` (one tomogram), on the geometry's device."""
        names = set(self.tomo_names[rows])
        if len(names) != 1:
            raise ValueError(f"rows {rows} span tomograms {sorted(names)}; use chunks()")
        geometry = self.geometries[names.pop()]
        device = geometry.projections.device
        positions = torch.as_tensor(self.centered_coordinates_angst[rows], device=device)
        frames = None
        if self.subtomogram_angles_deg is not None:
            angles = torch.as_tensor(self.subtomogram_angles_deg[rows], device=device)
            frames = euler_to_matrix(angles)
        return particle_tilts(
            geometry,
            positions,
            visibility_radius_px=self.visibility_radius_px,
            subtomogram_rotations=frames,
        )


def _common(
    tomograms: TomogramSet, names: list[str], options: SimulationOptions
) -> tuple[float, float, float, float]:
    """The one tilt-series pixel size and microscope of the tomograms ``names``."""
    values = {}
    for name in names:
        series = tomograms[name]
        ctf = series.ctf_parameters()
        values[name] = (
            series.pixel_size_angst,
            float(ctf.voltage_kv[0]),
            float(ctf.spherical_aberration_mm[0]),
            float(ctf.amplitude_contrast[0]),
        )
    if len(set(values.values())) > 1:
        raise InputError(
            f"{options.tomograms_star}: the tomograms with picks differ in pixel size or "
            f"microscope (pixel, kV, Cs, Q0: {values}); simulate one optics group at a time"
        )
    return next(iter(values.values()))


def _binning(options: SimulationOptions, pixel: float) -> float:
    if options.binning is not None:
        return options.binning
    return options.pixel_size_angst / pixel


def _choose(keep: np.ndarray, options: SimulationOptions, generator: torch.Generator) -> np.ndarray:
    """Rows of the chosen picks (module docstring), in file order."""
    available = np.flatnonzero(keep)
    wanted = options.n_particles
    if wanted is None or wanted == len(available):
        return available
    if wanted > len(available):
        raise InputError(
            f"--n_particles {wanted}: {options.particles_star} has only {len(available)} "
            "picks that a tilt sees"
        )
    order = torch.randperm(len(available), generator=generator)[:wanted]
    chosen: np.ndarray = available[np.sort(order.numpy())]
    return chosen


def _frames(
    particles: ParticleSet,
    positions: np.ndarray,
    tomo: np.ndarray,
    chosen: np.ndarray,
    generator: torch.Generator,
) -> np.ndarray:
    """Frames of the ``chosen`` picks: the file's, else from the normals of all picks."""
    from_file: np.ndarray = particles.subtomogram_angles_deg()  # 0 where absent
    if np.any(from_file != 0):  # frames in the file (all zero: none)
        chosen_frames: np.ndarray = from_file[chosen]
        return chosen_frames
    normals = np.zeros_like(positions)
    for name in dict.fromkeys(tomo.tolist()):
        rows = np.flatnonzero(tomo == name)
        normals[rows] = surface_normals(positions[rows])
    return frame_angles_deg(normals[chosen], generator=generator)


def load_picked_geometry(
    options: SimulationOptions, *, generator: torch.Generator, device: torch.device
) -> PickedGeometry:
    """Read ``--tomograms`` and ``--particles`` and choose the particles (module docstring).

    Raises
    ------
    InputError
        Unreadable files, picks in unknown tomograms, tomograms of different
        pixel sizes or microscopes, or more ``--n_particles`` than visible picks.
    """
    if options.tomograms_star is None or options.particles_star is None:
        raise ValueError("load_picked_geometry needs tomograms_star and particles_star")
    tomograms = load_tomograms(options.tomograms_star)
    particles = load_particles(options.particles_star, check_images=False)
    check_particles_against_tomograms(particles, tomograms)
    names = particles.tomo_names()
    used = list(dict.fromkeys(names))
    pixel, voltage, cs, q0 = _common(tomograms, used, options)
    binning = _binning(options, pixel)
    resolved = dataclasses.replace(options, pixel_size_angst=binning * pixel)
    geometries = {
        name: tilt_series_geometry(
            tomograms[name], device=device, image_size_px=options.tilt_image_size_px
        )
        for name in used
    }
    positions = particle_centres_angst(particles, tomograms, apply_offsets=True)
    radius = binning * options.box_size / 2
    keep = np.zeros(len(names), dtype=bool)
    tomo = np.array(names)
    for name in used:  # one batched test per tomogram
        rows = np.flatnonzero(tomo == name)
        seen = particle_tilts(
            geometries[name],
            torch.as_tensor(positions[rows], device=device),
            visibility_radius_px=radius,
        ).visible
        keep[rows] = seen.any(dim=1).cpu().numpy()
    numbers = np.zeros(len(names), dtype=np.int64)
    for name in used:
        rows = np.flatnonzero(tomo == name)
        numbers[rows] = np.arange(1, len(rows) + 1)
    chosen = _choose(keep, options, generator)
    grouped = chosen[np.argsort([used.index(names[r]) for r in chosen], kind="stable")]
    frames = None
    if options.surface_normals:
        frames = _frames(particles, positions, tomo, grouped, generator)
    return PickedGeometry(
        options=dataclasses.replace(resolved, n_particles=len(grouped)),
        tomograms=tomograms,
        geometries={n: g for n, g in geometries.items() if n in set(tomo[grouped])},
        tomo_names=[names[r] for r in grouped],
        particle_numbers=numbers[grouped],
        centered_coordinates_angst=positions[grouped],
        binning=binning,
        tilt_series_pixel_size_angst=pixel,
        picks=len(names),
        dropped=int((~keep).sum()),
        microscope={
            "voltage_kv": voltage,
            "spherical_aberration_mm": cs,
            "amplitude_contrast": q0,
        },
        subtomogram_angles_deg=frames,
    )
