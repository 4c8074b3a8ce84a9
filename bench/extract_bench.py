"""Throughput of ``cryorefine extract`` against the memory-bandwidth floor.

    python3 bench/extract_bench.py [--gpu] [--particles 1000] [--tilts 41] [--box 64]
        [--files] [--out bench_extract.json]

One tilt series of ``--tilts`` tilt images (+-60 degrees, 85-degree axis, 2048 x 2048
bin-1 pixels of random values), ``--particles`` particles at random places in it,
extracted at bin 1 with a box of ``--box``: the 2D boxes, binning, CTF and crop
(``tomo.tilt_image_transforms``), then either the RELION-4 pseudo-subtomogram with
its CTF^2 || multiplicity volume (``tomo.pseudo_subtomogram_volumes``, the slab
insertion built once per tilt series as ``extract_particles`` does) or the 2D
stacks, batch by batch, each batch's results copied to the host as the writer
threads would receive them. ``--files`` adds the whole command on the same kind of
data written to a temporary folder (MRC and STAR files in and out), which the disk
may dominate.

Floor: the bytes the extraction must move at least, over the copy bandwidth measured
in the same run (a clone of 1 GiB on a GPU, 256 MiB on the CPU, read + write counted):
the tilt images read once, the boxes (particles x tilts x box^2 float32) read, and
the outputs written once (data n^3 and weights 2 n^2 (n/2 + 1) float32, or the 2D
stacks particles x tilts x n^2). On a GPU the outputs must also reach the host: their
bytes over the device-to-host rate into pinned memory, measured in the same run (1 GiB),
is the second floor, and the larger of the two is the one the ratio uses. The results
come to the host as ``extract`` copies them (``tomo.HostBuffers``), and the seconds of
the copies are shown apart. Default on the CPU: 200 particles (about a second per 8
particles on two cores); on a GPU: 1000. Prints a table and writes the rows as JSON.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cryorefine.fourier.conventions import from_fourier
from cryorefine.io import (
    OptimisationSet,
    TiltSeries,
    write_mrc,
    write_optimisation_set,
    write_star,
)
from cryorefine.simulate import MICROSCOPE
from cryorefine.simulate.tilt_series_tables import (
    tilt_series_global_row,
    tilt_series_table,
    tilt_series_tomogram,
)
from cryorefine.tomo import (
    ExtractOptions,
    HostBuffers,
    extract_particles,
    particle_tilts,
    pseudo_subtomogram_volumes,
    relion5_projection_matrices,
    slab_insertion,
    tilt_image_transforms,
    tilt_series_geometry,
)

PIXEL = 2.7
IMAGE = 2048


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def copy_bandwidth(device: torch.device) -> float:
    """Bytes per second of a plain copy (read + write counted), median of 5."""
    size = (1 << 30) if device.type == "cuda" else (1 << 28)
    x = torch.empty(size // 4, dtype=torch.float32, device=device)
    x.clone()
    times = []
    for _ in range(5):
        _sync(device)
        start = time.perf_counter()
        x.clone()
        _sync(device)
        times.append(time.perf_counter() - start)
    return 2 * size / sorted(times)[2]


def host_bandwidth(device: torch.device) -> float | None:
    """Bytes per second from the device into pinned host memory (median of 5), None on a CPU."""
    if device.type != "cuda":
        return None
    x = torch.empty((1 << 30) // 4, dtype=torch.float32, device=device)
    host = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
    times = []
    for _ in range(5):
        _sync(device)
        start = time.perf_counter()
        host.copy_(x, non_blocking=True)
        _sync(device)
        times.append(time.perf_counter() - start)
    return (1 << 30) / sorted(times)[2]


def tilt_series(folder: Path, tilts: int) -> TiltSeries:
    """A tilt series of ``tilts`` images from -60 to +60 degrees (tables in ``folder``)."""
    angles = torch.linspace(-60.0, 60.0, tilts, dtype=torch.float64)
    zeros = torch.zeros_like(angles)
    size = (IMAGE, IMAGE, 512)
    projections = relion5_projection_matrices(
        zeros, angles, zeros + 85.0, zeros, zeros,
        pixel_size_angst=PIXEL, tomogram_size_px=size, image_size_px=size[:2],
    )  # fmt: skip
    order = np.argsort(np.argsort(np.abs(angles.numpy()), kind="stable"), kind="stable")
    row = tilt_series_global_row(
        "TS_01", microscope=MICROSCOPE, pixel_size_angst=PIXEL, tomogram_size_px=size,
        frame_count=tilts, dose_per_tilt_e_per_angst2=3.0,
    )  # fmt: skip
    table = tilt_series_table(
        "TS_01", tilt_deg=angles.numpy(), x_tilt_deg=zeros.numpy(), z_rot_deg=zeros.numpy() + 85,
        pre_exposure_e_per_angst2=3.0 * order, defocus_angst=25000.0,
        projections=projections.numpy(),
    )  # fmt: skip
    return tilt_series_tomogram(row, table, folder)


def _positions(count: int, gen: torch.Generator) -> torch.Tensor:
    """Centred Angstrom positions well inside the images at every tilt."""
    reach = torch.tensor([600.0, 600.0, 150.0], dtype=torch.float64) * PIXEL
    return (2 * torch.rand(count, 3, generator=gen, dtype=torch.float64) - 1) * reach


def bench_compute(
    device: torch.device, particles: int, tilts: int, box: int, stack2d: bool, batch: int
) -> dict[str, float]:
    """Seconds of the in-memory extraction (module docstring), one warm-up batch first."""
    gen = torch.Generator().manual_seed(1)
    folder = Path(tempfile.mkdtemp())
    series = tilt_series(folder, tilts)
    geometry = tilt_series_geometry(series, device=device, image_size_px=(IMAGE, IMAGE))
    images = torch.randn(tilts, IMAGE, IMAGE, generator=gen).to(device)
    all_tilts = particle_tilts(
        geometry, _positions(particles, gen).to(device), visibility_radius_px=box / 2
    )

    host = HostBuffers(slots=2)
    to_host = [0.0]

    def copied(*results: torch.Tensor) -> None:
        _sync(device)
        start = time.perf_counter()
        for name, result in enumerate(results):
            host.copy(result, str(name))
        to_host[0] += time.perf_counter() - start

    def run(count: int) -> None:
        insertion = None if stack2d else slab_insertion(all_tilts.rotations[0], box_size=box)
        for first in range(0, count, batch):
            index = torch.arange(first, min(count, first + batch), device=device)
            part = type(all_tilts)(**{k: v[index] for k, v in vars(all_tilts).items()})
            z = tilt_image_transforms(images, part, geometry, binning=1.0, box_size=box,
                                      crop_size=box)  # fmt: skip
            if stack2d:
                copied(from_fourier(z, box, 2))
                continue
            copied(*pseudo_subtomogram_volumes(
                z, part, voltage_kv=300.0, spherical_aberration_mm=2.7, amplitude_contrast=0.1,
                pixel_size_angst=PIXEL, insertion=insertion,
            ))  # fmt: skip

    run(min(2 * batch, particles))  # both host slots allocated before the timing
    _sync(device)
    to_host[0] = 0.0
    start = time.perf_counter()
    run(particles)
    _sync(device)
    seconds = time.perf_counter() - start
    nh = box // 2 + 1
    written = particles * (tilts * box * box if stack2d else box**3 + 2 * box * box * nh) * 4
    read = tilts * IMAGE * IMAGE * 4 + particles * tilts * box * box * 4
    return {
        "seconds": seconds,
        "to_host_seconds": to_host[0],
        "bytes": float(read + written),
        "host_bytes": float(written),
    }


def bench_files(device: torch.device, particles: int, tilts: int, box: int) -> dict[str, float]:
    """Seconds of ``extract_particles`` on files (module docstring)."""
    gen = torch.Generator().manual_seed(2)
    folder = Path(tempfile.mkdtemp())
    series = tilt_series(folder, tilts)
    (folder / "tilt_series").mkdir()
    write_star({"TS_01": series.tilts}, folder / "tilt_series" / "TS_01.star")
    write_star({"global": pd.DataFrame([series.global_row])},
               folder / "tomograms.star")  # fmt: skip
    stack = torch.randn(tilts, IMAGE, IMAGE, generator=gen).numpy()
    write_mrc(folder / "tilt_series" / "TS_01.mrcs", stack, voxel_size_angst=PIXEL)
    positions = _positions(particles, gen).numpy()
    picks = {"rlnTomoName": ["TS_01"] * particles}
    for column, axis in enumerate("XYZ"):
        picks[f"rlnCenteredCoordinate{axis}Angst"] = positions[:, column]
    write_star({"particles": pd.DataFrame(picks)}, folder / "picks.star")
    write_optimisation_set(
        OptimisationSet(
            particles_file=folder / "picks.star", tomograms_file=folder / "tomograms.star"
        ),
        folder / "set.star",
    )
    options = ExtractOptions(
        optimisation_set=folder / "set.star", output_dir=folder / "out", box_size=box,
        batch_size=256 if device.type == "cuda" else 32,
    )  # fmt: skip
    start = time.perf_counter()
    extract_particles(options, device=device)
    _sync(device)
    seconds = time.perf_counter() - start
    nh = box // 2 + 1
    written = particles * (box**3 + 2 * box * box * nh) * 4
    read = tilts * IMAGE * IMAGE * 4 + particles * tilts * box * box * 4
    return {"seconds": seconds, "bytes": float(read + written), "host_bytes": float(written)}


def main() -> None:
    """Run the benchmark (module docstring)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="run on the first CUDA device")
    parser.add_argument("--particles", type=int, default=None)
    parser.add_argument("--tilts", type=int, default=41)
    parser.add_argument("--box", type=int, default=64)
    parser.add_argument("--files", action="store_true", help="also time the command on files")
    parser.add_argument("--out", default="bench_extract.json")
    args = parser.parse_args()
    device = torch.device("cuda" if args.gpu else "cpu")
    particles = args.particles or (1000 if device.type == "cuda" else 200)
    batch = 256 if device.type == "cuda" else 32
    bandwidth = copy_bandwidth(device)
    to_host_rate = host_bandwidth(device)
    rows = []
    cases = [("pseudo-subtomograms", False), ("2D stacks", True)]
    timings = [(name, bench_compute(device, particles, args.tilts, args.box, flag, batch))
               for name, flag in cases]  # fmt: skip
    if args.files:
        timings.append(("command on files", bench_files(device, particles, args.tilts, args.box)))
    for name, timing in timings:
        memory_floor = timing["bytes"] / bandwidth
        host_floor = 0.0 if to_host_rate is None else timing["host_bytes"] / to_host_rate
        floor = max(memory_floor, host_floor)
        rows.append(
            {
                "device": str(device if device.type == "cpu" else torch.cuda.get_device_name()),
                "operation": name,
                "particles": particles,
                "tilts": args.tilts,
                "box": args.box,
                "seconds": timing["seconds"],
                "particles_per_second": particles / timing["seconds"],
                "to_host_seconds": timing.get("to_host_seconds"),
                "memory_floor_seconds": memory_floor,
                "to_host_floor_seconds": host_floor,
                "floor_seconds": floor,
                "ratio_to_floor": timing["seconds"] / floor,
                "bandwidth_gb_per_s": bandwidth / 1e9,
                "to_host_gb_per_s": None if to_host_rate is None else to_host_rate / 1e9,
            }
        )
    header = (
        f"{'operation':<22}{'particles':>10}{'seconds':>10}{'to host s':>10}{'per s':>10}"
        f"{'floor s':>10}{'x floor':>9}"
    )
    rates = f"copy bandwidth {bandwidth / 1e9:.1f} GB/s"
    if to_host_rate is not None:
        rates += f", to pinned host memory {to_host_rate / 1e9:.1f} GB/s"
    print(f"device {rows[0]['device']}, {rates}")  # noqa: T201
    print(header)  # noqa: T201
    for row in rows:
        to_host = "" if row["to_host_seconds"] is None else f"{row['to_host_seconds']:.2f}"
        print(  # noqa: T201
            f"{row['operation']:<22}{row['particles']:>10}{row['seconds']:>10.2f}{to_host:>10}"
            f"{row['particles_per_second']:>10.1f}{row['floor_seconds']:>10.4f}"
            f"{row['ratio_to_floor']:>9.1f}"
        )
    Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
