"""The fine pass's products and gathers at the tutorial's final-iteration shapes, timed.

    python3 bench/fine_ops_bench.py [--device cuda] [--out FILE]

A fine group of the tutorial job's final iteration (box 96, 3D) holds about
``b`` = 37 particles, ``rows`` = 732 fine rows of projections held on the fine
window (``k`` = 238,869 coefficients at size 96) and 15 pairs of ``f`` = 8
children per particle. Timed here, each against its floor (flops over the
float32 matrix rate measured in the same run, bytes over the copy rate) and
against the other way of doing it:

- ``w K^2`` of the particles against the held rows' ``|P|^2``, ``(b, k) @ (k,
  rows)``: one product (``a @ b``, as ``pairs.score_pairs`` does), and the long
  ``k`` cut into blocks, one batched product (``long_inner_product`` here);
- the pairs' weights against the rows' ``|P|^2``, ``(b, rows) @ (rows, k)``;
- the gather of each particle's pairs' blocks ``(b, l, f, k)`` from the held
  table (``values[index]`` and ``index_select``);
- the cross terms of each particle's own rows of a held table, ``Z (b, t, 2k)``
  against ``P[rows] (b, r, 2k)``: gathered and multiplied (torch), and read
  through the indices by ``held_cross``'s Triton kernel (float32 and TF32), at
  the fine group's shape (``t`` = 24 fine translations, ``r`` = 120 children of
  15 pairs, 732 rows) and at a coarse chunk's of local searches (32 particles,
  ``t`` = 7, ``r`` = 180 candidates of a 2,000-row union), on CUDA; and the
  noise sums' ``sum_t conj(S_t) Q_t`` with ``Q = W (b, t, r) @ P[rows]`` both ways:
  gathered, multiplied and summed with torch, and by ``unshifted``'s kernel;
- at a coarse chunk of the final iteration's local searches (32 particles, ``t`` =
  19 translations, ``r`` = 180 candidates of a 3,500-row union), the cross kernel with
  64, 128 and 256 rows per program (each program reads its particle's ``Z`` once), and
  ``sum w K^2 |P|^2`` of 133 particles at every union row (squares, then a product).

Prints a table and writes it as JSON.
"""

import argparse
import json
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from floor_rates import copy_rates, matmul_rate, seconds_per_call  # bench/ is on sys.path
from torch import Tensor

from cryorefine.likelihood.held_cross import kernel_cross, triton
from cryorefine.likelihood.scores import CROSS_BLOCK, squared_magnitude
from cryorefine.likelihood.unshifted import kernel_unshifted_combination

K, ROWS, B, PAIRS, F = 238_869, 732, 37, 15, 8


def long_inner_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a (m, k) @ b (k, n)`` with ``k`` cut into blocks of ``CROSS_BLOCK``: one product
    batched over the blocks on strided views, summed, plus the remainder (the split that
    ``scores.per_particle_cross`` makes per particle)."""
    k = a.shape[1]
    blocks = k // CROSS_BLOCK
    if blocks <= 1:
        return a @ b
    main = blocks * CROSS_BLOCK
    split_a = a[:, :main].unflatten(1, (blocks, CROSS_BLOCK)).transpose(0, 1)
    out = (split_a @ b[:main].unflatten(0, (blocks, CROSS_BLOCK))).sum(dim=0)
    if main < k:
        out += a[:, main:] @ b[main:]
    return out


def _row(name: str, seconds: float, flops: float, nbytes: float, rates: dict) -> dict:
    """A row's floor: its flops at the matrix rate of its precision, or its bytes at copy speed."""
    rate = rates["tf32_flops"] if "tf32" in name else rates["flops"]
    floor = max(flops / rate, nbytes / rates["copy"])
    return {"operation": name, "seconds": seconds, "floor_seconds": floor,
            "ratio_to_floor": seconds / floor}  # fmt: skip


def _cross_cases(
    device: torch.device, gen: torch.Generator
) -> list[tuple[str, Callable[[], object], float, float]]:
    """Cross terms of own rows: gathered and multiplied, and by the kernel (CUDA only)."""
    if device.type != "cuda" or triton is None:
        return []
    cases = []
    for name, b, t, r, n in (("fine", B, 24, PAIRS * F, ROWS), ("coarse", 32, 7, 180, 2000)):
        shifted = torch.randn((b, t, 2 * K), generator=gen, device=device)
        table = torch.randn((n, 2 * K), generator=gen, device=device)
        rows = torch.randint(0, n, (b, r), generator=gen, device=device)
        flops = 2.0 * b * t * r * 2 * K
        once = 4.0 * (b * t + b * r) * 2 * K  # Z and each own row read once
        gathered = once + 4.0 * 2 * b * r * 2 * K  # the copy written and read again

        def torch_route(s: Tensor = shifted, p: Tensor = table, i: Tensor = rows) -> Tensor:
            return s @ p[i].transpose(1, 2)

        def kernel(s: Tensor = shifted, p: Tensor = table, i: Tensor = rows, x: bool = False):
            return kernel_cross(s, p, i, tf32=x)

        cases.append((f"{name} cross: gather + bmm", torch_route, flops, gathered))
        cases.append((f"{name} cross: kernel float32", kernel, flops, once))
        cases.append((f"{name} cross: kernel tf32", partial(kernel, x=True), flops, once))
        if name == "fine":  # the noise sums: weights (b, t, r) against the same rows
            weights = torch.rand((b, t, r), generator=gen, device=device)
            angle = torch.rand((b, t, K), generator=gen, device=device) * 6.283
            phases = torch.polar(torch.ones_like(angle), angle)

            def q_torch(
                w: Tensor = weights, p: Tensor = table, i: Tensor = rows, s: Tensor = phases
            ) -> Tensor:
                q = torch.view_as_complex((w @ p[i]).unflatten(-1, (-1, 2)))
                return (s.conj() * q).sum(dim=1)

            def q_kernel(
                w: Tensor = weights,
                p: Tensor = table,
                i: Tensor = rows,
                s: Tensor = phases,
                x: bool = False,
            ) -> Tensor:
                return kernel_unshifted_combination(w, p, i, s, tf32=x)

            # the phases in place of Z (the same bytes), the rows, and G written; the torch
            # route also writes Q, then its product with the phases, and reads both back
            once_q = once + 8.0 * b * K
            gathered_q = gathered + 3 * 8.0 * b * t * K + 8.0 * b * K
            cases.append(("fine G: gather + bmm + sum", q_torch, flops, gathered_q))
            cases.append(("fine G: kernel float32", q_kernel, flops, once_q))
            cases.append(("fine G: kernel tf32", partial(q_kernel, x=True), flops, once_q))
    return cases


def _local_search_cases(
    device: torch.device, gen: torch.Generator
) -> list[tuple[str, Callable[[], object], float, float]]:
    """A coarse chunk of the final iteration's local searches: the cross kernel by rows per
    program, and the particles' weighted powers of the union's rows (CUDA only)."""
    if device.type != "cuda" or triton is None:
        return []
    b, t, r, n, particles = 32, 19, 180, 3500, 133
    shifted = torch.randn((b, t, 2 * K), generator=gen, device=device)
    union = torch.randn((n, K), generator=gen, device=device, dtype=torch.complex64)
    table = torch.view_as_real(union).reshape(n, 2 * K)
    rows = torch.randint(0, n, (b, r), generator=gen, device=device)
    flops = 2.0 * b * t * r * 2 * K
    once = 4.0 * (b * t + b * r) * 2 * K
    cases = []
    for block in (64, 128, 256):

        def cross(s: Tensor = shifted, p: Tensor = table, i: Tensor = rows, rb: int = block):
            return kernel_cross(s, p, i, tf32=True, block_rows=rb)

        cases.append((f"local cross tf32, {block} rows per program", cross, flops, once))
    weights = torch.rand((particles, K), generator=gen, device=device)
    power_flops = 2.0 * particles * n * K

    def squares_then_product(w: Tensor = weights, v: Tensor = union) -> Tensor:
        allowed = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            return w @ squared_magnitude(v).T
        finally:
            torch.backends.cuda.matmul.allow_tf32 = allowed

    read_once = 8.0 * n * K + 4.0 * particles * K  # the rows and the weights, once each
    cases.append(("w K^2 |P|^2: squares then product tf32", squares_then_product, power_flops,
                  read_once))  # fmt: skip
    return cases


def measure(device: torch.device, repeats: int) -> dict:
    """Every row of the table, with the rates its floors use."""
    gen = torch.Generator(device=device).manual_seed(0)
    copy = copy_rates(device, repeats)
    rates = {"flops": matmul_rate((1, 4096, 4096, 4096), device, repeats),
             "copy": max(copy.values())}  # fmt: skip
    allowed = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        rates["tf32_flops"] = matmul_rate((1, 4096, 4096, 4096), device, repeats)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allowed
    ctf_power = torch.rand((B, K), generator=gen, device=device)
    row_power = torch.rand((ROWS, K), generator=gen, device=device)
    row_weights = torch.rand((B, ROWS), generator=gen, device=device)
    values = torch.randn((ROWS // F, F, K), generator=gen, device=device, dtype=torch.complex64)
    index = torch.randint(0, ROWS // F, (B, PAIRS), generator=gen, device=device)
    inner_flops, inner_bytes = 2.0 * B * K * ROWS, 4.0 * (B + ROWS) * K
    gather_bytes = 2.0 * B * PAIRS * F * K * 8  # read and written once
    cases: list[tuple[str, Callable[[], object], float, float]] = [
        ("(b,k)@(k,rows) a @ b", lambda: ctf_power @ row_power.T, inner_flops, inner_bytes),
        ("(b,k)@(k,rows) long_inner_product",
         lambda: long_inner_product(ctf_power, row_power.T), inner_flops, inner_bytes),
        ("(b,rows)@(rows,k) a @ b", lambda: row_weights @ row_power, inner_flops, inner_bytes),
        ("gather (b,l,f,k) values[index]", lambda: values[index], 0.0, gather_bytes),
        ("gather (b,l,f,k) index_select",
         lambda: values.index_select(0, index.reshape(-1)), 0.0, gather_bytes),
    ]  # fmt: skip
    cases += _cross_cases(device, gen)
    cases += _local_search_cases(device, gen)
    rows = [
        _row(name, seconds_per_call(fn, device, repeats), flops, nbytes, rates)
        for name, fn, flops, nbytes in cases
    ]
    want = ctf_power.double() @ row_power.double().T
    error = (
        long_inner_product(ctf_power, row_power.T).double() - want
    ).abs().max() / want.abs().max()
    return {"device": torch.cuda.get_device_name() if device.type == "cuda" else "CPU",
            "shapes": {"k": K, "rows": ROWS, "b": B, "pairs": PAIRS, "f": F},
            "rates": rates, "long_inner_product_relative_error": float(error),
            "rows": rows}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench_fine_ops.json"))
    args = parser.parse_args()
    result = measure(torch.device(args.device), args.repeats)
    rates = result["rates"]
    lines = [
        f"device: {result['device']}; float32 {rates['flops'] / 1e12:.1f} TFLOP/s, tf32 "
        f"{rates['tf32_flops'] / 1e12:.1f} TFLOP/s (tf32 rows' floor), copy "
        f"{rates['copy'] / 1e9:.0f} GB/s; long_inner_product relative error "
        f"{result['long_inner_product_relative_error']:.2e}",
        f"{'operation':<40} {'ms':>9} {'floor ms':>9} {'ratio':>7}",
    ]
    lines += [
        f"{row['operation']:<40} {row['seconds'] * 1e3:9.3f} "
        f"{row['floor_seconds'] * 1e3:9.3f} {row['ratio_to_floor']:7.1f}"
        for row in result["rows"]
    ]
    sys.stdout.write("\n".join(lines) + "\n")
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
