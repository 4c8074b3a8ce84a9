"""What one small operator costs the host on this machine: eager dispatch and launch.

Each case calls one operator on small tensors ``--calls`` times in a loop and divides the
host's seconds by the calls (the device's work is a few µs at most, so the loop measures
the host; a final synchronisation adds the device's tail). Prints a table, writes JSON.

    python3 bench/dispatch_cost.py [--device cuda] [--calls 5000] [--out dispatch_cost.json]
"""

import argparse
import json
import sys
import time
from collections.abc import Callable

import torch


def cases(device: torch.device) -> dict[str, Callable[[], object]]:
    """Named calls of one operator each, on tensors of a few thousand elements."""
    x = torch.randn(4096, device=device)
    y = torch.randn(4096, device=device)
    rows = torch.randn(256, 64, device=device)
    index = torch.randint(0, 256, (128,), device=device)
    mask = x > 0
    return {
        "x.add_(1.0)": lambda: x.add_(1.0),
        "x * y (new tensor)": lambda: x * y,
        "rows.index_select(0, index)": lambda: rows.index_select(0, index),
        "rows[index]": lambda: rows[index],
        "rows[:, 3:40] (view)": lambda: rows[:, 3:40],
        "torch.cat((x, y))": lambda: torch.cat((x, y)),
        "rows.sum(1)": lambda: rows.sum(1),
        "torch.empty(4096)": lambda: torch.empty(4096, device=device),
        "x[mask] (waits for the device)": lambda: x[mask],
        "int(index.max()) (waits)": lambda: int(index.max()),
    }


def time_case(call: Callable[[], object], calls: int, device: torch.device) -> float:
    """Host µs per call, after a warm-up."""
    for _ in range(20):
        call()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        call()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--out", default="dispatch_cost.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = {name: time_case(call, args.calls, device) for name, call in cases(device).items()}
    lines = [f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}",
             f"torch {torch.__version__}", "operator | host µs per call"]  # fmt: skip
    lines += [f"{name} | {micro:.1f}" for name, micro in rows.items()]
    sys.stdout.write("\n".join(lines) + "\n")
    with open(args.out, "w") as out:
        json.dump({"device": args.device, "torch": torch.__version__, "us_per_call": rows}, out,
                  indent=1)  # fmt: skip


if __name__ == "__main__":
    main()
