"""Whole tilt series with ground truth (``--format tilt_series``): small tomograms, many particles.

Scene (``tilt_series_tomograms``)
    ``ceil(n_particles / per_tomogram)`` tomograms ``TS_0001``, ... of ``W x H x 2n``
    bin-1 pixels (``W x H`` the tilt images, ``--tilt_image_size``, default
    ``4n x 4n``; ``n = --box``). Every tilt image sees every particle with a margin
    of ``n`` pixels: centres lie within ``R = min(W, H) / 2 - n - 1`` of the
    tomogram's centre (a rotation moves no point farther from it), in a layer
    ``|z| <= n / 4``, one per cell of an ``n x n`` grid in ``(x, y)`` (cells drawn
    at random, jittered by up to ``n / 8``), so particles are at least ``3n / 4``
    apart. Tilts: the scheme of ``--tilt_range``, ``--tilt_step`` and ``--dose``
    (``poses.tilt_scheme``: ascending angles, dose-symmetric pre-exposure) about
    an axis at ``TILT_AXIS_DEG`` from x, as RELION-5 alignment angles (``rlnTomoYTilt``
    the tilt, ``rlnTomoZRot`` the axis; ``tomo.relion5_projection_matrices``).
    Defocus: the defocus drawn for the tomogram's first particle at the
    tomogram's centre (U = V), plus each particle's depth (``tomo.tilt_geometry``,
    ``rlnTomoHand`` -1). Particle poses, pick offsets (origins) and half sets are
    the draws of ``poses.draw_particles``: the pick is the true centre plus the
    origin, so the particle lies at ``-origin`` from a box centred on the pick.
Images (``simulate_tilt_images``)
    For particle ``b`` (pose ``A``) in tilt ``f`` (rotation ``R_f``, position ``c``
    in the image): the projection's transform ``extract_slices(reference, R_f A)``
    (box ``n``, the projection-slice theorem), padded in real space to a box of
    ``paste_size`` (default ``PASTE_FACTOR n``, room for what the CTF
    delocalises), times ``CTF_f D_f`` (the particle's defocus in the tilt, dose
    weight of the tilt's pre-exposure, ``fourier.ctf_2d``, ``fourier.dose_weight``)
    and the signal's B-factor envelope, moved by ``c - round(c)`` (a phase),
    negated (particles dark, as in real tilt images) and added to the image with
    its centre pixel on ``round(c)``. Neighbours overlap where their boxes do.
    Then white Gaussian noise of ``noise_sigma`` per pixel: ``sqrt(N) n`` for the
    noise power ``N = S / snr`` per coefficient of a tilt-image box of ``n``
    (``SNR_DEFINITION``, as ``relion4``).
Files (``simulate_tilt_series``)
    ``tilt_series/<name>.mrcs`` (one MRC stack per tomogram, tilts in table
    order) and the tables of ``simulate.tilt_series_tables``.
"""

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Complex, Float, Float64, Int64
from torch import Tensor

from cryorefine.errors import InputError
from cryorefine.fourier.conventions import from_fourier, to_fourier
from cryorefine.fourier.ctf import ctf_2d, dose_weight
from cryorefine.fourier.filters import bfactor_envelope, shift_fourier
from cryorefine.fourier.projector import extract_slices, prepare_reference
from cryorefine.io import TiltSeries, write_mrc
from cryorefine.simulate.images import MICROSCOPE
from cryorefine.simulate.options import SimulationOptions
from cryorefine.simulate.poses import ParticleDraws, TiltScheme
from cryorefine.simulate.tables import tomogram_names
from cryorefine.simulate.tilt_series_tables import (
    HAND,
    TILT_SERIES_FOLDER,
    tilt_series_global_row,
    tilt_series_particle_tables,
    tilt_series_table,
    tilt_series_tomogram,
    write_tilt_series_files,
)
from cryorefine.simulate.truth import PADDING_FACTOR
from cryorefine.tomo import ParticleTilts, particle_tilts, relion5_projection_matrices
from cryorefine.tomo import tilt_series_geometry as geometry_of

__all__ = [
    "PASTE_FACTOR",
    "TILT_AXIS_DEG",
    "SimulatedTomogram",
    "simulate_tilt_images",
    "simulate_tilt_series",
    "tilt_series_tomograms",
]

#: Side of the box a particle's projection is pasted in, in particle boxes.
PASTE_FACTOR = 2

#: Tilt axis of the simulated tilt series, degrees from x (the tutorial's is about 85).
TILT_AXIS_DEG = 85.0


@dataclass(frozen=True)
class SimulatedTomogram:
    """One simulated tilt series: its tables and its particles (module docstring).

    Attributes
    ----------
    series
        The tomogram as ``io.load_tomograms`` reads it back.
    rows
        Its particles: rows of the particle draws and tables.
    centered_coordinates_angst
        True centres from the tomogram's centre.
    image_size_px
        ``(W, H)`` of its tilt images.
    """

    series: TiltSeries
    rows: Int64[np.ndarray, " b"]
    centered_coordinates_angst: Float64[np.ndarray, "b 3"]
    image_size_px: tuple[int, int]


def _paste(images: Tensor, boxes: Tensor, tilt: Tensor, corner: Tensor) -> None:
    """Add ``boxes (c, P, P)`` into ``images (i, H, W)`` at ``corner (c, 2)`` of tilt ``tilt``."""
    _, height, width = images.shape
    steps = torch.arange(boxes.shape[-1], device=images.device)
    x = corner[:, 0, None] + steps  # (c, P)
    y = corner[:, 1, None] + steps
    inside = ((y >= 0) & (y < height))[:, :, None] & ((x >= 0) & (x < width))[:, None, :]
    flat = (tilt[:, None, None] * height + y[:, :, None]) * width + x[:, None, :]
    images.view(-1).index_add_(0, flat[inside], boxes[inside])


def simulate_tilt_images(
    reference_ft: Complex[Tensor, "p p ph"],
    rotations: Float[Tensor, "b 3 3"],
    tilts: ParticleTilts,
    *,
    image_size_px: tuple[int, int],
    box_size: int,
    pixel_size_angst: float,
    paste_size: int | None = None,
    microscope: Mapping[str, float] = MICROSCOPE,
    bfactor_angst2: float = 0.0,
    noise_sigma: float = 0.0,
    generator: torch.Generator | None = None,
    max_chunk_elements: int = 2**22,
) -> Float[Tensor, "i h w"]:
    """The tilt images of one tomogram holding particles of poses ``rotations`` (module docstring).

    ``tilts`` are the particles' true places (``tomo.particle_tilts`` of their
    centres); ``noise_sigma`` 0 gives noise-free images, otherwise the noise is
    drawn from ``generator`` (float32, on its device). Real dtype and device of
    ``reference_ft``; chunks of ``max_chunk_elements`` pasted pixels.
    """
    b, f = tilts.visible.shape
    device = reference_ft.device
    real = reference_ft.real.dtype
    paste = PASTE_FACTOR * box_size if paste_size is None else paste_size
    width, height = image_size_px
    images = torch.zeros(f, height, width, dtype=real, device=device)
    matrices = (
        tilts.rotations.to(device, torch.float64) @ rotations.to(device, torch.float64)[:, None]
    )
    matrices = matrices.reshape(b * f, 3, 3)
    envelope = bfactor_envelope(
        paste, 2, bfactor_angst2=bfactor_angst2, pixel_size_angst=pixel_size_angst,
        device=device, dtype=real,
    )  # fmt: skip

    def per_pair(value: Tensor) -> Tensor:
        return value.reshape(b * f, *value.shape[2:]).to(device, torch.float64)

    defocus_u, defocus_v = per_pair(tilts.defocus_u_angst), per_pair(tilts.defocus_v_angst)
    angle, dose = per_pair(tilts.defocus_angle_deg), per_pair(tilts.dose_e_per_angst2)
    bfactor, scale = per_pair(tilts.bfactor_angst2), per_pair(tilts.scale)
    positions = per_pair(tilts.position_px)
    step = max(1, max_chunk_elements // (paste * paste))
    for first in range(0, b * f, step):
        pairs = slice(first, min(b * f, first + step))
        ft = extract_slices(
            reference_ft, matrices[pairs].to(real), out_size=box_size, padding_factor=PADDING_FACTOR
        )
        if paste != box_size:
            start = paste // 2 - box_size // 2
            padded = ft.real.new_zeros((ft.shape[0], paste, paste))
            padded[:, start : start + box_size, start : start + box_size] = from_fourier(
                ft, box_size, 2
            )
            ft = to_fourier(padded, 2)
        ctf = ctf_2d(
            defocus_u_angst=defocus_u[pairs], defocus_v_angst=defocus_v[pairs],
            defocus_angle_deg=angle[pairs], voltage_kv=microscope["voltage_kv"],
            spherical_aberration_mm=microscope["spherical_aberration_mm"],
            amplitude_contrast=microscope["amplitude_contrast"], bfactor_angst2=bfactor[pairs],
            scale=scale[pairs], pixel_size_angst=pixel_size_angst, box_size=paste,
        ) * dose_weight(dose[pairs], pixel_size_angst=pixel_size_angst, box_size=paste)  # fmt: skip
        centre = torch.floor(positions[pairs] + 0.5)
        ft = shift_fourier(ft * (ctf.to(real) * envelope), (positions[pairs] - centre).to(real))
        boxes = -from_fourier(ft, paste, 2)
        tilt = torch.arange(pairs.start, pairs.stop, device=device) % f
        _paste(images, boxes, tilt, centre.to(torch.int64) - paste // 2)
    if noise_sigma > 0:
        if generator is None:
            raise ValueError("noise needs a generator")
        drawn = torch.randn(
            (f, height, width), generator=generator, device=generator.device, dtype=torch.float32
        )
        images = images + noise_sigma * drawn.to(device, real)
    return images


def _cells(box: int, image_size_px: tuple[int, int]) -> tuple[Tensor, float, float]:
    """Cell centres ``(c, 2)`` (pixels from the centre), the layer's half-depth and the jitter."""
    reach = min(image_size_px) / 2 - box - 1
    depth, jitter = box / 4, box / 8
    if reach <= depth:
        return torch.zeros(0, 2, dtype=torch.float64), depth, jitter
    disc = math.sqrt(reach * reach - depth * depth)
    count = math.ceil(disc / box)
    axis = box * (torch.arange(-count, count, dtype=torch.float64) + 0.5)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    cells = torch.stack([x.reshape(-1), y.reshape(-1)], dim=-1)
    keep = torch.linalg.vector_norm(cells, dim=-1) + jitter * math.sqrt(2) <= disc
    return cells[keep], depth, jitter


def tilt_series_tomograms(
    options: SimulationOptions,
    draws: ParticleDraws,
    scheme: TiltScheme,
    *,
    generator: torch.Generator,
    microscope: Mapping[str, float] = MICROSCOPE,
) -> list[SimulatedTomogram]:
    """The tomograms, their tilt series and where their particles are (module docstring).

    Raises
    ------
    InputError
        ``--per_tomogram`` particles do not fit in ``--tilt_image_size`` images.
    """
    box, pixel = options.box_size, options.pixel_size_angst
    image = options.tilt_image_size_px or (4 * box, 4 * box)
    size = (int(image[0]), int(image[1]), 2 * box)
    cells, depth, jitter = _cells(box, image)
    per = options.particles_per_tomogram
    if per > cells.shape[0]:
        raise InputError(
            f"--per_tomogram {per}: tilt images of {image[0]} x {image[1]} pixels hold at most "
            f"{cells.shape[0]} particles of box {box} seen by every tilt; lower --per_tomogram "
            "or raise --tilt_image_size"
        )
    count = len(draws.half_sets)
    names = tomogram_names(math.ceil(count / per))
    tilt = scheme.tilt_deg.to(torch.float64)
    x_tilt, z_rot = torch.zeros_like(tilt), torch.full_like(tilt, TILT_AXIS_DEG)
    projections = relion5_projection_matrices(
        x_tilt, tilt, z_rot, torch.zeros_like(tilt), torch.zeros_like(tilt),
        pixel_size_angst=pixel, tomogram_size_px=size, image_size_px=size[:2],
    )  # fmt: skip
    tomograms = []
    for index, name in enumerate(names):
        rows = np.arange(index * per, min(count, (index + 1) * per))
        chosen = cells[torch.randperm(cells.shape[0], generator=generator)[: len(rows)]]
        unit = torch.rand(len(rows), 3, generator=generator, dtype=torch.float64) * 2 - 1
        centres = torch.cat([chosen + jitter * unit[:, :2], depth * unit[:, 2:]], dim=1)
        global_row = tilt_series_global_row(
            name, microscope=dict(microscope), pixel_size_angst=pixel, tomogram_size_px=size,
            frame_count=len(tilt), dose_per_tilt_e_per_angst2=options.dose_per_tilt_e_per_angst2,
        )  # fmt: skip
        table = tilt_series_table(
            name, tilt_deg=tilt.numpy(), x_tilt_deg=x_tilt.numpy(), z_rot_deg=z_rot.numpy(),
            pre_exposure_e_per_angst2=scheme.pre_exposure_e_per_angst2.numpy(),
            defocus_angst=float(draws.defocus_angst[rows[0]]), projections=projections.numpy(),
        )  # fmt: skip
        tomograms.append(
            SimulatedTomogram(
                series=tilt_series_tomogram(global_row, table, options.output_dir),
                rows=rows,
                centered_coordinates_angst=(centres * pixel).numpy(),
                image_size_px=(size[0], size[1]),
            )
        )
    return tomograms


def _write_images(
    options: SimulationOptions,
    reference_ft: Tensor,
    draws: ParticleDraws,
    tomogram: SimulatedTomogram,
    noise_power: float,
    generator: torch.Generator,
) -> Path:
    """Compute one tomogram's tilt images and write them as ``tilt_series/<name>.mrcs``."""
    device = reference_ft.device
    geometry = geometry_of(tomogram.series, device=device, image_size_px=tomogram.image_size_px)
    centres = torch.as_tensor(tomogram.centered_coordinates_angst, device=device)
    images = simulate_tilt_images(
        reference_ft,
        draws.rotations[tomogram.rows].to(device),
        particle_tilts(geometry, centres),
        image_size_px=tomogram.image_size_px,
        box_size=options.box_size,
        pixel_size_angst=options.pixel_size_angst,
        bfactor_angst2=options.bfactor_angst2,
        noise_sigma=math.sqrt(noise_power) * options.box_size,
        generator=generator,
    )
    return write_mrc(
        options.output_dir / TILT_SERIES_FOLDER / f"{tomogram.series.name}.mrcs",
        images.cpu().numpy(),
        voxel_size_angst=options.pixel_size_angst,
        float16=options.float16,
    )


def simulate_tilt_series(
    options: SimulationOptions,
    truth: Float[Tensor, "n n n"],
    draws: ParticleDraws,
    scheme: TiltScheme,
    noise_power: float,
    *,
    noise_generator: torch.Generator,
    layout_generator: torch.Generator,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Path, Path, dict[str, object]]:
    """Lay out, compute and write the tilt series, their tables and the picks (module docstring).

    Computed on the device of ``truth`` in single precision; the layout and the
    noise come from the CPU generators, one tomogram at a time, so they do not
    depend on the device. Returns tomograms.star, optimisation_set.star and what
    ``simulation.json`` records of the layout.
    """
    tomograms = tilt_series_tomograms(options, draws, scheme, generator=layout_generator)
    reference_ft = prepare_reference(
        truth.to(torch.float32), padding_factor=PADDING_FACTOR, gridding_correction="separable"
    )
    (options.output_dir / TILT_SERIES_FOLDER).mkdir(parents=True, exist_ok=True)
    done = 0
    for tomogram in tomograms:
        _write_images(options, reference_ft, draws, tomogram, noise_power, noise_generator)
        done += len(tomogram.rows)
        if progress is not None:
            progress(done, len(draws.half_sets))
    pixel = options.pixel_size_angst
    optics, particles, truth_table = tilt_series_particle_tables(
        microscope=dict(MICROSCOPE),
        pixel_size_angst=pixel,
        tomo_names=[t.series.name for t in tomograms for _ in t.rows],
        centered_coordinates_angst=np.concatenate(
            [t.centered_coordinates_angst for t in tomograms]
        ),
        origins_angst=draws.origins_px.cpu().numpy() * pixel,
        angles_deg=draws.angles_deg.cpu().numpy(),
        half_sets=draws.half_sets.cpu().numpy(),
    )
    tomograms_star, optimisation = write_tilt_series_files(
        options.output_dir,
        [t.series for t in tomograms],
        optics=optics,
        particles=particles,
        truth=truth_table,
    )
    first = tomograms[0]
    layout = {
        "layout": "per tomogram: particles in cells of a box-sized grid, jittered by box/8, "
        "in a layer |z| <= box/4, within min(W, H)/2 - box - 1 of the centre (seen by "
        "every tilt); picks = true centre + origin",
        "tilt_matrices": "RELION-5 angles: rlnTomoYTilt = tilt, rlnTomoZRot = tilt axis, "
        "projections tomo.relion5_projection_matrices (written as rlnTomoProjX/Y/Z/W)",
        "tilt_axis_deg": TILT_AXIS_DEG,
        "particles_per_tomogram": options.particles_per_tomogram,
        "tomograms": len(tomograms),
        "tilt_image_size_px": list(first.image_size_px),
        "tomogram_size_px": list(first.series.size_px),
        "paste_box_px": PASTE_FACTOR * options.box_size,
        "contrast": "particles dark (negated projections); extraction inverts by default",
        "hand": HAND,
    }
    return tomograms_star, optimisation, layout
