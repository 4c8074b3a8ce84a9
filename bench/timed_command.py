"""One ``cryorefine`` command run in this process, timed: the benches' common step."""

import time

from cryorefine.cli.main import main as cryorefine

__all__ = ["run"]


def run(arguments: list[str]) -> float:
    """Run ``cryorefine ARGUMENTS``; its wall seconds. Stops the bench if the command fails."""
    start = time.perf_counter()
    status = cryorefine(arguments)
    if status != 0:
        raise SystemExit(f"cryorefine {arguments[0]} failed with status {status}")
    return time.perf_counter() - start
