"""The tutorial job's final iteration under several settings, one after the other, one machine.

    python3 bench/final_iteration_ab.py --tutorial T --state STATE.tgz --gpu \\
        [--settings base kernels=CRYOREFINE_HELD_CROSS=1 base kernels=...] \\
        [--work /tmp/work] [--out bench_final_iteration_ab.json]

Simulates the tutorial-shaped data once (``tutorial_bench.simulate``, seed 11,
the state's own), then for each setting unpacks the carried iterations
(``bench/results/tutorial_9437_reader_h100_it025-026_state.tgz``: their paths
name ``/tmp/work``) into a fresh ``Refine3D`` and runs ``tutorial_bench.py
--continue_run --iter 27 --no_floor`` in a process of its own with the
setting's environment (``NAME=VAR=VALUE[,VAR=VALUE]``; a bare ``NAME`` adds
nothing). Prints one row per run: the iteration's seconds, the E-step and its
phases summed over the half sets, and the truth figures (which must not move),
and writes the same as JSON. Repeat a setting to see the spread between runs.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from tutorial_bench import simulate  # bench/ is on sys.path

PHASES = ("mask", "coarse", "coarse_prepare", "coarse_project", "coarse_score", "coarse_select",
          "fine_project", "fine_score", "fine_sum", "insert")  # fmt: skip
HERE = Path(__file__).resolve().parent


def parse_setting(text: str) -> tuple[str, dict[str, str], list[str]]:
    """``NAME[=VAR=VALUE,--option=VALUE,...]`` -> name, environment additions, bench options.

    An entry that starts with ``--`` is an option of ``tutorial_bench.py`` (e.g.
    ``--precision=tf32``, or a flag alone: ``--torch_profile``); any other is an
    environment variable.
    """
    name, _, assignments = text.partition("=")
    env, options = {}, []
    for pair in filter(None, assignments.split(",")):
        variable, sep, value = pair.partition("=")
        if variable.startswith("--") and not sep:  # a flag of tutorial_bench.py
            options.append(variable)
            continue
        if not sep or not variable:
            raise SystemExit(f"--settings {text!r}: expected NAME=VAR=VALUE[,VAR=VALUE]")
        if variable.startswith("--"):
            options += [variable, value]
        else:
            env[variable] = value
    return name, env, options


def run_setting(
    args: argparse.Namespace, name: str, env: dict[str, str], options: list[str], index: int
) -> dict:
    """The final iteration from the carried state with ``env`` and ``options``; its row."""
    refine = args.work / "Refine3D"
    shutil.rmtree(refine, ignore_errors=True)
    refine.mkdir(parents=True)
    with tarfile.open(args.state) as archive:
        archive.extractall(refine, filter="data")
    out = args.work / f"ab_{index}_{name}.json"
    command = [
        sys.executable, str(HERE / "tutorial_bench.py"), "--tutorial", str(args.tutorial),
        "--work", str(args.work), "--continue_run", "--iter", str(args.iter), "--no_floor",
        "--out", str(out), *(["--gpu"] if args.gpu else []), *options,
    ]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(f"setting {name}: tutorial_bench failed\n{done.stderr[-3000:]}\n")
        return {"setting": name, "environment": env, "failed": done.stderr[-3000:]}
    summary = json.loads(out.read_text())
    phases = summary["e_step_phase_seconds"]
    work = work_counts((refine / "run.log").read_text(), args.iter)
    return {
        "setting": name, "environment": env, "options": options,
        "process_seconds": time.perf_counter() - start,
        "iteration_seconds": summary["iteration_seconds_total"],
        "e_step_seconds": summary["e_step_seconds_total"],
        **{phase: phases.get(phase, 0.0) for phase in PHASES},
        "resolution_vs_truth_angst": summary["resolution_vs_truth_angst"],
        "median_angular_error_deg": summary["median_angular_error_deg"],
        "peak_gpu_memory_gib": summary["peak_gpu_memory_gib"],
        "peak_device_memory_used_gib": summary.get("peak_device_memory_used_gib"),
        "work": work,
        "fine_groups": work.get("fine_groups", 0),
    }  # fmt: skip


def work_counts(log: str, iteration: int) -> dict[str, int]:
    """The iteration's ``work`` counts of the run.log, summed over its half sets (the last
    line of each): fine groups and why they closed, samples, projected orientations."""
    last: dict[str, str] = {}
    for half, fields in re.findall(rf"iter={iteration:03d} half_set=(\d) work (.*)", log):
        last[half] = fields
    totals: dict[str, int] = {}
    for fields in last.values():
        for key, value in re.findall(r"(\w+)=(\d+)", fields):
            totals[key] = totals.get(key, 0) + int(value)
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tutorial", type=Path, required=True, help="the tutorial's folder")
    parser.add_argument("--state", type=Path, required=True, help="the carried iterations (.tgz)")
    parser.add_argument("--settings", nargs="+", default=["base"])
    parser.add_argument("--iter", type=int, default=27, help="the iteration to run")
    parser.add_argument("--n_particles", type=int, default=None, help="as the state's job")
    parser.add_argument("--box", type=int, default=96, help="as the state's job")
    parser.add_argument("--bin", type=int, default=6, help="as the state's job")
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--work", type=Path, default=Path("/tmp/work"))
    parser.add_argument("--out", type=Path, default=Path("bench_final_iteration_ab.json"))
    args = parser.parse_args()
    settings = [parse_setting(text) for text in args.settings]
    sim = args.work / "sim"
    simulated = 0.0
    if not (sim / "optimisation_set.star").exists():
        options = argparse.Namespace(
            tutorial=args.tutorial, box=args.box, bin=args.bin, seed=11,
            n_particles=args.n_particles, snr=None, gpu=args.gpu,
        )  # fmt: skip
        simulated = simulate(options, sim)
    rows = []
    for i, (name, env, options) in enumerate(settings):
        rows.append(run_setting(args, name, env, options, i))
        sys.stdout.write(json.dumps(rows[-1]) + "\n")
        sys.stdout.flush()
        partial = {"simulate_seconds": simulated, "rows": rows}
        args.out.write_text(json.dumps(partial, indent=1))  # what is done survives a cut
    done = [row for row in rows if "failed" not in row]
    columns = ["setting", "iteration_seconds", "e_step_seconds", *PHASES, "fine_groups",
               "resolution_vs_truth_angst", "median_angular_error_deg"]  # fmt: skip
    lines = [f"simulated in {simulated:.1f} s", " | ".join(columns)]
    lines += [
        " | ".join(f"{row[c]:.2f}" if isinstance(row[c], float) else str(row[c]) for c in columns)
        for row in done
    ]
    sys.stdout.write("\n".join(lines) + "\n")
    args.out.write_text(json.dumps({"simulate_seconds": simulated, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
