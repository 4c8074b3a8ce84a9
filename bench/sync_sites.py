"""Calls that would make the host wait for a GPU, counted per call site, over one iteration.

    python3 bench/sync_sites.py --continue Refine3D/run_itNNN_optimiser.star --o ROOT
        [--iter N] [--top 40] [--ops]

Runs ``cryorefine refine --continue ... --iter N --o ROOT`` (on the CPU unless the
command line asks otherwise) with ``Tensor.item/tolist/nonzero/cpu/numpy``, ``bool``,
``int``, ``float`` and ``index`` of tensors, ``torch.nonzero``, ``torch.unique``,
``repeat_interleave`` and ``masked_select`` wrapped to count their calls by the
innermost two ``cryorefine`` frames, and blocking copies of host data to a GPU
(``counting_host_copies``). On a GPU each of these waits for the device's
queue to drain; on the CPU they cost nothing, so the count, not the time, is the
measurement there; on a GPU the seconds each call took (mostly the wait) are summed
by site as well. Prints the totals and the ``--top`` sites. With ``--ops``, every
operator dispatched (each a kernel launch on a GPU) is counted by site too, as
the host's time between two waits is mostly the launching of operators.
"""

import argparse
import collections
import functools
import time
import traceback

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from cryorefine.cli.main import main as cryorefine

WRAPPED = (
    (torch.Tensor, "item"), (torch.Tensor, "tolist"), (torch.Tensor, "nonzero"),
    (torch, "nonzero"), (torch.Tensor, "__bool__"), (torch.Tensor, "__int__"),
    (torch.Tensor, "__float__"), (torch.Tensor, "__index__"), (torch, "unique"),
    (torch.Tensor, "cpu"), (torch.Tensor, "numpy"), (torch, "repeat_interleave"),
    (torch.Tensor, "repeat_interleave"), (torch, "masked_select"),
)  # fmt: skip


def _site() -> str:
    frames = [f for f in traceback.extract_stack(limit=14)[:-2] if "/cryorefine/" in f.filename]
    return " < ".join(f"{f.filename.split('cryorefine/')[-1]}:{f.lineno}" for f in frames[:-3:-1])


def counting(counts: collections.Counter, seconds: collections.Counter) -> None:
    """Wrap every entry of ``WRAPPED`` to add its calls to ``counts`` by site, and the
    seconds each call took to ``seconds`` (on a GPU, mostly the wait for the queue)."""
    for owner, name in WRAPPED:
        original = getattr(owner, name)

        @functools.wraps(original)
        def counted(*args, _original=original, _name=name, **kwargs):
            start = time.perf_counter()
            out = _original(*args, **kwargs)
            elapsed = time.perf_counter() - start  # timed before the site is looked up
            key = f"{_name.strip('_'):<17} {_site()}"
            counts[key] += 1
            seconds[key] += elapsed
            return out

        setattr(owner, name, counted)


def counting_host_copies(counts: collections.Counter, seconds: collections.Counter) -> None:
    """Count blocking copies of host data to a GPU by site: ``Tensor.to``/``cuda`` without
    ``non_blocking``, ``torch.as_tensor``/``torch.tensor`` with a CUDA ``device``. Each
    synchronises the stream before it copies, as ``item`` does (none on the CPU)."""

    def wrap(owner, name, blocking):
        original = getattr(owner, name)

        @functools.wraps(original)
        def counted(*args, _original=original, _name=name, **kwargs):
            start = time.perf_counter()
            out = _original(*args, **kwargs)
            elapsed = time.perf_counter() - start
            if isinstance(out, torch.Tensor) and out.is_cuda and blocking(args, kwargs):
                key = f"{'h2d ' + _name:<17} {_site()}"
                counts[key] += 1
                seconds[key] += elapsed
            return out

        setattr(owner, name, counted)

    def from_host(args, kwargs) -> bool:
        source = args[0] if args else None
        non_blocking = kwargs.get("non_blocking", False) or any(a is True for a in args[1:])
        return not non_blocking and not (isinstance(source, torch.Tensor) and source.is_cuda)

    def data_from_host(args, kwargs) -> bool:
        source = args[0] if args else kwargs.get("data")
        return not (isinstance(source, torch.Tensor) and source.is_cuda)

    wrap(torch.Tensor, "to", from_host)
    wrap(torch.Tensor, "cuda", from_host)
    wrap(torch, "as_tensor", data_from_host)
    wrap(torch, "tensor", data_from_host)


class OperatorSites(TorchDispatchMode):
    """Counts every dispatched operator by its innermost two ``cryorefine`` frames."""

    def __init__(self, counts: collections.Counter) -> None:
        super().__init__()
        self.counts = counts

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[f"{func.overloadpacket.__name__:<17} {_site()}"] += 1
        return func(*args, **(kwargs or {}))


def main() -> None:
    """Run the count (module docstring)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--continue", dest="continue_from", required=True)
    parser.add_argument("--o", required=True, help="output root of the continued run")
    parser.add_argument("--iter", type=int, default=None, help="default: one more iteration")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--ops", action="store_true", help="count operators by site too")
    args, extra = parser.parse_known_args()
    counts: collections.Counter = collections.Counter()
    seconds: collections.Counter = collections.Counter()
    counting(counts, seconds)
    counting_host_copies(counts, seconds)
    command = ["refine", "--continue", args.continue_from, "--o", args.o, *extra]
    if args.iter is not None:
        command += ["--iter", str(args.iter)]
    operators: collections.Counter = collections.Counter()
    if args.ops:
        with OperatorSites(operators):
            cryorefine(command)
    else:
        cryorefine(command)
    print(f"calls that would sync a GPU: {sum(counts.values())}")  # noqa: T201
    for key, n in counts.most_common(args.top):
        print(f"{n:7d}  {key}")  # noqa: T201
    print(f"seconds in those calls: {sum(seconds.values()):.2f} (by site, most first)")  # noqa: T201
    for key, spent in seconds.most_common(args.top):
        print(f"{spent:9.3f}  {counts[key]:6d}  {key}")  # noqa: T201
    if args.ops:
        by_site = collections.Counter()
        for key, n in operators.items():
            by_site[key.split(maxsplit=1)[1] if " " in key.strip() else ""] += n
        print(f"operators dispatched: {sum(operators.values())}")  # noqa: T201
        for key, n in by_site.most_common(args.top):
            print(f"{n:7d}  {key}")  # noqa: T201


if __name__ == "__main__":
    main()
