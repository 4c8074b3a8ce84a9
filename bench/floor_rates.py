"""What the E-step's floors need besides its work: a run's sizes and this device's rates.

``read_log`` parses a refine's ``run.log`` (iteration lines; per half set the
``phase_seconds``, ``work`` and ``e_step_seconds`` lines); ``read_star``,
``ndim_of``, ``window_count``, ``translation_count`` and ``sampling`` read the
sizes the floors count with. ``rate_shapes`` gives the matrix-product shapes
of the E-step's two scoring passes at the run's largest sizes; ``measure_rates``
times them (fp32 and tf32), the device copy bandwidth (bytes read + written,
at several sizes) and the host-to-device bandwidth, on the device the refine
ran on, in the same process; ``rate_lines`` prints them. Used by
``floor_table.py`` (and through it ``tutorial_bench.py``), which has the floors.
"""

import functools
import math
import re
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import starfile
import torch

from cryorefine.geometry import psi_angles_deg, translation_grid
from cryorefine.likelihood import fourier_window

__all__ = [
    "WORK",
    "copy_rates",
    "iteration_file",
    "matmul_rate",
    "measure_rates",
    "ndim_of",
    "rate_lines",
    "rate_shapes",
    "read_log",
    "read_star",
    "sampling",
    "seconds_per_call",
    "translation_count",
    "window_count",
]

WORK = ("coarse_samples", "fine_samples", "projected_orientations", "inserted_orientations")


def read_log(refine_dir: Path) -> dict[int, dict]:
    """Per iteration: the iteration line's sizes and sampling; per half set its phase
    seconds, logged work (``None`` without a ``work`` line) and E-step seconds."""
    log = (refine_dir / "run.log").read_text()
    out: dict[int, dict] = {}
    for match in re.finditer(r"iter=(\d+) (resolution_angst=.*)", log):
        values = dict(re.findall(r"(\w+)=([-\w.]+)", match.group(2)))
        out[int(match.group(1))] = {
            "current_size": int(values["current_size"]),
            "coarse_size": int(values["coarse_size"]),
            "healpix_order": int(values["healpix_order"]),
            "local_searches": values["local_searches"] == "1",
            "offset_range_px": float(values["offset_range_px"]),
            "offset_step_px": float(values["offset_step_px"]),
            "halves": {},
        }

    def half(it: str, half_set: str) -> dict:
        return out[int(it)]["halves"].setdefault(int(half_set), {"work": None})

    for it, half_set, text in re.findall(r"iter=(\d+) half_set=(\d) phase_seconds (.*)", log):
        if int(it) in out:
            half(it, half_set)["phases"] = {
                k: float(v) for k, v in re.findall(r"(\w+)=([\d.]+)", text)
            }
    for it, half_set, text in re.findall(r"iter=(\d+) half_set=(\d) work(.*)", log):
        if int(it) in out:  # a name never counted (no fine group, say) did no work
            logged = dict.fromkeys(WORK, 0) | {
                k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", text)
            }
            half(it, half_set)["work"] = logged
    for it, half_set, seconds in re.findall(
        r"iter=(\d+) half_set=(\d) particles=\d+ e_step_seconds=([\d.]+)", log
    ):
        if int(it) in out:
            half(it, half_set)["e_step"] = float(seconds)
    return out


def read_star(path: Path) -> dict:
    """The STAR file's blocks, parsed once per file version (path, size, modification
    time): the floor reads each iteration's files for both half sets and several counts.
    Callers must not change the tables in place."""
    stat = Path(path).stat()
    return _parsed_star(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _parsed_star(path: str, size: int, mtime_ns: int) -> dict:
    return starfile.read(path, always_dict=True)


def iteration_file(refine_dir: Path, it: int, name: str) -> Path:
    """``run_itNNN_<name>``; where it is missing, the final files' ``run_<name>``
    (``run_model.star`` for a half set's model): the final iteration writes only those."""
    path = refine_dir / f"run_it{it:03d}_{name}"
    if path.exists():
        return path
    return refine_dir / f"run_{'model.star' if name.endswith('_model.star') else name}"


def ndim_of(refine_dir: Path, it: int) -> int:
    optics = read_star(iteration_file(refine_dir, it, "data.star")).get("optics")
    if optics is not None and "rlnImageDimensionality" in optics.columns:
        return int(optics["rlnImageDimensionality"].iloc[0])
    return 2


def window_count(size: int, ndim: int, *, include_dc: bool, redundant: bool = False) -> int:
    window = fourier_window(
        size, ndim, device=torch.device("cpu"), include_dc=include_dc, include_redundant=redundant
    )
    return window.count


def translation_count(info: dict, ndim: int) -> int:
    grid = translation_grid(
        info["offset_range_px"], info["offset_step_px"], ndim=ndim, device="cpu"
    )
    return int(grid.shape[0])


def sampling(refine_dir: Path, it: int) -> tuple[dict, int, int, np.ndarray]:
    """The sampling star's general block, direction and psi counts, directions ``(m, 2)``."""
    blocks = read_star(iteration_file(refine_dir, it, "sampling.star"))
    general = blocks["sampling_general"]
    directions = blocks["sampling_directions"][["rlnAngleRot", "rlnAngleTilt"]].to_numpy(float)
    psi_count = psi_angles_deg(float(general["rlnPsiStep"]), device="cpu").shape[0]
    return general, directions.shape[0], psi_count, directions


def seconds_per_call(
    fn: Callable[[], object], device: torch.device, repeats: int, *, inner: int = 1
) -> float:
    """Seconds per call: best of ``repeats`` timings of ``inner`` calls, after a warm-up.

    Synchronised on a GPU before and after each timing; ``inner`` calls per timing
    keep launch and clock overheads out of small operations.
    """
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(2):
        fn()
    sync()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        sync()
        best = min(best, (time.perf_counter() - start) / inner)
    return best


def median_seconds(fn: Callable[[], object], repeats: int = 3) -> float:
    """Median seconds of ``repeats`` synchronised calls on the GPU, after one untimed."""
    fn()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[repeats // 2]


def matmul_rate(shape: tuple[int, int, int, int], device: torch.device, repeats: int) -> float:
    """Flops per second of ``[batch, m, k] @ [batch, k, n]`` in float32 (real pairs, as scores)."""
    batch, m, k, n = shape
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn((batch, m, k), generator=generator, device=device)
    b = torch.randn((batch, k, n), generator=generator, device=device)
    if batch == 1:
        a2, b2 = a[0], b[0]
        seconds = seconds_per_call(lambda: a2 @ b2, device, repeats)
    else:
        seconds = seconds_per_call(lambda: torch.bmm(a, b), device, repeats)
    return 2.0 * batch * m * k * n / seconds


def rate_shapes(refine_dir: Path, *, gpu: bool) -> dict[str, tuple[int, int, int, int]]:
    """E-step product shapes ``(batch, m, k, n)`` at the run's largest sizes.

    coarse ``[(b t) x 2 k_c] @ [2 k_c x R]`` (``score_shared``), fine ``[b q: g x 2 k_f]
    @ [b q: 2 k_f x f]`` (``score_pairs``); ``b`` = 256 particles on a GPU, 8 on the
    CPU; ``q`` = 64 pairs per particle on a GPU, 8 on the CPU; ``g = 2**ndim``, ``f = 8``;
    ``R`` the global grid's orientations.
    """
    refine_dir = Path(refine_dir)
    info = read_log(refine_dir)
    if not info:
        raise SystemExit(f"{refine_dir / 'run.log'} has no iteration lines")
    ndim = ndim_of(refine_dir, max(info))
    k_c = max(window_count(i["coarse_size"], ndim, include_dc=False) for i in info.values())
    k_f = max(window_count(i["current_size"], ndim, include_dc=True) for i in info.values())
    t = max(translation_count(i, ndim) for i in info.values())
    r = max(math.prod(sampling(refine_dir, it)[1:3]) for it in info)
    b = 256 if gpu else 8
    g, f = 2**ndim, 8
    shapes = {"coarse": (1, b * t, 2 * k_c, r), "fine": (b * (64 if gpu else 8), g, 2 * k_f, f)}
    return {name: _within(shape, MAX_OPERAND_BYTES) for name, shape in shapes.items()}


MAX_OPERAND_BYTES = 2**30
"""Operands larger than this are measured on a slice (fewer batches, rows or columns)."""


def _within(shape: tuple[int, int, int, int], limit: int) -> tuple[int, int, int, int]:
    """``shape`` with batch, then ``m`` and ``n``, cut until each float32 operand fits ``limit``.

    The rate per flop of these products does not depend on how many there are
    once the device is full; 3D windows at box 96 would otherwise ask for
    hundreds of GiB (256 particles x 64 pairs x 8 x 2 k_f).
    """
    batch, m, k, n = shape
    batch = max(1, min(batch, limit // (4 * k * max(m, n))))
    m = max(1, min(m, limit // (4 * k * batch)))
    n = max(1, min(n, limit // (4 * k * batch)))
    return batch, m, k, n


def copy_rates(device: torch.device, repeats: int) -> dict[str, float]:
    """Bytes read + written per second by ``dst.copy_(src)`` per tensor size in bytes."""
    largest = 2**29 if device.type == "cuda" else 2**26
    by_size = {}
    for size in (2**21, 2**23, 2**25, largest):
        src = torch.ones(size // 4, device=device)
        dst = torch.empty_like(src)
        inner = max(1, largest // size)
        copy = lambda: dst.copy_(src)  # noqa: B023, E731
        by_size[str(size)] = 2 * size / seconds_per_call(copy, device, repeats, inner=inner)
    return by_size


def measure_rates(
    device: torch.device, shapes: dict[str, tuple[int, int, int, int]], *, repeats: int = 5
) -> dict[str, object]:
    """Matrix rates (fp32, tf32) per shape, device copy and host-to-device bandwidth.

    ``copy_bytes_per_s`` counts bytes read + written by ``dst.copy_(src)`` of a
    large tensor (512 MiB on a GPU, 64 MiB on the CPU; ``copy_bytes_per_s_by_size``
    the same at 2, 8 and 32 MiB, which caches can serve); ``h2d_bytes_per_s`` the
    bytes of a pinned host tensor copied to the device (on the CPU: half the copy
    rate, a host copy with its bytes counted once). Best of ``repeats`` after a
    warm-up. tf32 is measured on CUDA only (the CPU has none: its entry repeats fp32).
    """
    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    rates: dict[str, object] = {"device": name}
    previous = torch.get_float32_matmul_precision()
    try:
        for precision, setting in (("float32", "highest"), ("tf32", "high")):
            torch.set_float32_matmul_precision(setting)
            rates[f"matmul_flops_per_s_{precision}"] = {
                key: matmul_rate(shape, device, repeats)
                if precision == "float32" or device.type == "cuda"
                else rates["matmul_flops_per_s_float32"][key]  # type: ignore[index]
                for key, shape in shapes.items()
            }
    finally:
        torch.set_float32_matmul_precision(previous)
    rates["shapes"] = {key: list(shape) for key, shape in shapes.items()}
    by_size = copy_rates(device, repeats)
    rates["copy_bytes_per_s_by_size"] = by_size
    largest = max(by_size, key=int)
    rates["copy_bytes_per_s"] = by_size[largest]
    if device.type == "cuda":
        count = int(largest) // 8  # float32 values of half the largest copy
        host = torch.ones(count, pin_memory=True)
        target = torch.empty(count, device=device)
        copy = lambda: target.copy_(host, non_blocking=True)  # noqa: E731
        rates["h2d_bytes_per_s"] = 4 * count / seconds_per_call(copy, device, repeats)
    else:
        rates["h2d_bytes_per_s"] = by_size[largest] / 2
    return rates


def rate_lines(rates: dict, precision: str) -> list[str]:
    """The measured rates as printed lines: device, TFLOP/s per shape, GB/s."""
    lines = [f"device: {rates['device']}; floors use {precision}"]
    for name in ("float32", "tf32"):
        per = rates[f"matmul_flops_per_s_{name}"].items()
        lines.append(f"{name} TFLOP/s: " + ", ".join(f"{k} {v / 1e12:.3g}" for k, v in per))
    lines.append(
        f"copy GB/s (read+write) {rates['copy_bytes_per_s'] / 1e9:.4g}, "
        f"host-to-device GB/s {rates['h2d_bytes_per_s'] / 1e9:.4g}"
    )
    return lines
