"""Ways to form the held lists' cross term ``Z (t, 2k) @ P^T (2k, r)`` for a few particles.

    python3 bench/list_products_bench.py [--device cuda] [--k 238869] [--t 27] [--r 178]
        [--particles 10] [--union 3000] [--out FILE]

Each particle ``b`` has ``Z[b] (t, 2k)`` and its own ``r`` rows of a held table
``V (union, 2k)``. Timed, best of 3 after warm-ups (``floor_rates.seconds_per_call``;
the union table is made once):

- ``gather``: ``V[rows]`` alone (``(s, r, 2k)``);
- ``bmm``: the gather, then ``Z @ G^T`` batched over particles (one product per
  particle: few output tiles, the long ``2k`` walked by few blocks);
- ``split_k``: the gather, then the same product with ``2k`` cut into blocks of
  ``kc`` (zero-padded copies) as a batch of ``s x nk`` products, summed;
- ``blocks``: the gather, then ``scores.per_particle_cross``: per particle one
  batch of ``nk`` products over strided views of its blocks (no copies), summed;
- ``factored``: ``Y = conj(wKX) P`` per slot, then one ``(s r, 2k) @ (2k, t)``
  product with the shared phases (the gather, one more pass over it, and the product).

Floors: bytes (the gather written and read, read by the product: 24 per slot and
coefficient) over the measured copy bandwidth (``floor_rates.copy_rates``, its
largest size). Prints a table and writes it as JSON.
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from floor_rates import copy_rates, seconds_per_call  # bench/ is on sys.path

from cryorefine.likelihood.scores import per_particle_cross


def _split_k(z: torch.Tensor, g: torch.Tensor, kc: int) -> torch.Tensor:
    """``z (s, t, n) @ g(s, r, n)^T`` with ``n`` cut into blocks of ``kc`` (zero-padded)."""
    s, t, n = z.shape
    r = g.shape[1]
    nk = -(-n // kc)
    pad = nk * kc - n
    zp = torch.nn.functional.pad(z, (0, pad)).reshape(s, t, nk, kc).transpose(1, 2)
    gp = torch.nn.functional.pad(g, (0, pad)).reshape(s, r, nk, kc).transpose(1, 2)
    parts = zp.reshape(s * nk, t, kc) @ gp.reshape(s * nk, r, kc).transpose(1, 2)
    return parts.reshape(s, nk, t, r).sum(dim=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--k", type=int, default=238869)
    parser.add_argument("--t", type=int, default=27)
    parser.add_argument("--r", type=int, default=178)
    parser.add_argument("--particles", type=int, default=10)
    parser.add_argument("--union", type=int, default=3000)
    parser.add_argument("--kc", type=int, default=8192)
    parser.add_argument("--out", type=Path, default=Path("list_products_bench.json"))
    args = parser.parse_args()
    device = torch.device(args.device)
    s, t, r, k, n = args.particles, args.t, args.r, args.k, args.union
    gen = torch.Generator(device=device).manual_seed(3)
    table = torch.randn(n, k, dtype=torch.complex64, device=device, generator=gen)
    rows = torch.randint(n, (s, r), device=device, generator=gen)
    z = torch.randn(s, t, 2 * k, device=device, generator=gen)
    weighted = torch.randn(s, k, dtype=torch.complex64, device=device, generator=gen)
    phases = torch.randn(t, 2 * k, device=device, generator=gen)

    def gather() -> torch.Tensor:
        return torch.view_as_real(table[rows]).flatten(-2)

    def bmm() -> torch.Tensor:
        return z @ gather().transpose(1, 2)

    def split_k() -> torch.Tensor:
        return _split_k(z, gather(), args.kc)

    def blocks() -> torch.Tensor:
        return per_particle_cross(z, gather(), block=args.kc)

    def factored() -> torch.Tensor:
        y = table[rows].mul_(weighted[:, None, :])
        return (torch.view_as_real(y).reshape(s * r, 2 * k) @ phases.T).reshape(s, r, t)

    want = bmm()
    for way in (split_k, blocks):
        torch.testing.assert_close(way(), want, rtol=1e-3, atol=1e-3 * want.abs().max().item())
    by_size = copy_rates(device, 3)
    bandwidth = by_size[max(by_size, key=int)]  # the largest copy: device memory, not caches
    floor = 24 * s * r * k / bandwidth
    ways = {
        "gather": gather,
        "bmm": bmm,
        "split_k": split_k,
        "blocks": blocks,
        "factored": factored,
    }
    seconds = {key: seconds_per_call(fn, device, 3) for key, fn in ways.items()}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    lines = [
        f"{name}: {s} particles x {r} rows of {n}, {k} coefficients, {t} translations; "
        f"copy {bandwidth / 1e12:.2f} TB/s, floor {floor * 1e3:.2f} ms",
        "way | ms | / floor",
    ]
    lines += [f"{key} | {value * 1e3:.2f} | {value / floor:.1f}" for key, value in seconds.items()]
    sys.stdout.write("\n".join(lines) + "\n")
    summary = {"device": name, "particles": s, "rows": r, "union": n, "k": k, "t": t,
               "kc": args.kc, "bandwidth_tb_s": bandwidth / 1e12, "floor_seconds": floor,
               "seconds": seconds}  # fmt: skip
    args.out.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
