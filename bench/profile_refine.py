"""Where the time of a refinement goes: torch.profiler over a few iterations.

Simulates a data set with ``cryorefine simulate`` (or uses ``--data DIR``), runs
``refine_run`` for ``--iter`` iterations under ``torch.profiler`` (CPU and,
with ``--gpu``, CUDA activities), and prints the operators that take the most
device time and the most host time, and the Python functions (cProfile) with
the most cumulative time. Writes the same tables as JSON.

    python3 bench/profile_refine.py --format relion4 --box 48 --n_particles 200 --gpu
"""

import argparse
import cProfile
import io
import json
import logging
import pstats
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from cryorefine.cli.main import main as cryorefine
from cryorefine.refine.driver import refine_run
from cryorefine.refine.options import RefineOptions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--format", default="relion4", choices=("spa", "subtomo3d", "relion4"))
    parser.add_argument("--sym", default="C6")
    parser.add_argument("--n_particles", type=int, default=200)
    parser.add_argument("--box", type=int, default=48)
    parser.add_argument("--angpix", type=float, default=3.6)
    parser.add_argument("--iter", type=int, default=4)
    parser.add_argument("--healpix_order", type=int, default=2)
    parser.add_argument("--local_order", type=int, default=4)
    parser.add_argument("--offset_range", type=float, default=3.0)
    parser.add_argument("--ini_high", type=float, default=40.0)
    parser.add_argument("--snr", type=float, default=10.0)
    parser.add_argument("--diameter", type=float, default=150.0)
    parser.add_argument("--sigma_tilt", type=float, default=0.0)
    parser.add_argument("--batch_size", type=int, default=0, help="0: refine's own choice")
    parser.add_argument(
        "--reuse_data", action="store_true", help="keep WORK/sim from an earlier run if present"
    )
    parser.add_argument("--offset_step", type=float, default=1.0)
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument(
        "--torch_profiler",
        action="store_true",
        help="also run torch.profiler (its tables take minutes to build for long runs); "
        "without it, run with CUDA_LAUNCH_BLOCKING=1 so that cProfile charges device time to "
        "the function that launched it",
    )
    parser.add_argument("--work", default="bench_profile_work")
    parser.add_argument("--out", default="bench_profile.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    work = Path(args.work)
    sim = work / "sim"
    gpu = ["--gpu"] if args.gpu else []
    tic = time.perf_counter()
    status = 0
    if not (args.reuse_data and (sim / "particles.star").exists()):
        status = cryorefine(
            ["simulate", "--o", str(sim), "--format", args.format, "--sym", args.sym,
             "--n_particles", str(args.n_particles), "--box", str(args.box),
             "--angpix", str(args.angpix), "--snr", str(args.snr), "--seed", "5", *gpu]
        )  # fmt: skip
    if status != 0:
        raise SystemExit("simulate failed")
    simulate_seconds = time.perf_counter() - tic
    device = torch.device("cuda" if args.gpu else "cpu")
    (work / "Refine").mkdir(parents=True, exist_ok=True)
    options = RefineOptions(
        input_particles=sim / "particles.star",
        reference=sim / "reference.mrc",
        output_root=work / "Refine" / "run",
        ini_high=args.ini_high,
        ctf=True,
        particle_diameter=args.diameter,
        sigma_tilt=args.sigma_tilt,
        healpix_order=args.healpix_order,
        auto_local_healpix_order=args.local_order,
        offset_range=args.offset_range,
        offset_step=args.offset_step,
        sym=args.sym,
        zero_mask=True,
        flatten_solvent=True,
        auto_ignore_angles=True,
        auto_resol_angles=True,
        iter=args.iter,
        random_seed=1,
    )
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.gpu else [])
    python_profile = cProfile.Profile()
    tic = time.perf_counter()
    device_table = host_table = "(torch.profiler not run: --torch_profiler)"
    if args.torch_profiler:
        with profile(activities=activities) as prof:
            python_profile.enable()
            refine_run(options, device=device, batch_size=args.batch_size)
            python_profile.disable()
        key = "self_cuda_time_total" if args.gpu else "self_cpu_time_total"
        device_table = prof.key_averages().table(sort_by=key, row_limit=25)
        host_table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
    else:
        python_profile.enable()
        refine_run(options, device=device, batch_size=args.batch_size)
        python_profile.disable()
    refine_seconds = time.perf_counter() - tic
    stream = io.StringIO()
    stats = pstats.Stats(python_profile, stream=stream)
    stats.sort_stats("cumulative").print_stats(60)
    stats.sort_stats("tottime").print_stats(30)
    logging.info("simulate %.1f s, refine (%d iterations, profiled) %.1f s", simulate_seconds,
                 args.iter, refine_seconds)  # fmt: skip
    for title, table in (("device time", device_table), ("host time", host_table),
                         ("python cumulative", stream.getvalue())):  # fmt: skip
        logging.info("---- %s ----\n%s", title, table)
    Path(args.out).write_text(
        json.dumps(
            {
                "arguments": vars(args),
                "simulate_seconds": simulate_seconds,
                "refine_seconds": refine_seconds,
                "device_table": device_table,
                "host_table": host_table,
                "python_cumulative": stream.getvalue(),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
