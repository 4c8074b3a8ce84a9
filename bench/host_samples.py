"""Where the host's time goes, by sampling the main thread's Python stack.

cProfile charges every Python call a fixed cost, which distorts code made of many small
calls; a sampler does not. A thread wakes every ``interval`` seconds, takes the main
thread's frame from ``sys._current_frames()`` and counts:

- the innermost frame of the package (``file:line function``): the line that was running,
  including the torch operator it had called (torch's bindings release the GIL while an
  operator runs, so the sampler sees the calling line, not torch's internals);
- the innermost frame of any file: whether the time was in our lines, in torch's Python
  wrappers, numpy or the standard library;
- each package function anywhere on the stack once (inclusive time).

    with HostSampler() as sampler:
        work()
    print(sampler.table())

Each table gives samples and their share of all samples; with ``n`` samples a share ``p``
is known to about ``sqrt(p (1 - p) / n)``.
"""

import sys
import threading
import time
from collections import Counter
from pathlib import Path
from types import FrameType


def _short(filename: str) -> str:
    """A path from its package folder on (``cryorefine/likelihood/fine.py``)."""
    parts = Path(filename).parts
    for anchor in ("cryorefine", "torch", "numpy", "scipy"):
        if anchor in parts:
            return "/".join(parts[len(parts) - parts[::-1].index(anchor) - 1 :])
    return Path(filename).name


class HostSampler:
    """Samples the main thread's stack while active (a context manager)."""

    def __init__(self, interval: float = 0.001, package: str = "cryorefine") -> None:
        self.interval = interval
        self.package = f"{package}/"
        self.samples = 0
        self.lines: Counter[str] = Counter()
        self.innermost: Counter[str] = Counter()
        self.inclusive: Counter[str] = Counter()
        self._main = threading.main_thread().ident
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._switch = sys.getswitchinterval()
        self.seconds = 0.0

    def __enter__(self) -> "HostSampler":
        sys.setswitchinterval(min(self._switch, self.interval / 2))  # the sampler gets its turn
        self._start = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        sys.setswitchinterval(self._switch)
        self.seconds = time.perf_counter() - self._start

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            frame = sys._current_frames().get(self._main)
            if frame is not None:
                self._count(frame)

    def _count(self, frame: FrameType) -> None:
        self.samples += 1
        code = frame.f_code
        self.innermost[f"{_short(code.co_filename)} {code.co_name}"] += 1
        seen: set[str] = set()
        own_line = None
        while frame is not None:
            code = frame.f_code
            if self.package in code.co_filename.replace("\\", "/"):
                name = f"{_short(code.co_filename)} {code.co_name}"
                if own_line is None:
                    own_line = f"{_short(code.co_filename)}:{frame.f_lineno} {code.co_name}"
                if name not in seen:
                    seen.add(name)
                    self.inclusive[name] += 1
            frame = frame.f_back
        self.lines[own_line or "(outside the package)"] += 1

    def table(self, rows: int = 40) -> str:
        """The three counts as text tables, most samples first."""
        out = [f"host samples: {self.samples} in {self.seconds:.1f} s "
               f"(every {self.interval * 1e3:.1f} ms asked)"]  # fmt: skip
        for title, counter in (
            ("innermost package line (its own time and the operators it called)", self.lines),
            ("innermost frame of any file", self.innermost),
            ("package functions on the stack (inclusive)", self.inclusive),
        ):
            out.append(f"\n{title}\nsamples | share | where")
            for key, count in counter.most_common(rows):
                out.append(f"{count} | {count / max(self.samples, 1):.3f} | {key}")
        return "\n".join(out) + "\n"

    def as_dict(self, rows: int = 200) -> dict:
        """The counts for a JSON file."""
        return {
            "samples": self.samples,
            "seconds": self.seconds,
            "lines": dict(self.lines.most_common(rows)),
            "innermost": dict(self.innermost.most_common(rows)),
            "inclusive": dict(self.inclusive.most_common(rows)),
        }
