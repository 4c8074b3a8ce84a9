"""The HIV capsid tutorial's auto-refine, on simulated data of its shape, timed and judged.

    python3 bench/tutorial_bench.py --gpu [--n_particles N] [--work DIR] [--out FILE]

Simulates pseudo-subtomograms with the tutorial's real geometry (its five tilt
series and 9,442 picks in ``shared/data/hiv_tutorial_relion5``, the packaged CA
hexamer, C6, bin 6 = 8.1 A/px, box 96, float16; ``cryorefine simulate
--tomograms --particles``), then runs ``cryorefine refine`` with the command line
of the tutorial's ``Refine3D/job012`` (its run_optimiser.star header: ini_high
60, healpix order 2 then local searches from order 4, offset range 5 step 2,
particle diameter 500 A, --norm --scale, --pool/--j/--scratch_dir accepted and
ignored) to convergence, and prints one table: total and per-iteration time,
E-step time and its phases (waiting for data, masking, coarse pass, fine pass,
insertion into the back-projector; run.log's ``phase_seconds`` lines), the rest
(M-step, files), particles per second, peak GPU memory, and the resolution
against the truth (FSC 0.143 of the final map with
the truth, after the global frame fit) next to RELION's own 16.5 A on the real
data. After the refine, on the same device and in the same process, it
measures the matrix rate and bandwidths and prints the E-step's floor
(``floor_table.py``): per iteration and phase, summed over the half sets,
measured seconds, floor seconds and their ratio, and the same summed per HEALPix
order (``floor_orders.py``, with the E-step's ratio without the insert, whose floor
is not a lower bound where the accumulators sit in cache). The same is written as JSON
(the floor's rows per half set under ``floor``). ``--n_particles`` takes a
random subset of the picks (a CPU-sized run).
"""

import argparse
import contextlib
import cProfile
import io
import json
import os
import pstats
import shlex
import signal
import sys
import time
from pathlib import Path

import gpu_idle
import host_knobs
import torch
from fine_calls import FineCalls  # bench/ is on sys.path
from floor_orders import format_orders, order_totals
from floor_rates import measure_rates, rate_lines, rate_shapes
from floor_table import floor_rows, format_totals, iteration_totals
from host_samples import HostSampler
from rank_runs import DeviceMemoryPoller, run_ranks
from run_log_tables import iteration_table, part_totals, phase_totals
from torch._C._profiler import _ExperimentalConfig

from cryorefine.cli.main import main as cryorefine
from cryorefine.io import read_star
from cryorefine.refine.run_files import last_finished_iteration
from cryorefine.simulate.evaluate import compare_to_truth

# Refine3D/job012's command line (run_optimiser.star), inputs and outputs left out.
TUTORIAL_OPTIONS = (
    "--auto_refine --split_random_halves --sigma_tilt 10 --trust_ref_size --ini_high 60 "
    "--dont_combine_weights_via_disc --scratch_dir /tmp --pool 30 --pad 2 --ctf "
    "--particle_diameter 500 --flatten_solvent --zero_mask --oversampling 1 --healpix_order 2 "
    "--auto_local_healpix_order 4 --offset_range 5 --offset_step 2 --sym C6 "
    "--low_resol_join_halves 40 --norm --scale --j 6"
).split()

RELION_RESOLUTION_ANGST = 16.54  # Refine3D/job012/run_model.star on the real data
PHASES = (
    "mask",
    "priors",
    "coarse",
    "coarse_prepare",
    "coarse_project",
    "coarse_score",
    "coarse_select",
    "fine",
    "fine_project",
    "fine_score",
    "fine_sum",
    "insert",
    "batch_sums",
    "batch_poses",
)  # fmt: skip (timing.PhaseTimes ranges)
# summary entries printed as tables, not as key: value
TABLES = ("per_iteration", "floor", "fine_calls")


def run(
    arguments: list[str],
    profile: cProfile.Profile | None = None,
    torch_profile: bool = False,
    stacks: int = 0,
) -> float:
    """Run ``cryorefine arguments``; its seconds. ``stacks`` > 0 (with ``torch_profile``):
    also device time by operator and its ``stacks`` innermost Python frames."""
    start = time.perf_counter()
    if profile is not None:
        status = profile.runcall(cryorefine, arguments)
    elif torch_profile:
        activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        # Python stacks are recorded only with the verbose experimental config (torch 2.11+)
        config = _ExperimentalConfig(verbose=True) if stacks else None
        with torch.profiler.profile(
            activities=activities, with_stack=stacks > 0, experimental_config=config
        ) as prof:
            status = cryorefine(arguments)
        # first where the device waited for the host, and on what: building the events
        # of a whole iteration takes minutes, and a call cut by its limit keeps this table
        # (not with stacks: the table by call site comes first then)
        if torch.cuda.is_available() and not stacks:
            sys.stdout.write(gpu_idle.table(gpu_idle.from_profiler(prof.events(), PHASES)))
            sys.stdout.flush()
            charged = gpu_idle.busy_from_profiler(prof.events(), PHASES)
            sys.stdout.write(gpu_idle.busy_table(charged))
            sys.stdout.flush()
        if stacks:  # device time by operator and the lines that called it
            by_site = prof.key_averages(group_by_stack_n=stacks)
            sys.stdout.write(by_site.table(sort_by="self_cuda_time_total", row_limit=60))
            sys.stdout.flush()
        averages = prof.key_averages()
        for key in ("self_cuda_time_total", "cpu_time_total"):
            sys.stdout.write(averages.table(sort_by=key, row_limit=45, max_name_column_width=48))
    else:
        status = cryorefine(arguments)
    if status != 0:
        raise SystemExit(f"cryorefine {arguments[0]} failed with status {status}")
    return time.perf_counter() - start


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().parents[1].parent / "shared/data/hiv_tutorial_relion5"
    parser.add_argument("--tutorial", type=Path, default=default, help="the tutorial's folder")
    parser.add_argument("--n_particles", type=int, default=None, help="default: every pick")
    parser.add_argument("--bin", type=int, default=6)
    parser.add_argument("--box", type=int, default=96)
    parser.add_argument("--snr", type=float, default=None, help="default: simulate's own")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--iter", type=int, default=0, help="stop after N iterations (0: converge)")
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run refine under cProfile and print its cryorefine functions by cumulative time "
        "(with CUDA_LAUNCH_BLOCKING=1, device time is charged to the function that launched it)",
    )
    parser.add_argument(
        "--torch_profile",
        action="store_true",
        help="run refine under torch.profiler and print the operators and phases by device "
        "time and by host time (which shows where the host, not the device, sets the pace)",
    )
    parser.add_argument(
        "--torch_profile_stacks",
        type=int,
        default=0,
        help="with --torch_profile: also a table of device time by operator and its N "
        "innermost Python frames (records each operator's stack: slower)",
    )
    parser.add_argument(
        "--host_samples",
        nargs="?",
        const="run_half_set",
        default=None,
        help="sample the main thread's Python stack every millisecond (host_samples.py) and "
        "print where the host's time goes by line, within the function named (default: "
        "run_half_set, the E-step of a half set; 'all': the whole process)",
    )
    parser.add_argument(
        "--record_fine_calls",
        action="store_true",
        help="record each fine group's scores and M-step sums: sizes and device time "
        "(fine_calls.py; the device synchronised around each call)",
    )
    host_knobs.add_arguments(parser)
    parser.add_argument(
        "--continue_run",
        action="store_true",
        help="reuse the simulated data in --work (simulated again, with the same seed, if "
        "absent) and continue its Refine3D from the last run_itNNN_optimiser.star",
    )
    parser.add_argument(
        "--batch_size", type=int, default=0, help="refine --batch_size (0: refine's default)"
    )
    parser.add_argument(
        "--ranks",
        type=int,
        default=1,
        help="run refine as this many ranks on GPU 0 (torchrun, --gpu 0:0...); with --gpu",
    )
    parser.add_argument(
        "--precision", default="auto", help="refine --precision (auto, float32, tf32, float64)"
    )
    parser.add_argument(
        "--interpolation", default="texture", help="refine --interpolation (texture, exact)"
    )
    parser.add_argument(
        "--no_floor", action="store_true", help="skip measuring the rates and the floor table"
    )
    parser.add_argument(
        "--refine_flags",
        default="",
        help="more refine options, one string (e.g. '--subtomo_noise_multiplicity')",
    )
    parser.add_argument("--work", type=Path, default=Path("bench_tutorial_work"))
    parser.add_argument("--out", type=Path, default=Path("bench_tutorial.json"))
    args = parser.parse_args()
    if args.ranks > 1 and not (
        args.gpu and not args.profile and not args.torch_profile and not args.record_fine_calls
    ):
        parser.error("--ranks above 1 needs --gpu and none of --profile, --torch_profile, "
                     "--record_fine_calls")  # fmt: skip
    return args


def _concrete(precision: str, *, gpu: bool) -> str:
    """``auto`` as ``refine`` reads it (``likelihood.scores.AUTO_PRECISION``), resolved here
    so that the bench also drives builds older than ``--precision auto``."""
    if precision != "auto":
        return precision
    return "tf32" if gpu else "float32"


def simulate(args: argparse.Namespace, sim: Path) -> float:
    arguments = [
        "simulate", "--o", str(sim), "--sym", "C6", "--box", str(args.box),
        "--bin", str(args.bin), "--seed", str(args.seed), "--float16",
        "--tomograms", str(args.tutorial / "Tomograms/job006/tomograms.star"),
        "--particles", str(args.tutorial / "Picks/job019/particles.star"),
        "--tilt_image_size", "3710", "3838", "--surface_normals",
    ]  # fmt: skip
    if args.n_particles:
        arguments += ["--n_particles", str(args.n_particles)]
    if args.snr is not None:
        arguments += ["--snr", str(args.snr)]
    return run(arguments + (["--gpu"] if args.gpu else []))


def floor(refine: Path, *, gpu: bool, precision: str = "float32") -> dict:
    """The E-step floor of the finished refine: rates measured now, on its device."""
    device = torch.device("cuda:0" if gpu else "cpu")
    rates = measure_rates(device, rate_shapes(refine, gpu=gpu))
    rows = floor_rows(refine, rates, precision=precision, device=device)
    return {"precision": precision, "rates": rates, "rows": rows,
            "per_iteration": iteration_totals(rows), "per_order": order_totals(rows)}  # fmt: skip


def main() -> None:
    # as the cryorefine command sets it; here before this process's first CUDA call, which
    # a continued run (no simulation first) makes below, ahead of the command's own setting
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    args = parse_arguments()
    sim, refine = args.work / "sim", args.work / "Refine3D"
    done = args.continue_run and (sim / "optimisation_set.star").exists()
    simulate_seconds = 0.0 if done else simulate(args, sim)
    refine.mkdir(parents=True, exist_ok=True)
    if args.gpu:
        torch.cuda.reset_peak_memory_stats()
    command = [
        "refine", "--ios", str(sim / "optimisation_set.star"), "--ref", str(sim / "reference.mrc"),
        "--o", str(refine / "run"), *TUTORIAL_OPTIONS,
    ]  # fmt: skip
    finished = sorted(refine.glob("run_it[0-9][0-9][0-9]_optimiser.star"))
    if args.continue_run and finished:  # the options come from the optimiser star
        command = ["refine", "--continue", str(finished[-1])]
    if args.iter or command[1] == "--continue":  # a continued run keeps its own limit unless
        command += ["--iter", str(args.iter)]  # told: 0 is "until it converges"
    command += ["--batch_size", str(args.batch_size),
                "--precision", _concrete(args.precision, gpu=args.gpu),
                "--interpolation", args.interpolation, *shlex.split(args.refine_flags)]  # fmt: skip
    profile = cProfile.Profile() if args.profile else None
    # SIGTERM (``timeout``) stops the refine; the table is then made from its last whole
    # iteration, so that a run cut by a time limit still reports
    signal.signal(signal.SIGTERM, _stop)
    start, stopped = time.perf_counter(), False
    poller = DeviceMemoryPoller() if args.gpu else None
    sampler: HostSampler | None = None
    recorder = FineCalls() if args.record_fine_calls else None
    host_knobs.apply(args)
    try:
        if args.ranks > 1:
            refine_seconds = run_ranks(command, args.ranks)
        else:
            with (
                HostSampler(scope=None if args.host_samples == "all" else args.host_samples)
                if args.host_samples
                else contextlib.nullcontext() as sampler,
                recorder if recorder is not None else contextlib.nullcontext(),
            ):
                refine_seconds = run(
                    command + (["--gpu", "0"] if args.gpu else []),
                    profile,
                    args.torch_profile,
                    args.torch_profile_stacks,
                )
    except KeyboardInterrupt:
        refine_seconds, stopped = time.perf_counter() - start, True
    device_peak = poller.stop() if poller is not None else 0.0
    # this process's allocator: the refine's own peak with one rank, nothing with several
    peak = torch.cuda.max_memory_allocated() / 2**30 if args.gpu and args.ranks == 1 else None
    allocator = torch.cuda.memory_stats() if args.gpu else {}
    precision = _concrete(args.precision, gpu=args.gpu)
    floors = (
        {"precision": precision, "rates": {}, "rows": [], "per_iteration": [], "per_order": []}
        if args.no_floor
        else floor(refine, gpu=args.gpu, precision=precision)
    )
    log = (refine / "run.log").read_text()
    iterations = iteration_table(log)
    data, final_map = refine / "run_data.star", refine / "run_class001.mrc"
    if not data.exists():  # stopped before convergence: the last whole iteration's files
        last = last_finished_iteration(refine / "run")
        if last is None:
            raise SystemExit(f"{refine}: no whole iteration to report")
        root = str(last).removesuffix("_optimiser.star")
        data, final_map = Path(root + "_data.star"), Path(root + "_half1_class001.mrc")
    truth = compare_to_truth(data, final_map, sim, symmetry="C6")
    particles = len(read_star(data)["particles"])
    # with several ranks the run.log has half set 1's E-step only: both run at once, so
    # its seconds are the E-step's wall time (phase totals are half set 1's as well)
    e_step = sum(r["e_step_seconds"] for r in iterations)
    phases = phase_totals(log)
    total_iterations = sum(r["seconds"] for r in iterations)
    summary = {
        "device": torch.cuda.get_device_name() if args.gpu else "CPU",
        "interpolation": args.interpolation if args.gpu else "exact",
        "particles": particles,
        "box": args.box,
        "bin": args.bin,
        "simulate_seconds": simulate_seconds,
        "refine_seconds": refine_seconds,
        "stopped_by_signal": stopped,
        "iterations": len(iterations),
        "iteration_seconds_total": total_iterations,
        "e_step_seconds_total": e_step,
        "other_seconds_total": total_iterations - e_step,
        "e_step_phase_seconds": phases,
        "iteration_part_seconds": part_totals(iterations),
        "particles_per_second_e_step": particles * len(iterations) / max(e_step, 1e-9),
        "ranks": args.ranks,
        "peak_gpu_memory_gib": peak,
        "peak_device_memory_used_gib": device_peak,
        "peak_gpu_reserved_gib": allocator.get("reserved_bytes.all.peak", 0) / 2**30,
        # cudaMalloc retries after freeing the cache: allocator pressure near the card's limit
        "allocator_retries": allocator.get("num_alloc_retries", 0),
        "resolution_vs_truth_angst": truth.resolution_0143_angst,
        "median_angular_error_deg": truth.median_angular_error_deg,
        "median_origin_error_angst": truth.median_origin_error_angst,
        "relion_resolution_real_data_angst": RELION_RESOLUTION_ANGST,
        "per_iteration": iterations,
        "floor": floors,
    }
    lines = ["iteration | seconds | e_step_seconds | accuracy | m_step | files | "
             "resolution_angst | current_size"]  # fmt: skip
    lines += [
        f"{r['iteration']} | {r['seconds']:.1f} | {r['e_step_seconds']:.1f} | "
        + " | ".join(
            f"{r.get('parts', {}).get(k, 0.0):.2f}" for k in ("accuracy", "m_step", "files")
        )
        + f" | {r['resolution_angst']:.2f} | {r['current_size']}"
        for r in iterations
    ]
    lines += [f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}"
              for key, value in summary.items() if key not in TABLES]  # fmt: skip
    if floors["rates"]:
        lines += [*rate_lines(floors["rates"], floors["precision"]),
                  format_totals(floors["per_iteration"]),
                  format_orders(floors["per_order"])]  # fmt: skip
    if recorder is not None:
        summary["fine_calls"] = recorder.as_dict()
        lines.append(recorder.table() + recorder.scores_table())
    if sampler is not None:
        summary["host_samples"] = sampler.as_dict()
        lines.append(sampler.table())
    if profile is not None:
        stream = io.StringIO()
        stats = pstats.Stats(profile, stream=stream)
        stats.sort_stats("cumulative").print_stats("cryorefine", 90)
        stats.sort_stats("tottime").print_stats("cryorefine", 40)  # our own Python's time
        stats.sort_stats("tottime").print_stats(60)  # torch's own calls: where device time lands
        stats.print_callers(25)  # which of our lines make the costliest of those calls
        summary["profile_cumulative"] = stream.getvalue()
        lines.append(stream.getvalue())
    sys.stdout.write("\n".join(lines) + "\n")
    args.out.write_text(json.dumps(summary, indent=1, default=float))


if __name__ == "__main__":
    main()
