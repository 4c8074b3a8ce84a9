"""Host memory of loading and streaming particles: it must not grow with the count past the tables.

    python3 bench/memory_bench.py [--counts 10000 30000 100000] [--box 32] \\
        [--batch_size 256] [--gpu] [--work FOLDER] [--out bench_memory.json]

Writes one float16 stack of the largest count (box 32: 100,000 images are 195 MiB,
filled chunk by chunk through a memory map) and, per count, a particles STAR
file naming its first images, in ``--work`` (default: a temporary folder,
removed at the end). Each count is measured in a fresh process:

1. after importing cryorefine and torch (``baseline``);
2. after ``io.load_particles`` with its image checks (the tables, ``tables_mib``:
   pandas' deep size of data_particles);
3. while every particle goes through ``tomo.particle_batches`` (images read from
   the memory map one batch at a time, Fourier transformed, CTFs computed, on
   the CPU or with ``--gpu`` the first GPU), sampling the process's memory after
   each batch.

Reported per count: anonymous memory (``RssAnon``: what the process itself
holds; file pages of the memory map are the kernel's cache and can be dropped)
after loading and at its peak while streaming, the growth while streaming (peak
minus after loading: should be a few batches, the same for every count), the
peak resident size (``VmHWM``, file pages included) and the seconds taken. One
table row per count, then the same as JSON.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import starfile

MIB = 2**20


def _status_kib(field: str) -> int:
    """A ``/proc/self/status`` field in KiB (``RssAnon``, ``VmHWM``...)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def write_stack(path: Path, count: int, box: int, *, seed: int = 0) -> None:
    """``count`` float16 images of ``box``^2 pixels of white noise, written through a map."""
    rng = np.random.default_rng(seed)
    with mrcfile.new_mmap(path, shape=(count, box, box), mrc_mode=12, overwrite=True) as mrc:
        mrc.set_image_stack()
        mrc.voxel_size = 2.0
        for start in range(0, count, 10_000):
            stop = min(start + 10_000, count)
            mrc.data[start:stop] = rng.standard_normal((stop - start, box, box), np.float32)


def write_star(path: Path, stack: Path, count: int, box: int, *, seed: int = 0) -> None:
    """A particles file of ``count`` rows naming the first images of ``stack`` (SPA, with CTF)."""
    rng = np.random.default_rng(seed)
    optics = pd.DataFrame(
        {
            "rlnOpticsGroup": [1],
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnVoltage": [300.0],
            "rlnSphericalAberration": [2.7],
            "rlnAmplitudeContrast": [0.1],
            "rlnImagePixelSize": [2.0],
            "rlnImageSize": [box],
            "rlnImageDimensionality": [2],
        }
    )
    particles = pd.DataFrame(
        {
            "rlnImageName": [f"{i:06d}@{stack.name}" for i in range(1, count + 1)],
            "rlnDefocusU": rng.uniform(1e4, 3e4, count),
            "rlnDefocusV": rng.uniform(1e4, 3e4, count),
            "rlnDefocusAngle": rng.uniform(-90, 90, count),
            "rlnAngleRot": rng.uniform(-180, 180, count),
            "rlnAngleTilt": rng.uniform(0, 180, count),
            "rlnAnglePsi": rng.uniform(-180, 180, count),
            "rlnOriginXAngst": rng.uniform(-4, 4, count),
            "rlnOriginYAngst": rng.uniform(-4, 4, count),
            "rlnRandomSubset": rng.integers(1, 3, count),
            "rlnOpticsGroup": np.ones(count, dtype=np.int64),
        }
    )
    starfile.write({"optics": optics, "particles": particles}, path, overwrite=True)


def measure(star: Path, batch_size: int, gpu: bool) -> dict[str, float]:
    """Run in a fresh process: memory after imports, after loading, and while streaming."""
    import torch

    from cryorefine.io import load_particles
    from cryorefine.tomo import particle_batches

    device = torch.device("cuda" if gpu else "cpu")
    baseline = _status_kib("RssAnon")
    start = time.perf_counter()
    particles = load_particles(star)
    load_seconds = time.perf_counter() - start
    loaded = _status_kib("RssAnon")
    peak = loaded
    power = torch.zeros((), dtype=torch.float64, device=device)
    start = time.perf_counter()
    for batch in particle_batches(particles, batch_size=batch_size, device=device):
        power += (batch.ctf * batch.data_ft).abs().square().sum()  # every image used
        peak = max(peak, _status_kib("RssAnon"))
    if gpu:
        torch.cuda.synchronize()
    return {
        "particles": len(particles),
        "tables_mib": particles.particles.memory_usage(deep=True).sum() / MIB,
        "baseline_anon_mib": baseline / 1024,
        "loaded_anon_mib": loaded / 1024,
        "streaming_peak_anon_mib": peak / 1024,
        "streaming_growth_mib": (peak - loaded) / 1024,
        "peak_rss_mib": _status_kib("VmHWM") / 1024,
        "load_seconds": load_seconds,
        "stream_seconds": time.perf_counter() - start,
        "power": float(power),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[10_000, 30_000, 100_000])
    parser.add_argument("--box", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--work", default=None, help="folder for the files (default: temporary)")
    parser.add_argument("--out", default="bench_memory.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # STAR file to measure, in a child
    args = parser.parse_args()
    if args.child:
        row = measure(Path(args.child), args.batch_size, args.gpu)
        sys.stdout.write(json.dumps(row) + "\n")
        return
    with tempfile.TemporaryDirectory() as temporary:
        work = Path(args.work or temporary)
        work.mkdir(parents=True, exist_ok=True)
        rows, summary = _run(args, work)
    columns = [
        "particles",
        "tables_mib",
        "baseline_anon_mib",
        "loaded_anon_mib",
        "streaming_peak_anon_mib",
        "streaming_growth_mib",
        "peak_rss_mib",
        "load_seconds",
        "stream_seconds",
    ]
    lines = [" | ".join(columns)]
    for row in rows:
        cells = [f"{row[c]:.2f}" if isinstance(row[c], float) else str(row[c]) for c in columns]
        lines.append(" | ".join(cells))
    sys.stdout.write("\n".join(lines) + "\n")
    Path(args.out).write_text(json.dumps(summary, indent=1))


def _run(args: argparse.Namespace, work: Path) -> tuple[list[dict], dict]:
    """Write the files in ``work``, measure each count in a child process."""
    stack = work / "particles.mrcs"
    start = time.perf_counter()
    write_stack(stack, max(args.counts), args.box)
    stack_seconds = time.perf_counter() - start
    rows = []
    for count in sorted(args.counts):
        star = work / f"particles_{count}.star"
        write_star(star, stack, count, args.box)
        command = [sys.executable, __file__, "--child", str(star)]
        command += ["--batch_size", str(args.batch_size)] + (["--gpu"] if args.gpu else [])
        result = subprocess.run(command, capture_output=True, text=True, check=True)
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
    summary = {
        "box": args.box,
        "batch_size": args.batch_size,
        "device": "cuda" if args.gpu else "cpu",
        "stack_mib": stack.stat().st_size / MIB,
        "stack_write_seconds": stack_seconds,
        "rows": rows,
    }
    return rows, summary


if __name__ == "__main__":
    main()
