"""Gold-standard 3D auto-refinement (relion_refine --auto_refine --split_random_halves).

A RELION user's command works after changing the program name:

    cryorefine refine --o Refine3D/job012/run --auto_refine --split_random_halves \\
        --ios Extract/job010/optimisation_set.star --ref Reconstruct/job011/merged.mrc \\
        --trust_ref_size --ini_high 60 --pad 2 --ctf --particle_diameter 500 \\
        --flatten_solvent --zero_mask --oversampling 1 --healpix_order 2 \\
        --auto_local_healpix_order 4 --offset_range 5 --offset_step 2 --sym C6 \\
        --low_resol_join_halves 40 --norm --scale --gpu

Options RELION has for its own machinery (--pool, --j, --dont_combine_weights_via_disc,
--preread_images, --scratch_dir, --pipeline_control, --skip_gridding) are accepted;
the log says once what each became.

Several ranks (docs/parallel.md): ``torchrun --nproc_per_node 4 -m cryorefine refine ...
--gpu 0:1:2:3``, or one ``srun`` task per rank; half of the ranks score each half set.
"""

import argparse
import dataclasses
import logging
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from typing import Any

from cryorefine.cli.device import device_from_gpu_option
from cryorefine.cli.progress import log_file
from cryorefine.errors import InputError
from cryorefine.parallel import (
    DEFAULT_TIMEOUT_S,
    LaunchEnvironment,
    RankFailure,
    launch_environment,
    parallel_session,
)
from cryorefine.refine.options import COMMAND_LINE_FLAGS, RefineOptions
from cryorefine.refine.run_continue import last_finished_iteration, output_root_of

__all__ = ["IGNORED_OPTIONS", "add_arguments", "options_from_arguments", "run"]

logger = logging.getLogger(__name__)

#: RELION options for its own machinery, accepted, and what each became here.
IGNORED_OPTIONS: dict[str, tuple[bool, str]] = {
    "--dont_combine_weights_via_disc": (False, "sums are combined in memory"),
    "--preread_images": (
        False,
        "particle files are kept in host memory after their first read where they fit",
    ),
    "--scratch_dir": (True, "images are read in place (memory-mapped)"),
    "--pipeline_control": (True, "no pipeline control files are written"),
    "--skip_gridding": (False, "gridding is skipped by default (--dont_skip_gridding turns it on)"),
    "--free_gpu_memory": (True, "batch sizes follow the free GPU memory"),
    "--keep_free_scratch": (True, "no scratch copies are made"),
    "--reuse_scratch": (False, "no scratch copies are made"),
    "--only_flip_phases": (False, "not supported; full CTF correction is used"),
}

_HELP = {
    "input_particles": "input particles STAR file (--i)",
    "optimisation_set": "input optimisation set (--ios)",
    "reference": "initial reference map (--ref)",
    "output_root": "output root, e.g. Refine3D/job012/run (--o)",
    "gpu": 'use a GPU; ids as in RELION, e.g. "0" (without --gpu: the CPU)',
    "pool": "accepted; particles are batched by free memory",
    "j": "accepted; threads follow torch's settings",
    "subtomo_noise_multiplicity": "score RELION-4 pseudo-subtomograms as RELION-4 does, each "
    "voxel's noise in proportion to its multiplicity (default: to its CTF^2 weight)",
}


def _recorded(action: type[argparse.Action]) -> type[argparse.Action]:
    """``action`` that also adds its option to ``given_options`` (what --continue may change)."""

    class Recorded(action):  # type: ignore[valid-type,misc]
        def __call__(self, parser, namespace, values, option_string=None) -> None:  # type: ignore[no-untyped-def]
            super().__call__(parser, namespace, values, option_string)
            namespace.given_options = frozenset({*namespace.given_options, self.dest})

    return Recorded


_STORE = _recorded(argparse._StoreAction)
_STORE_TRUE = _recorded(argparse._StoreTrueAction)
_STORE_FALSE = _recorded(argparse._StoreFalseAction)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """relion_refine's options (``refine.options.RefineOptions``), plus --continue."""
    defaults = RefineOptions()
    parser.set_defaults(given_options=frozenset())
    for field in dataclasses.fields(RefineOptions):
        flag = COMMAND_LINE_FLAGS[field.name]
        default = getattr(defaults, field.name)
        help_text = _HELP.get(field.name, f"relion_refine's {flag} (default {default})")
        if field.name == "gpu":
            parser.add_argument(
                flag, dest=field.name, nargs="?", const="", default=None, help=help_text
            )
        elif isinstance(default, bool):
            parser.add_argument(
                flag, dest=field.name, action=_STORE_TRUE, default=default, help=help_text
            )
            parser.add_argument(
                f"--no_{flag[2:]}", dest=field.name, action=_STORE_FALSE, help=argparse.SUPPRESS
            )
        else:
            kind = {int: int, float: float}.get(type(default), str)
            parser.add_argument(
                flag, dest=field.name, type=kind, default=default, action=_STORE, help=help_text
            )
    parser.add_argument(
        "--continue", dest="continue_from", type=Path, help="resume from run_itNNN_optimiser.star"
    )
    parser.add_argument(
        "--precision",
        choices=("auto", "float32", "float64", "tf32"),
        default="auto",
        help="arithmetic of the E-step's matrix products (default auto: tf32 on a GPU, "
        "float32 on the CPU)",
    )
    parser.add_argument(
        "--interpolation",
        choices=("texture", "exact"),
        default="texture",
        help="E-step projections on a GPU: the texture units' trilinear interpolation "
        "(8-bit fractions, as RELION's GPU code, of float16 texels) or exact float32 "
        "(default texture; the CPU is always exact)",
    )
    parser.add_argument(
        "--batch_size", type=int, default=0, help="particles per batch (0: chosen from memory)"
    )
    parser.add_argument(
        "--rank_timeout_min",
        type=float,
        default=DEFAULT_TIMEOUT_S / 60,
        help="parallel runs: minutes a rank waits for the others before the run stops "
        f"(default {DEFAULT_TIMEOUT_S / 60:g})",
    )
    for flag, (takes_value, _) in IGNORED_OPTIONS.items():
        if takes_value:
            parser.add_argument(flag, dest=f"ignored_{flag[2:]}", help=argparse.SUPPRESS)
        else:
            parser.add_argument(
                flag, dest=f"ignored_{flag[2:]}", action="store_true", help=argparse.SUPPRESS
            )


def options_from_arguments(args: argparse.Namespace) -> RefineOptions:
    """The ``RefineOptions`` of parsed arguments; paths become ``Path``."""
    values = {}
    for field in dataclasses.fields(RefineOptions):
        value = getattr(args, field.name)
        if field.name in (
            "input_particles",
            "optimisation_set",
            "tomograms",
            "trajectories",
            "reference",
            "output_root",
            "solvent_mask",
            "solvent_mask2",
        ):
            value = None if value is None else Path(value)
        values[field.name] = value
    if values["tau2_fudge"] <= 0:
        values["tau2_fudge"] = 1.0
    return RefineOptions(**values)


def _log_ignored(args: argparse.Namespace) -> None:
    for flag, (_, became) in IGNORED_OPTIONS.items():
        value = getattr(args, f"ignored_{flag[2:]}")
        if value not in (None, False):
            logger.info("%s: accepted; %s", flag, became)
    if args.pool != RefineOptions().pool:
        logger.info("--pool: accepted; particles are batched by free memory")
    if args.j != RefineOptions().j:
        logger.info("--j: accepted; threads follow torch's settings")


def _run_log(path: Path) -> AbstractContextManager[object]:
    """Log INFO lines to ``run.log`` beside the outputs as well as to the terminal, while the
    block runs (a second run in the same process does not write into the first's log)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"--o: cannot create the output folder {path.parent} ({error})") from error
    return log_file(path)


def _root(options: RefineOptions, continue_from: Path | None) -> Path | None:
    """Where the run writes: ``--o``, or with ``--continue`` alone the continued run's root."""
    if options.output_root is not None or continue_from is None:
        return options.output_root
    return output_root_of(continue_from)


def _resume_hint(options: RefineOptions, continue_from: Path | None) -> str:
    """``--continue`` with the last iteration whose files are whole."""
    root = _root(options, continue_from)
    done = last_finished_iteration(root or Path("run"))
    if done is None and continue_from is not None:  # nothing new written yet
        moved = f" --o {options.output_root}" if options.output_root is not None else ""
        return f"resume with: cryorefine refine --continue {continue_from}{moved}"
    if done is None:
        return "start the run again"
    return f"resume with: cryorefine refine --continue {done} (any number of ranks)"


def _rank_logging(rank: int) -> None:
    """Ranks other than the writer log warnings only, each line prefixed with the rank."""
    root = logging.getLogger("cryorefine")
    root.setLevel(logging.WARNING)
    for handler in root.handlers:
        handler.setFormatter(logging.Formatter(f"rank {rank}: %(levelname)s %(message)s"))


def _write_report(options: RefineOptions, continue_from: Path | None) -> None:
    """The run's HTML report (``cryorefine report``); a failure there never fails the run."""
    from cryorefine.report import write_report

    root = _root(options, continue_from)
    if root is None:
        return
    try:
        logger.info("report: %s", write_report(root))
    except Exception as error:  # plotting or a half-written folder: say so, keep the run's files
        logger.warning(
            "the report could not be written (%s); run `cryorefine report %s`", error, root
        )


def run(args: argparse.Namespace) -> None:
    """Refine, or continue a refinement (one process, or one rank of several)."""
    from cryorefine.refine.driver import refine_run  # the engine (written with this command)

    options = options_from_arguments(args)
    if args.continue_from is None:
        if options.output_root is None:
            raise InputError("--o: an output root is required, e.g. --o Refine3D/job001/run")
        if (options.input_particles is None) == (options.optimisation_set is None):
            raise InputError(
                "give exactly one of --i (particles STAR file) and --ios (optimisation set)"
            )
        if options.reference is None:
            raise InputError("--ref: a reference map is required")
    log_folder = (_root(options, args.continue_from) or Path("run")).parent
    environment = launch_environment()
    run_options = {
        "continue_from": args.continue_from,
        "given_options": args.given_options,
        "precision": args.precision,
        "interpolation": args.interpolation,
        "batch_size": args.batch_size,
    }
    with ExitStack() as stack:
        if environment.world_size == 1:
            stack.enter_context(_run_log(Path(log_folder) / "run.log"))
            _log_ignored(args)
            refine_run(options, device=device_from_gpu_option(args.gpu), **run_options)
            _write_report(options, args.continue_from)
            return
        if environment.rank == 0:
            stack.enter_context(_run_log(Path(log_folder) / "run.log"))
            _log_ignored(args)
        else:
            _rank_logging(environment.rank)
        _run_ranks(args, options, environment, run_options)


def _run_ranks(
    args: argparse.Namespace,
    options: RefineOptions,
    environment: LaunchEnvironment,
    run_options: dict[str, Any],
) -> None:
    """One rank of several: the session, the refinement, the report on the writer."""
    from cryorefine.refine.driver import refine_run  # the engine (written with this command)

    session = parallel_session(environment, gpu=args.gpu, timeout_s=60.0 * args.rank_timeout_min)
    try:
        with session as (communicator, device):
            world, launcher = environment.world_size, environment.launcher
            logger.info("ranks=%d launcher=%s device=%s", world, launcher, device)
            refine_run(options, device=device, communicator=communicator, **run_options)
            if communicator.is_writer:
                _write_report(options, args.continue_from)
    except RankFailure:  # its message is logged; the traceback would add nothing
        logger.error("%s", _resume_hint(options, args.continue_from))
        raise SystemExit(1) from None
