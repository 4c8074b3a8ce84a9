"""Reduced precision against float64 on a refinement's own particles: best poses that change.

    python3 bench/precision_poses.py --continue Refine3D/run_itNNN_optimiser.star [--gpu]
        [--particles 500] [--precisions float32 tf32 texture] [--out FILE]

Reads a finished iteration as ``--continue`` does (its options, state, half
models and particles) and runs that iteration's E-step again
(``refine.half_pass.run_half_set``, the refine's own code path) on the first
``--particles`` particles of half set 1: once in float64, once per precision
in ``--precisions``. Each particle's new best pose (rotation and origin) is
compared with float64's: a pose changes when the rotation moves by more than
1e-3 degrees or the origin by more than 1e-6 Angstrom (a different sample;
equal samples agree to rounding). Prints per precision the share of particles
whose pose changes, the median and largest rotation change among them (modulo
the point group: a symmetry mate of the same pose counts as a change of 0, and
their number is printed), the
largest relative change of pmax and the E-step seconds; writes the same as
JSON. On the CPU ``tf32`` is ``float32`` (tf32 is a CUDA mode). ``texture`` is
float32 with the projections sampled by the GPU's texture units
(``fourier.texture``, refine's ``--interpolation texture``), ``tf32_texture``
the same with tf32; the other precisions sample exactly. With the environment's
``CRYOREFINE_HELD_CROSS=1`` float32 and tf32 take the held-row kernels.
"""

import argparse
import dataclasses
import json
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from cryorefine.fourier import prepare_reference
from cryorefine.fourier.texture import reference_texture
from cryorefine.geometry import (
    angular_distance_deg,
    asymmetric_unit_pixels,
    euler_to_matrix,
    psi_angles_deg,
    symmetric_angular_distance_deg,
)
from cryorefine.likelihood import OrientationGrid, working_dtypes
from cryorefine.refine.e_step import default_batch_size, expectation_plan
from cryorefine.refine.half_pass import run_half_set
from cryorefine.refine.initialise import load_inputs
from cryorefine.refine.particle_noise import iteration_noise_seed
from cryorefine.refine.run_continue import output_root_of
from cryorefine.refine.run_files import read_continue


def _poses(continued, inputs, rows, variant, device):
    """One E-step of half set 1's ``rows`` as ``variant``: its pose update and seconds."""
    texture = variant.endswith("texture")  # "texture" is float32's, "tf32_texture" tf32's
    precision = "float32" if variant == "texture" else variant.removesuffix("_texture")
    options, state, model = continued.options, continued.state, continued.half_models[0]
    grid = OrientationGrid(
        healpix_order=state.healpix_order,
        pixels=asymmetric_unit_pixels(state.healpix_order, inputs.group).to(device),
        psi_deg=psi_angles_deg(state.psi_step_deg, device=device),
        perturbation=state.perturbation,
    )
    real = working_dtypes(precision)[0]
    reference = prepare_reference(model.reference.to(device, real), padding_factor=options.pad)
    plan = expectation_plan(
        state, options, inputs, grid, model, cc=False, precision=precision, device=device
    )
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    sampling = reference_texture(reference) if texture else nullcontext()
    with sampling:
        _, update = run_half_set(
            inputs.particles,
            rows,
            model,
            state,
            options,
            plan,
            optics_group=inputs.optics_group,
            scale_group=inputs.scale_group,
            operators=inputs.group.rotations,
            reference_ft=reference,
            batch_size=default_batch_size(inputs.ndim, inputs.ori_size, device),
            device=device,
            noise_seed=iteration_noise_seed(options.random_seed, state.iteration),
        )
    if device.type == "cuda":
        torch.cuda.synchronize()
    return update, time.perf_counter() - start


def _compare(update, reference, operators: torch.Tensor) -> dict:
    """How ``update``'s best poses differ from ``reference``'s (same rows, same order).

    A pose changes when it is another sample, a symmetry mate included; the sizes of
    the changes are taken modulo the point group (``operators``).
    """
    assert (update.rows == reference.rows).all()
    moved_to = euler_to_matrix(torch.as_tensor(update.angles_deg, dtype=torch.float64))
    moved_from = euler_to_matrix(torch.as_tensor(reference.angles_deg, dtype=torch.float64))
    other_sample = angular_distance_deg(moved_to, moved_from).numpy() > 1e-3
    turn = symmetric_angular_distance_deg(
        moved_to, moved_from, operators.to(torch.float64).cpu()
    ).numpy()
    moved = np.abs(update.origins_angst - reference.origins_angst).max(axis=1)
    changed = other_sample | (moved > 1e-6)
    pmax = np.abs(update.pmax - reference.pmax) / np.maximum(reference.pmax, 1e-300)
    return {
        "particles": len(changed),
        "pose_changed_share": float(changed.mean()),
        "rotation_change_deg_median_of_changed": float(np.median(turn[changed]))
        if changed.any()
        else 0.0,
        "rotation_change_deg_max": float(turn.max()),
        "symmetry_mates_taken": int((other_sample & (turn <= 1e-3)).sum()),
        "origin_change_angst_max": float(moved.max()),
        "pmax_relative_change_max": float(pmax.max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--continue", dest="continue_from", type=Path, required=True)
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--particles", type=int, default=500)
    parser.add_argument("--precisions", nargs="+", default=["float32", "tf32", "texture"])
    parser.add_argument("--out", type=Path, default=Path("precision_poses.json"))
    args = parser.parse_args()
    device = torch.device("cuda:0" if args.gpu else "cpu")
    continued = read_continue(args.continue_from, device=device)
    options = dataclasses.replace(
        continued.options,
        input_particles=Path(continued.data_file),
        output_root=output_root_of(args.continue_from),
    )
    continued = dataclasses.replace(continued, options=options)
    inputs = load_inputs(options, device=device)
    rows = np.flatnonzero(inputs.half_sets == 1)[: args.particles]
    reference, seconds64 = _poses(continued, inputs, rows, "float64", device)
    state = continued.state
    lines = [
        f"iteration {state.iteration}: healpix order {state.healpix_order}, current size "
        f"{state.current_size}, coarse size {state.coarse_size}, {len(rows)} particles of "
        f"half set 1; float64 E-step {seconds64:.1f} s",
        "precision | pose changed | median change of changed (deg) | max change (deg) | "
        "max pmax change | symmetry mates | seconds",
    ]
    rows_out = []
    for precision in args.precisions:
        update, seconds = _poses(continued, inputs, rows, precision, device)
        row = {
            "precision": precision,
            "seconds": seconds,
            **_compare(update, reference, inputs.group.rotations),
        }
        rows_out.append(row)
        lines.append(
            f"{precision} | {row['pose_changed_share']:.1%} | "
            f"{row['rotation_change_deg_median_of_changed']:.3g} | "
            f"{row['rotation_change_deg_max']:.3g} | {row['pmax_relative_change_max']:.2e} | "
            f"{row['symmetry_mates_taken']} | {seconds:.1f}"
        )
    sys.stdout.write("\n".join(lines) + "\n")
    summary = {
        "device": torch.cuda.get_device_name(device) if args.gpu else "CPU",
        "optimiser": str(args.continue_from),
        "iteration": state.iteration,
        "healpix_order": state.healpix_order,
        "current_size": state.current_size,
        "coarse_size": state.coarse_size,
        "float64_seconds": seconds64,
        "rows": rows_out,
    }
    args.out.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
