"""Counting the reads of device values by the host (each one, on a GPU, waits for the queue).

    with host_reads() as reads:
        work()
    assert reads == []

Records, in order, every operator that hands a tensor's values to the host or sizes its
output by them (``nonzero``, ``unique``, ``masked_select``, ``item``/``int``/``bool`` of a
tensor, a boolean index), and every ``Tensor.tolist``/``numpy``/``cpu``. On the CPU they
cost nothing, so the count, not the time, is what a test can hold a function to.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["host_reads"]

READING_OPERATORS = (
    "nonzero", "_local_scalar_dense", "_unique", "_unique2", "unique_dim",
    "unique_consecutive", "masked_select", "repeat_interleave",
)  # fmt: skip
READING_METHODS = ("tolist", "numpy", "cpu")
INDEXING_OPERATORS = ("index", "index_put", "index_put_", "_index_put_impl_")


def _is_mask(index: object) -> bool:
    return isinstance(index, torch.Tensor) and index.dtype in (torch.bool, torch.uint8)


class _Reads(TorchDispatchMode):
    def __init__(self, reads: list[str]) -> None:
        super().__init__()
        self.reads = reads

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in READING_OPERATORS:
            self.reads.append(name)
        elif name in INDEXING_OPERATORS and any(_is_mask(i) for i in args[1] or ()):
            self.reads.append(f"{name} by a mask")  # its size is the mask's count
        return func(*args, **(kwargs or {}))


@contextmanager
def host_reads() -> Iterator[list[str]]:
    """The names of the reads made inside the block, in order (module docstring)."""
    reads: list[str] = []
    originals = {name: getattr(torch.Tensor, name) for name in READING_METHODS}

    def counted(name):
        def method(self, *args, **kwargs):
            reads.append(name)
            return originals[name](self, *args, **kwargs)

        return method

    try:
        for name in READING_METHODS:
            setattr(torch.Tensor, name, counted(name))
        with _Reads(reads):
            yield reads
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
