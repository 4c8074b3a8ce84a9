"""Throughput of the projector and back-projector, against the memory-bandwidth floor.

    python3 bench/fourier_bench.py [--device cuda] [--sizes 64 128] [--out bench_fourier.json]

For each box size n: slices extracted and inserted per second (2D data), and
volumes rotated and inserted per second (3D data), at padding 2, float32
reference and float64 accumulators as refine uses them. The floor of each
operation is the bytes it must move at least (its output or input samples once,
complex64 = 8 bytes, plus the reference or accumulators once) over the copy
bandwidth measured in the same run (a device-to-device clone of 1 GiB, or
256 MiB on the CPU). Prints a table and writes the same rows as JSON.
"""

import argparse
import json
import time
from collections.abc import Callable

import torch

from cryorefine.fourier import (
    extract_slices,
    insert_slices,
    insert_volumes,
    prepare_reference,
    rotate_volume,
    zero_accumulators,
)
from cryorefine.geometry import euler_to_matrix


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median seconds of ``repeats`` calls after one warm-up."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def copy_bandwidth(device: torch.device) -> float:
    """Bytes per second of a plain copy (read + write counted)."""
    size = (1 << 30) if device.type == "cuda" else (1 << 28)
    x = torch.empty(size // 4, dtype=torch.float32, device=device)
    seconds = timed(lambda: x.clone(), device, 5)
    return 2 * size / seconds


def random_rotations(count: int, device: torch.device, gen: torch.Generator) -> torch.Tensor:
    angles = torch.rand(count, 3, generator=gen, dtype=torch.float64)
    angles = angles * torch.tensor([360.0, 180.0, 360.0], dtype=torch.float64) - torch.tensor(
        [180.0, 0.0, 180.0], dtype=torch.float64
    )
    return euler_to_matrix(angles).float().to(device)


def bench_size(n: int, device: torch.device, bandwidth: float, repeats: int) -> list[dict]:
    gen = torch.Generator().manual_seed(n)
    volume = torch.randn(n, n, n, generator=gen).to(device)
    reference = prepare_reference(volume)
    nh = n // 2 + 1
    slices_count = 2000 if device.type == "cuda" else 200
    volumes_count = 64 if device.type == "cuda" else 4
    rotations = random_rotations(slices_count, device, gen)
    rows = []

    def row(operation: str, count: int, seconds: float, floor_bytes: float) -> None:
        floor = floor_bytes / bandwidth
        rows.append(
            {
                "device": device.type,
                "box": n,
                "operation": operation,
                "items": count,
                "seconds": seconds,
                "items_per_second": count / seconds,
                "floor_seconds": floor,
                "measured_over_floor": seconds / floor,
            }
        )

    reference_bytes = reference.numel() * 8
    slice_bytes = n * nh * 8
    seconds = timed(lambda: extract_slices(reference, rotations, out_size=n), device, repeats)
    row("extract slices", slices_count, seconds, slices_count * slice_bytes + reference_bytes)

    slices = extract_slices(reference, rotations, out_size=n)
    weights = torch.ones(slices.shape, device=device)
    data_acc, weight_acc = zero_accumulators(n, device=device)
    accumulator_bytes = data_acc.numel() * 16 + weight_acc.numel() * 8

    def insert_all() -> None:
        insert_slices(
            slices, weights, rotations, accumulator_data=data_acc, accumulator_weight=weight_acc
        )

    seconds = timed(insert_all, device, repeats)
    row(
        "insert slices", slices_count, seconds, slices_count * slice_bytes * 1.5 + accumulator_bytes
    )

    vol_rotations = rotations[:volumes_count]
    volume_bytes = n * n * nh * 8
    seconds = timed(lambda: rotate_volume(reference, vol_rotations, out_size=n), device, repeats)
    row("rotate volumes", volumes_count, seconds, volumes_count * volume_bytes + reference_bytes)

    rotated = rotate_volume(reference, vol_rotations, out_size=n)
    vol_weights = torch.ones(rotated.shape, device=device)

    def insert_vols() -> None:
        insert_volumes(
            rotated,
            vol_weights,
            vol_rotations,
            accumulator_data=data_acc,
            accumulator_weight=weight_acc,
        )

    seconds = timed(insert_vols, device, repeats)
    row(
        "insert volumes",
        volumes_count,
        seconds,
        volumes_count * volume_bytes * 1.5 + accumulator_bytes,
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="bench_fourier.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    bandwidth = copy_bandwidth(device)
    rows = []
    for n in args.sizes:
        rows += bench_size(n, device, bandwidth, args.repeats)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    header = (
        f"{'device':6} {'box':>4} {'operation':16} {'items':>6} "
        f"{'items/s':>12} {'seconds':>10} {'x floor':>8}"
    )
    lines = [
        f"# {name}; copy bandwidth {bandwidth / 1e9:.1f} GB/s; torch {torch.__version__}",
        header,
    ]
    for r in rows:
        lines.append(
            f"{r['device']:6} {r['box']:>4} {r['operation']:16} {r['items']:>6} "
            f"{r['items_per_second']:>12.1f} {r['seconds']:>10.5f} {r['measured_over_floor']:>8.1f}"
        )
    print("\n".join(lines))  # noqa: T201
    with open(args.out, "w") as handle:
        json.dump(
            {"device_name": name, "copy_bandwidth_bytes_per_s": bandwidth, "rows": rows},
            handle,
            indent=1,
        )


if __name__ == "__main__":
    main()
