"""The refine as several ranks on one GPU, and the device memory all processes use.

``tutorial_bench.py --ranks N`` runs ``cryorefine refine`` under ``torchrun`` with
RELION's ``--gpu 0:0...``: the ranks share GPU 0 (``parallel.session``), each
rank's host work overlapping the others' device work.
"""

import subprocess
import sys
import threading
import time

import torch

__all__ = ["DeviceMemoryPoller", "run_ranks"]


def run_ranks(arguments: list[str], ranks: int) -> float:
    """Run ``cryorefine arguments`` as ``ranks`` ranks on GPU 0 (``torchrun``, RELION's
    ``--gpu 0:0``); its seconds. A stop (SIGTERM, as ``_stop`` raises it) stops the ranks."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", str(ranks), "-m", "cryorefine", *arguments,
               "--gpu", ":".join(["0"] * ranks)]  # fmt: skip
    start = time.perf_counter()
    process = subprocess.Popen(command)
    try:
        status = process.wait()
    except KeyboardInterrupt:
        process.terminate()  # torchrun passes it to the ranks
        process.wait()
        raise
    if status != 0:
        raise SystemExit(f"cryorefine {arguments[0]} on {ranks} ranks failed with status {status}")
    return time.perf_counter() - start


class DeviceMemoryPoller:
    """The most device memory in use, all processes together (``mem_get_info``, every second).

    Each call took 3.7 ms of the host on an H200 (session 29's profile of the final
    iteration: 63 calls, 233 ms), on the poller's thread beside the refine's own calls
    to the driver: every 0.25 s, as before, was about 1.5 % of the host's time.
    """

    def __init__(self) -> None:
        self.peak_bytes = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._done.wait(1.0):
            free, total = torch.cuda.mem_get_info(0)
            self.peak_bytes = max(self.peak_bytes, total - free)

    def stop(self) -> float:
        """Stop polling; the peak in GiB."""
        self._done.set()
        self._thread.join()
        return self.peak_bytes / 2**30
