"""Where the host's time goes, by sampling the main thread's Python stack.

cProfile charges every Python call a fixed cost, which distorts code made of many small
calls; a sampler does not. A thread wakes every ``interval`` seconds, takes the main
thread's frame from ``sys._current_frames()`` and counts:

- the innermost frame of the package (``file:line function``): the line that was running,
  including the torch operator it had called (torch's bindings release the GIL while an
  operator runs, so the sampler sees the calling line, not torch's internals);
- the innermost frame of any file: whether the time was in our lines, in torch's Python
  wrappers, numpy or the standard library;
- each package function anywhere on the stack once (inclusive time);
- the innermost package line with its two package callers.

With ``scope``, only samples with a function of that name on the stack count (e.g.
``run_half_set``: the E-step without the process's start and the files).

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

    def __init__(
        self, interval: float = 0.001, package: str = "cryorefine", scope: str | None = None
    ) -> None:
        self.interval = interval
        self.package = f"{package}/"
        self.scope = scope  # count only samples with a function of this name on the stack
        self.samples = 0
        self.all_samples = 0
        self.callers: Counter[str] = Counter()
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
        self.all_samples += 1
        stack = []
        while frame is not None:
            stack.append(frame)
            frame = frame.f_back
        if self.scope is not None and not any(f.f_code.co_name == self.scope for f in stack):
            return
        self.samples += 1
        code = stack[0].f_code
        self.innermost[f"{_short(code.co_filename)}:{stack[0].f_lineno} {code.co_name}"] += 1
        own = [f for f in stack if self.package in f.f_code.co_filename.replace("\\", "/")]
        where = [f"{_short(f.f_code.co_filename)}:{f.f_lineno} {f.f_code.co_name}" for f in own]
        self.lines[where[0] if where else "(outside the package)"] += 1
        self.callers[" < ".join(where[:3]) or "(outside the package)"] += 1
        for name in {f"{_short(f.f_code.co_filename)} {f.f_code.co_name}" for f in own}:
            self.inclusive[name] += 1

    def table(self, rows: int = 40) -> str:
        """The three counts as text tables, most samples first."""
        scope = f" with {self.scope} on the stack" if self.scope else ""
        out = [f"host samples: {self.samples}{scope} of {self.all_samples} in "
               f"{self.seconds:.1f} s (every {self.interval * 1e3:.1f} ms asked)"]  # fmt: skip
        for title, counter in (
            ("innermost package line (its own time and the operators it called)", self.lines),
            ("the same with its two innermost package callers", self.callers),
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
            "all_samples": self.all_samples,
            "scope": self.scope,
            "seconds": self.seconds,
            "callers": dict(self.callers.most_common(rows)),
            "lines": dict(self.lines.most_common(rows)),
            "innermost": dict(self.innermost.most_common(rows)),
            "inclusive": dict(self.inclusive.most_common(rows)),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "HostSampler":
        """A sampler's counts back from ``as_dict``, to print its tables."""
        sampler = cls(scope=data.get("scope"))
        sampler.samples, sampler.seconds = data["samples"], data["seconds"]
        sampler.all_samples = data.get("all_samples", data["samples"])
        for key in ("lines", "innermost", "inclusive", "callers"):
            getattr(sampler, key).update(data.get(key, {}))
        return sampler
