"""A kernel launched with each combination of its launch constants: time and agreement.

Used by ``fine_kernel_configs.py`` and ``fourier_kernel_configs.py``. ``sweep`` launches
``launch(*values)`` for every combination of ``grid``'s values (the first combination the
reference), after ``reset()`` each time, and times the launch alone with CUDA events
(the median of ``repeats`` after a compiling call). Each row holds the combination, the
milliseconds and how far its result (``result()``, read after the compiling call) is from
the first combination's; a combination Triton refuses is a row with its error.
"""

import itertools
import statistics
from collections.abc import Callable

import torch

__all__ = ["sweep"]


def sweep(
    grid: dict[str, tuple],
    launch: Callable[..., None],
    result: Callable[[], torch.Tensor],
    repeats: int,
    reset: Callable[[], None] = lambda: None,
) -> list[dict]:
    """Rows ``{constant: value, ..., "ms", "rel_diff", "bitwise_same"}`` or ``{..., "error"}``."""
    keys, rows, reference = list(grid), [], None
    for values in itertools.product(*(grid[key] for key in keys)):
        config = dict(zip(keys, values, strict=True))
        try:
            reset()
            launch(*values)  # compiles
            torch.cuda.synchronize()
        except Exception as error:  # a shape Triton refuses is a row of the table
            rows.append({**config, "error": f"{type(error).__name__}: {str(error)[:120]}"})
            continue
        got = result().clone()
        reference = got if reference is None else reference
        times = []
        for _ in range(repeats):
            reset()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            launch(*values)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        rows.append({
            **config, "ms": statistics.median(times),
            "rel_diff": float((got - reference).abs().max() / reference.abs().max()),
            "bitwise_same": bool(torch.equal(got, reference)),
        })  # fmt: skip
    return rows
