"""Timing of one E-step batch (not a test): 64 particles, box 64, sizes 32/24, C1, order 2.

PYTHONPATH=tests/likelihood python3 bench/likelihood_bench.py [--device cuda] [--snr 0.1]
    [--out FILE]

Prints one line per case: seconds per ``expectation`` call (best of 3) without
and with the projection caches, the cost of building the caches, and what the
batch found (significant samples, pmax, pose errors). Then float32 against
float64: the largest relative score difference and the share of particles whose
best pose changes; the same for tf32 (``--out``: those rows as JSON).
"""

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch
from likelihood_cases import blob_map

from cryorefine.fourier import extract_slices, fourier_crop, prepare_reference, shift_fourier
from cryorefine.geometry import (
    angular_distance_deg,
    angular_step_deg,
    euler_to_matrix,
    healpix_npix,
    psi_angles_deg,
    translation_grid,
)
from cryorefine.likelihood import (
    ExpectationPlan,
    OrientationGrid,
    ParticleTerms,
    expectation,
    prepare,
    projection_cache,
    squared_differences,
)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _best_of(fn, device, repeats=3):
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        result = fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return min(times), result


def _batch(snr, device, gen, b=64, n=64, m=32):
    volume = blob_map(n, gen, count=40, width_px=2.0)
    reference = prepare_reference(volume.float().to(device), padding_factor=2)
    truth = euler_to_matrix(
        torch.rand(b, 3, generator=gen, dtype=torch.float64) * torch.tensor([360.0, 180.0, 360.0])
    )
    shifts = (torch.rand(b, 2, generator=gen, dtype=torch.float64) - 0.5) * 6
    images = shift_fourier(
        extract_slices(reference, truth.float().to(device), out_size=n), -shifts.float().to(device)
    )
    power = (images.abs() ** 2).mean().item()
    sigma2 = power / snr / 2
    noise = torch.complex(
        torch.randn(images.shape, generator=gen), torch.randn(images.shape, generator=gen)
    ) * math.sqrt(sigma2)
    cropped = fourier_crop(images + noise.to(device), m, ndim=2)
    grid = OrientationGrid(
        2,
        torch.arange(healpix_npix(2), device=device),
        psi_angles_deg(angular_step_deg(2), device=device),
        perturbation=0.3,
    )
    particles = ParticleTerms(
        masked_ft=cropped,
        unmasked_ft=cropped,
        ctf=torch.ones(cropped.shape, device=device),
        sigma2_noise=torch.full((b, n // 2 + 1), sigma2, dtype=torch.float64, device=device),
        origins_px=torch.zeros(b, 2, dtype=torch.float64, device=device),
        offset_priors_px=torch.zeros(b, 2, dtype=torch.float64, device=device),
        log_prior_orientations=torch.zeros(b, grid.count, dtype=torch.float64, device=device),
    )
    plan = ExpectationPlan(
        ori_size=n,
        current_size=m,
        coarse_size=24,
        orientations=grid,
        translations_px=translation_grid(5, 2, ndim=2, device=device),
        offset_step_px=2.0,
        sigma2_offset_px2=25.0,
    )
    return reference, particles, plan, truth.to(device), shifts.to(device)


def _case(snr, device):
    """Timings and findings of one signal-to-noise ratio, as one line; precision rows."""
    reference, particles, plan, truth, shifts = _batch(
        snr, device, torch.Generator().manual_seed(0)
    )
    run = partial(expectation, particles, reference, plan)
    run()  # warm-up
    plain, _ = _best_of(run, device)
    build_c, coarse = _best_of(partial(projection_cache, reference, plan, ndim=2), device, 1)
    build_f, both = _best_of(
        partial(projection_cache, reference, plan, ndim=2, fine=True), device, 1
    )
    with_c, _ = _best_of(partial(run, cache=coarse), device)
    with_f, result = _best_of(partial(run, cache=both), device)
    error = angular_distance_deg(result.rotations, truth)
    shift_error = (result.origins_px - shifts).norm(dim=1)
    line = (
        f"snr={snr:g} seconds: no_cache={plain:.3f} coarse_cache={with_c:.3f} "
        f"both_caches={with_f:.3f} (build: coarse={build_c:.2f} fine={build_f:.2f}) | "
        f"significant median={result.significant_samples.median().item()} "
        f"max={result.significant_samples.max().item()} "
        f"pmax median={result.pmax.median().item():.3f} "
        f"angle_error_deg median={error.median().item():.2f} "
        f"shift_error_px median={shift_error.median().item():.2f} "
        f"in_play={result.backprojection.data.shape[0]}\n"
    )
    if snr == 0.1:
        text, rows = _precision_line(particles, reference, plan, both, result)
        return line + text, rows
    return line, []


def _precision_line(particles, reference, plan, cache, result):
    """float32 and tf32 against float64: coarse scores and the batch's best poses.

    A pose changes when the rotation or the origin of the best sample differs
    from float64's. On the CPU tf32 is float32 (torch's tf32 is a CUDA mode).
    """
    prep = prepare(particles, plan)
    phases = prep.coarse.phases[0]
    data, ctf, weight = prep.coarse.data, prep.coarse.ctf, prep.coarse.weight
    scores = {
        p: squared_differences(data, ctf, weight, cache.coarse, phases, precision=p).double()
        for p in ("float32", "tf32", "float64")
    }
    best64 = scores["float64"].reshape(particles.count, -1).argmin(1)
    r64 = expectation(particles, reference, replace(plan, precision="float64"), cache=cache)
    lines, rows = "", []
    for name in ("float32", "tf32"):
        rel = ((scores[name] - scores["float64"]).abs() / scores["float64"].abs()).max()
        best = scores[name].reshape(particles.count, -1).argmin(1)
        mine = expectation(particles, reference, replace(plan, precision=name), cache=cache)
        changed = (angular_distance_deg(r64.rotations, mine.rotations) > 1e-6) | (
            (r64.origins_px - mine.origins_px).abs().amax(1) > 1e-9
        )
        rows.append(
            {
                "precision": name,
                "coarse_scores_max_relative_difference": rel.item(),
                "coarse_best_pose_changed": (best != best64).float().mean().item(),
                "expectation_best_pose_changed": changed.float().mean().item(),
                "particles": particles.count,
            }
        )
        lines += (
            f"{name} vs float64 (snr 0.1): coarse scores max relative difference={rel:.2e}; "
            f"coarse best pose changed for {(best != best64).float().mean().item():.1%}; "
            f"expectation best pose changed for {changed.float().mean().item():.1%} "
            f"of {particles.count} particles\n"
        )
    return lines, rows


def main():
    """Parse the options and write one line per case to stdout."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--snr", type=float, nargs="*", default=[1000.0, 0.1, 0.03])
    parser.add_argument("--out", type=Path, default=None, help="write the precision rows as JSON")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    sys.stdout.write(
        f"device={device} threads={torch.get_num_threads()} torch={torch.__version__}\n"
    )
    precision_rows: list[dict] = []
    for snr in args.snr:
        line, rows = _case(snr, device)
        precision_rows += rows
        sys.stdout.write(line)
        sys.stdout.flush()
    if args.out is not None:
        device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        summary = {"device": device_name, "precision": precision_rows}
        args.out.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
