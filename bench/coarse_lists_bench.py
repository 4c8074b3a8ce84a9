"""Coarse pass of local searches on 3D particles: union product against per-particle lists.

    python3 bench/coarse_lists_bench.py [--device cuda] [--box 48] [--particles 16]
        [--order 3] [--candidates 178] [--spread_deg 6] [--psi_spread_deg 0]
        [--max_bytes B] [--out FILE]

The regime of the tutorial job's iterations at HEALPix order 4 and coarse size
96: every particle has a list of ``--candidates`` orientations (the nearest
grid orientations to its prior centre), a batch's centres lie within
``--spread_deg`` of each other and, turned about z, within ``--psi_spread_deg``
(a batch sorted by direction first shares directions, not psi), 27
translations, the coarse window is the whole box. ``search.coarse_pass`` is
timed both ways (``union_is_cheaper`` forced), best of 3 after warm-ups
(``floor_rates.seconds_per_call``), with the choice that the rule makes and
two floors: the union product's flops over the measured float32 matrix rate
(``floor_rates.matmul_rate``), and the held lists' bytes (24 per list entry and
coefficient: the gather written and read, and read by the product) over the
measured copy bandwidth (``floor_rates.copy_rates``, its largest size). Prints
a table and writes it as JSON.
"""

import argparse
import json
import math
import sys
from pathlib import Path
from unittest import mock

import torch
from floor_rates import copy_rates, matmul_rate, seconds_per_call  # bench/ is on sys.path

from cryorefine.fourier import prepare_reference
from cryorefine.geometry import angular_step_deg, healpix_npix, psi_angles_deg, translation_grid
from cryorefine.likelihood import (
    ExpectationPlan,
    OrientationGrid,
    ParticleTerms,
    coarse_rotations,
    memory_budget,
    prepare,
    search,
)


def _case(args: argparse.Namespace, device: torch.device):
    gen = torch.Generator().manual_seed(5)
    n, b = args.box, args.particles
    volume = torch.randn(n, n, n, generator=gen)
    reference = prepare_reference(volume.to(device), padding_factor=2)
    grid = OrientationGrid(
        args.order,
        torch.arange(healpix_npix(args.order), device=device),
        psi_angles_deg(angular_step_deg(args.order), device=device),
    )
    rotations = coarse_rotations(grid).to(torch.float64)  # (count, 3, 3)
    base = rotations[int(torch.randint(grid.count, (1,), generator=gen))]
    # prior centres within spread_deg of one orientation (a batch in search order)
    axis = torch.nn.functional.normalize(torch.randn(b, 3, generator=gen, dtype=torch.float64))
    angle = torch.rand(b, 1, generator=gen, dtype=torch.float64) * math.radians(args.spread_deg)
    kx = torch.zeros(b, 3, 3, dtype=torch.float64)
    kx[:, 0, 1], kx[:, 0, 2], kx[:, 1, 2] = -axis[:, 2], axis[:, 1], -axis[:, 0]
    kx = kx - kx.transpose(1, 2)
    s, c = torch.sin(angle)[:, :, None], torch.cos(angle)[:, :, None]
    turn = torch.eye(3, dtype=torch.float64) + s * kx + (1 - c) * kx @ kx
    psi = torch.rand(b, generator=gen, dtype=torch.float64) * math.radians(args.psi_spread_deg)
    about_z = torch.zeros(b, 3, 3, dtype=torch.float64)
    about_z[:, 0, 0], about_z[:, 0, 1] = torch.cos(psi), -torch.sin(psi)
    about_z[:, 1, 0], about_z[:, 1, 1] = torch.sin(psi), torch.cos(psi)
    about_z[:, 2, 2] = 1.0
    centres = (about_z @ turn @ base.cpu()).to(device)
    trace = torch.einsum("bij,nij->bn", centres, rotations)  # tr(C^T R) = 1 + 2 cos(angle)
    ids = trace.topk(args.candidates, dim=1).indices
    m = n
    shape = (b, m, m, m // 2 + 1)
    data = torch.complex(torch.randn(shape, generator=gen), torch.randn(shape, generator=gen))
    particles = ParticleTerms(
        masked_ft=data.to(device),
        unmasked_ft=data.to(device),
        ctf=torch.ones(shape, device=device),
        sigma2_noise=torch.full((b, n // 2 + 1), 1e3, dtype=torch.float64, device=device),
        origins_px=torch.zeros(b, 3, dtype=torch.float64, device=device),
        offset_priors_px=torch.zeros(b, 3, dtype=torch.float64, device=device),
        log_prior_orientations=torch.zeros(b, args.candidates, dtype=torch.float64, device=device),
        orientation_ids=ids,
    )
    budget = args.max_bytes or memory_budget(device)
    plan = ExpectationPlan(
        ori_size=n,
        current_size=m,
        coarse_size=m,
        orientations=grid,
        translations_px=translation_grid(0.96, 0.5, ndim=3, device=device),
        offset_step_px=0.5,
        sigma2_offset_px2=1.0,
        max_bytes=budget,
    )
    return reference, particles, plan, ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--box", type=int, default=48)
    parser.add_argument("--particles", type=int, default=16)
    parser.add_argument("--order", type=int, default=3)
    parser.add_argument("--candidates", type=int, default=178)
    parser.add_argument("--spread_deg", type=float, default=6.0)
    parser.add_argument("--psi_spread_deg", type=float, default=0.0)
    parser.add_argument("--max_bytes", type=int, default=0, help="0: the E-step's default")
    parser.add_argument("--out", type=Path, default=Path("coarse_lists_bench.json"))
    args = parser.parse_args()
    device = torch.device(args.device)
    reference, particles, plan, ids = _case(args, device)
    prep = prepare(particles, plan)
    k = prep.coarse_window.count
    union = int(torch.unique(ids).numel())
    t = plan.translations_px.shape[0]
    table_bytes = union * k * reference.element_size()
    held = table_bytes <= plan.max_bytes // 2  # else the batch is split until it is
    chosen = search.union_is_cheaper(union, float(args.candidates), t)
    seconds = {}
    for name, forced in (("union_product", True), ("per_particle_lists", False)):
        with mock.patch.object(search, "union_is_cheaper", lambda *_, f=forced: f):
            run = lambda: search.coarse_pass(prep, particles, reference, plan)  # noqa: E731
            seconds[name] = seconds_per_call(run, device, 3)
    flops = 4 * args.particles * t * union * k  # the union product: (b t) x 2k x union, 2 each
    rate = matmul_rate((1, 1024, 2 * k, 512), device, 3)
    list_bytes = 24 * args.particles * args.candidates * k
    by_size = copy_rates(device, 3)
    bandwidth = by_size[max(by_size, key=int)]  # the largest copy: device memory, not caches
    floors = {"union_product": flops / rate, "per_particle_lists": list_bytes / bandwidth}
    summary = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
        "box": args.box,
        "particles": args.particles,
        "translations": t,
        "candidates_per_particle": args.candidates,
        "union": union,
        "coarse_coefficients": k,
        "union_projection_gib": table_bytes / 2**30,
        "budget_half_gib": plan.max_bytes / 2 / 2**30,
        "union_held_whole": held,
        "rule_chooses": "union_product" if chosen else "per_particle_lists",
        "seconds": seconds,
        "floor_seconds": floors,
        "matmul_tflops_float32": rate / 1e12,
        "copy_tb_per_s": bandwidth / 1e12,
    }
    lines = [
        f"{summary['device']}: box {args.box}, {args.particles} particles x {t} translations, "
        f"{args.candidates} candidates each, union {union} rows of {k} coefficients "
        f"({table_bytes / 2**30:.2f} GiB; half the budget is "
        f"{plan.max_bytes / 2 / 2**30:.2f} GiB: held whole={held})",
        "path | seconds | floor seconds | / floor",
    ]
    for name, value in seconds.items():
        lines.append(f"{name} | {value:.3f} | {floors[name]:.3f} | {value / floors[name]:.1f}")
    lines.append(f"the rule chooses: {summary['rule_chooses']}")
    sys.stdout.write("\n".join(lines) + "\n")
    args.out.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
