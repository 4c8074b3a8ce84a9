"""Particle images chunk by chunk: tilts, noise and files, for ``simulate_dataset``.

Chunks: ``chunk_size`` particles at a time (with real tilt series, never two
tomograms in one chunk). Three things overlap: a thread draws the next chunk's
noise from the CPU generator (in particle order, so the stream is the one a
single thread would draw), the main thread computes the chunk (on the GPU when
given), and ``WRITER_THREADS`` threads write the previous chunk's files.
``progress`` is called once a chunk's files are all written.

File names (``image_names``): spa ``NNNNNN@particles.mrcs``; subtomo3d
``subtomograms/particle_NNNNNN.mrc`` and ``_ctf.mrc``; relion4
``subtomograms/TS_NNNN_data.mrc`` and ``_weights.mrc``, or with real tilt series
``subtomograms/<tomogram>/<number>_data.mrc`` and ``_weights.mrc``.
"""

import math
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from cryorefine.fourier.projector import prepare_reference
from cryorefine.io import write_mrc
from cryorefine.simulate.images import (
    MICROSCOPE,
    pseudo_subtomograms,
    spa_images,
    standard_noise,
    subtomograms,
)
from cryorefine.simulate.options import SimulationOptions
from cryorefine.simulate.picks import PickedGeometry
from cryorefine.simulate.picks_tables import picked_image_stems
from cryorefine.simulate.poses import ParticleDraws, TiltScheme, scheme_tilts
from cryorefine.simulate.tables import tomogram_names
from cryorefine.simulate.truth import PADDING_FACTOR
from cryorefine.tomo import ParticleTilts

__all__ = [
    "CHUNK_SIZE",
    "GPU_CHUNK_FACTOR",
    "WRITER_THREADS",
    "chunk_size",
    "image_names",
    "particle_count",
    "simulate_particles",
]

#: Particles simulated per batch at box 64 or less (3D boxes above 64: fewer, ``chunk_size``).
CHUNK_SIZE = 32

#: On a GPU, batches are this many times larger (``chunk_size``).
GPU_CHUNK_FACTOR = 8

#: Threads writing particle files while the next chunk is computed (MRC header
#: statistics and file system calls dominate a GPU run otherwise).
WRITER_THREADS = 4


def chunk_size(options: SimulationOptions, device: torch.device | str = "cpu") -> int:
    """Particles per batch: ``CHUNK_SIZE``, cut by ``(64 / n)^3`` for 3D boxes above 64 pixels.

    On a CUDA device ``GPU_CHUNK_FACTOR`` times more. The data do not depend on
    it: each particle's noise is drawn as whole blocks of the CPU generator
    (``images.standard_noise``), so the stream is the same however the particles
    are chunked.
    Measured peak resident memory of a 1000-particle relion4 run at box 64
    (chunks of 32): 1.2 GB.
    """
    factor = GPU_CHUNK_FACTOR if torch.device(device).type == "cuda" else 1
    if not options.is_tomography or options.box_size <= 64:
        return CHUNK_SIZE * factor
    return max(1, (factor * CHUNK_SIZE * 64**3) // options.box_size**3)


def particle_count(options: SimulationOptions) -> int:
    """``n_particles``, once resolved (real tilt series fill it in from the picks)."""
    if options.n_particles is None:
        raise ValueError("n_particles is resolved from the picks before simulating")
    return options.n_particles


def image_names(
    options: SimulationOptions, picked: PickedGeometry | None
) -> tuple[list[str], list[str] | None]:
    """rlnImageName and rlnCtfImage (None for spa) of every particle (module docstring)."""
    count = particle_count(options)
    if options.data_format == "spa":
        return [f"{i:06d}@particles.mrcs" for i in range(1, count + 1)], None
    if options.data_format == "subtomo3d":
        stems = [f"subtomograms/particle_{i:06d}" for i in range(1, count + 1)]
        return [f"{s}.mrc" for s in stems], [f"{s}_ctf.mrc" for s in stems]
    if picked is not None:
        stems = picked_image_stems(picked)
    else:
        stems = [f"subtomograms/{name}" for name in tomogram_names(count)]
    return [f"{s}_data.mrc" for s in stems], [f"{s}_weights.mrc" for s in stems]


def _chunk(
    options: SimulationOptions,
    reference_ft: Tensor,
    draws: ParticleDraws,
    rows: slice,
    tilts: Callable[[slice], ParticleTilts] | None,
    noise_power: float,
    noise: Tensor | None,
    microscope: dict[str, float],
) -> tuple[Tensor, Tensor | None]:
    """Images of particles ``rows``, and their 3D CTF (subtomo3d) or weights (relion4)."""
    n, pixel, bfactor = options.box_size, options.pixel_size_angst, options.bfactor_angst2
    device = reference_ft.device
    rotations = draws.rotations[rows].to(device, torch.float32)
    origins = draws.origins_px[rows].to(device, torch.float32)
    if options.data_format == "spa":
        defocus = draws.defocus_angst[rows].to(device, torch.float32)
        images = spa_images(
            reference_ft, rotations, origins[:, :2], defocus,
            pixel_size_angst=pixel, box_size=n, noise_sigma=math.sqrt(noise_power) * n,
            bfactor_angst2=bfactor, noise=noise,
        )  # fmt: skip
        return images, None
    assert tilts is not None
    particle_tilts = tilts(rows)
    if options.data_format == "subtomo3d":
        return subtomograms(
            reference_ft, rotations, origins, particle_tilts,
            pixel_size_angst=pixel, box_size=n, noise_sigma=math.sqrt(noise_power * n**3),
            bfactor_angst2=bfactor, microscope=microscope, noise=noise,
        )  # fmt: skip
    return pseudo_subtomograms(
        reference_ft, rotations, origins, particle_tilts,
        pixel_size_angst=pixel, box_size=n, tilt_noise_power=noise_power,
        bfactor_angst2=bfactor, microscope=microscope, noise=noise,
    )  # fmt: skip


def _tilt_source(
    draws: ParticleDraws,
    scheme: TiltScheme | None,
    picked: PickedGeometry | None,
    device: torch.device,
) -> Callable[[slice], ParticleTilts] | None:
    """``rows -> ParticleTilts``: real tilt series, or the scheme at one defocus each."""
    if picked is not None:
        return picked.tilts
    if scheme is None:
        return None
    return lambda rows: scheme_tilts(scheme, draws.defocus_angst[rows].to(device))


def simulate_particles(
    options: SimulationOptions,
    truth: Tensor,
    draws: ParticleDraws,
    noise_power: float,
    *,
    scheme: TiltScheme | None,
    picked: PickedGeometry | None,
    generator: torch.Generator,
    progress: Callable[[int, int], None] | None,
    step: int,
) -> None:
    """Simulate ``step`` particles at a time and write every image file (module docstring)."""
    n, pixel, out = options.box_size, options.pixel_size_angst, options.output_dir
    count = particle_count(options)
    reference_ft = prepare_reference(
        truth.to(torch.float32), padding_factor=PADDING_FACTOR, gridding_correction="separable"
    )
    tilts = _tilt_source(draws, scheme, picked, reference_ft.device)
    names, ctf_names = image_names(options, picked)
    stack = np.zeros((count, n, n), dtype=np.float32) if not options.is_tomography else None
    # RELION writes the CTF^2 || multiplicity volume with voxel size 1 / pixel.
    ctf_voxel = 1.0 / pixel if options.data_format == "relion4" else pixel
    if picked is not None:
        chunks = picked.chunks(step)
    else:
        chunks = [slice(s, min(s + step, count)) for s in range(0, count, step)]
    microscope = dict(MICROSCOPE) if picked is None else picked.microscope
    shape = (n, n) if stack is not None else (n, n, n)

    def draw(rows: slice) -> Tensor | None:
        if noise_power == 0:
            return None
        return standard_noise((rows.stop - rows.start, *shape), generator, torch.float32)

    pending: deque[tuple[slice, list[Future[Path]]]] = deque()
    with ThreadPoolExecutor(1) as drawer, ThreadPoolExecutor(WRITER_THREADS) as writers:
        noise = drawer.submit(draw, chunks[0])
        for index, rows in enumerate(chunks):
            drawn = noise.result()
            if index + 1 < len(chunks):
                noise = drawer.submit(draw, chunks[index + 1])
            images, ctfs = _chunk(
                options, reference_ft, draws, rows, tilts, noise_power, drawn, microscope
            )
            if stack is None:
                assert ctfs is not None
                assert ctf_names is not None
                written = _write_volumes(writers, out, names[rows], images, pixel, options)
                written += _write_volumes(writers, out, ctf_names[rows], ctfs, ctf_voxel, options)
                pending.append((rows, written))
            else:
                stack[rows] = images.cpu().numpy()
                pending.append((rows, []))
            while len(pending) > 1 or (pending and index + 1 == len(chunks)):
                done, files = pending.popleft()
                for file in files:
                    file.result()  # re-raises a failed write here
                if progress is not None:
                    progress(done.stop, count)
    if stack is not None:
        write_mrc(out / "particles.mrcs", stack, voxel_size_angst=pixel)


def _write_volumes(
    writers: ThreadPoolExecutor,
    folder: Path,
    names: list[str],
    volumes: Tensor,
    pixel: float,
    options: SimulationOptions,
) -> list[Future[Path]]:
    """Hand each volume to the writer threads (files and header statistics off this thread)."""
    values = volumes.detach().cpu().numpy()
    for parent in {(folder / name).parent for name in names}:
        parent.mkdir(parents=True, exist_ok=True)
    return [
        writers.submit(
            write_mrc, folder / name, volume, voxel_size_angst=pixel, float16=options.float16
        )
        for name, volume in zip(names, values, strict=True)
    ]
