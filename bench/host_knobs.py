"""Settings of the host side of a run, for measuring how the reader contends with the E-step.

``tutorial_bench.py`` runs ``refine`` in its own process, so these apply to that run only:
the GIL's switch interval, the threads that read particle files, and the reading thread
that makes the next batch while this one is scored (off: each batch read when needed).
"""

import argparse
import sys

from cryorefine.io import image_stacks
from cryorefine.refine import half_pass


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options, added to ``parser``."""
    parser.add_argument(
        "--switch_interval",
        type=float,
        default=None,
        help="sys.setswitchinterval for the run (seconds; Python's default 0.005): how long "
        "a thread that wants the GIL waits before the holder is made to drop it",
    )
    parser.add_argument(
        "--reader_threads",
        type=int,
        default=None,
        help="io.image_stacks.READER_THREADS for the run (measurements of host contention)",
    )
    parser.add_argument(
        "--no_prefetch",
        action="store_true",
        help="read each batch on the main thread when it is needed (no reading thread)",
    )


def apply(args: argparse.Namespace) -> None:
    """Set what the options ask, for the rest of this process."""
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)
    if args.reader_threads is not None:
        image_stacks.READER_THREADS = args.reader_threads
    if args.no_prefetch:
        half_pass.prefetched = lambda items, **_: items
