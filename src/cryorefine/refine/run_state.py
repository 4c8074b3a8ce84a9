"""``run_itNNN_optimiser.star`` and ``run_itNNN_sampling.star``: the run's state both ways.

The optimiser file is written with RELION 5's labels in RELION 5's order
(``MlOptimiser::write``, checked against the HIV tutorial's
``Refine3D/job012/run_optimiser.star``); labels of features cryorefine does not
have (gradient refinement, Blush, helices, SGD) carry RELION's values for "off".
Its comment lines hold what the labels do not: RELION's first line, the
command line (``RefineOptions.to_command_line``) and a ``# cryorefine state:``
line with ``has_fine_enough_angular_sampling`` and ``coarse_size``. Reading
takes the options from the command line, then from the labels (which win),
so RELION's own optimiser files read as well.

The sampling file follows ``HealpixSampling::write`` (RELION 3.1 and 5 write
the same labels): offsets in Angstrom, the ``...Original`` copies from the
options, and the directions of the current order kept after symmetry reduction.
"""

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from jaxtyping import Float
from torch import Tensor

from cryorefine.errors import InputError
from cryorefine.geometry import angular_step_deg
from cryorefine.refine.convergence import iteration_limit
from cryorefine.refine.model import RefineState
from cryorefine.refine.options import RefineOptions, options_from_command_line

__all__ = [
    "STATE_COMMENT",
    "optimiser_block",
    "optimiser_comments",
    "options_from_optimiser",
    "sampling_blocks",
    "state_from_optimiser",
    "state_from_sampling",
]

#: Start of the comment line that keeps the state RELION's labels do not hold.
STATE_COMMENT = "# cryorefine state:"

_NONE = "None"
_OFF_FEATURES: dict[str, object] = {
    "rlnBodyStarFile": _NONE,
    "rlnTauSpectrumName": _NONE,
}
_HIGH_LOW: dict[str, object] = {
    "rlnHighresLimitExpectation": -1.0,
    "rlnLowresLimitExpectation": -1.0,
}
_GRADIENT_OFF: dict[str, object] = {
    "rlnDoMapEstimation": 1,
    "rlnDoFastSubsetOptimisation": 0,
    "rlnDoExternalReconstruct": 0,
    "rlnDoBlush": 0,
    "rlnBlushNoSpectralTrailing": 0,
    "rlnDoGradientRefine": 0,
    "rlnDoStochasticGradientDescent": 0,
    "rlnGradEmIters": 0,
    "rlnGradHasConverged": 0,
    "rlnGradCurrentStepsize": 0.0,
    "rlnGradSubsetOrder": 0,
    "rlnGradSuspendFinerSamplingIter": -1,
    "rlnGradSuspendLocalSamplingIter": -1,
    "rlnSgdInitialIterationsFraction": 0.3,
    "rlnSgdFinalIterationsFraction": 0.2,
    "rlnSgdMinimumResolution": 20.0,
    "rlnSgdInitialResolution": -1.0,
    "rlnSgdFinalResolution": -1.0,
    "rlnSgdInitialSubsetSize": -1,
    "rlnSgdFinalSubsetSize": -1,
    "rlnSgdMuFactor": 0.0,
    "rlnSgdSkipAnneal": 0,
    "rlnSgdClassInactivityThreshold": 0.0,
    "rlnSgdSubsetSize": -1,
    "rlnSgdWriteEverySubset": 10,
    "rlnSgdStepsize": -1.0,
    "rlnSgdStepsizeScheme": "",
    "rlnTau2FudgeScheme": "",
    "rlnTau2FudgeArg": -1.0,
    "rlnMaximumSignificantPoses": -1,
    "rlnDoAutoRefine": 1,
    "rlnDoAutoSampling": 1,
}
_HELICAL_OFF: dict[str, object] = {
    "rlnLocalSymmetryFile": _NONE,
    "rlnDoHelicalRefine": 0,
    "rlnIgnoreHelicalSymmetry": 0,
    "rlnFourierMask": _NONE,
    "rlnHelicalTwistInitial": 0.0,
    "rlnHelicalRiseInitial": 0.0,
    "rlnHelicalCentralProportion": 0.3,
    "rlnNrHelicalNStart": 1,
    "rlnHelicalMaskTubeInnerDiameter": -1.0,
    "rlnHelicalMaskTubeOuterDiameter": -1.0,
    "rlnHelicalSymmetryLocalRefinement": 0,
    "rlnHelicalSigmaDistance": -1.0,
    "rlnHelicalKeepTiltPriorFixed": 0,
}


def _name(path: Path | None) -> str:
    return _NONE if path is None else str(path)


def optimiser_block(
    state: RefineState,
    options: RefineOptions,
    *,
    model_files: tuple[str, ...],
    data_file: str,
    sampling_file: str,
    final: bool = False,
) -> dict[str, object]:
    """The ``data_optimiser_general`` list block (module docstring).

    ``model_files``: the two half models, or the one joined model when
    ``final`` (then ``rlnCurrentIteration`` is -1 and the halves are no
    longer split, as RELION writes its last file).
    """
    split = options.split_random_halves and not final
    block: dict[str, object] = {"rlnOutputRootName": _name(options.output_root)}
    block["rlnModelStarFile"] = model_files[0]
    if split:
        block["rlnModelStarFile2"] = model_files[1]
    block |= {
        "rlnExperimentalDataStarFile": data_file,
        "rlnTomoTomogramsFile": "" if options.tomograms is None else str(options.tomograms),
        "rlnTomoTrajectoriesFile": ""
        if options.trajectories is None
        else str(options.trajectories),
        "rlnOrientSamplingStarFile": sampling_file,
        "rlnCurrentIteration": -1 if final else state.iteration,
        "rlnNumberOfIterations": iteration_limit(options),
        "rlnDoSplitRandomHalves": int(split),
        "rlnJoinHalvesUntilThisResolution": float(options.low_resol_join_halves),
        "rlnAdaptiveOversampleOrder": options.oversampling,
        "rlnAdaptiveOversampleFraction": float(options.adaptive_fraction),
        "rlnRandomSeed": options.random_seed,
        "rlnParticleDiameter": float(options.particle_diameter),
        "rlnWidthMaskEdge": options.maskedge,
        "rlnDoZeroMask": int(options.zero_mask),
        "rlnDoSolventFlattening": int(options.flatten_solvent),
        "rlnDoSolventFscCorrection": int(options.solvent_correct_fsc),
        "rlnSolventMaskName": _name(options.solvent_mask),
        "rlnSolventMask2Name": _name(options.solvent_mask2),
        **_OFF_FEATURES,
        "rlnMaximumCoarseImageSize": options.coarse_size,
        **_HIGH_LOW,
        "rlnIncrementImageSize": state.incr_size,
        **_GRADIENT_OFF,
        "rlnAutoLocalSearchesHealpixOrder": options.auto_local_healpix_order,
        "rlnNumberOfIterWithoutResolutionGain": state.nr_iter_wo_resol_gain,
        "rlnBestResolutionThusFar": float(state.best_resolution_inv_angst),
        "rlnNumberOfIterWithoutChangingAssignments": state.nr_iter_wo_large_hidden_variable_changes,
        "rlnDoSkipAlign": 0,
        "rlnDoSkipRotate": 0,
        "rlnOverallAccuracyRotations": float(state.acc_rot_deg),
        "rlnOverallAccuracyTranslationsAngst": float(state.acc_trans_angst),
        "rlnChangesOptimalOrientations": float(state.changes_orientations_deg),
        "rlnChangesOptimalOffsets": float(state.changes_offsets_angst),
        "rlnChangesOptimalClasses": float(state.changes_classes),
        "rlnSmallestChangesOrientations": float(state.smallest_changes_orientations_deg),
        "rlnSmallestChangesOffsets": float(state.smallest_changes_offsets_angst),
        "rlnSmallestChangesClasses": state.smallest_changes_classes,
        **_HELICAL_OFF,
        "rlnHasConverged": int(state.has_converged),
        "rlnHasHighFscAtResolLimit": int(state.has_high_fsc_at_limit),
        "rlnHasLargeSizeIncreaseIterationsAgo": state.has_large_incr_size_iter_ago,
        "rlnDoCorrectNorm": int(options.norm),
        "rlnDoCorrectScale": int(options.scale),
        "rlnDoCorrectCtf": int(options.ctf),
        "rlnDoCenterClasses": 0,
        "rlnDoIgnoreCtfUntilFirstPeak": int(options.ctf_intact_first_peak),
        "rlnCtfDataArePhaseFlipped": 0,
        "rlnDoOnlyFlipCtfPhases": 0,
        "rlnRefsAreCtfCorrected": 1,
        "rlnFixSigmaNoiseEstimates": int(options.fix_sigma_noise),
        "rlnFixSigmaOffsetEstimates": int(options.fix_sigma_offset),
        "rlnMaxNumberOfPooledParticles": options.pool * options.j,
        "rlnOffsetRangeX": -1.0,
        "rlnOffsetRangeY": -1.0,
        "rlnOffsetRangeZ": -1.0,
    }
    return block


def optimiser_comments(state: RefineState, options: RefineOptions) -> list[str]:
    """The comment lines written above the optimiser block (module docstring)."""
    return [
        "# RELION optimiser; version 5.0 (written by cryorefine)",
        "# " + options.command_line_text(),
        f"{STATE_COMMENT} has_fine_enough_angular_sampling="
        f"{int(state.has_fine_enough_angular_sampling)} coarse_size={state.coarse_size}",
    ]


def _get(
    block: Mapping[str, object], label: str, path: Path, name: str = "optimiser_general"
) -> object:
    if label not in block:
        raise InputError(f"{path}: data_{name}: label {label} is missing")
    return block[label]


def _number(
    block: Mapping[str, object], label: str, path: Path, name: str = "optimiser_general"
) -> float:
    value = _get(block, label, path, name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InputError(f"{path}: data_{name}: {label} is {value!r}, expected a finite number")
    return float(value)


def _whole(
    block: Mapping[str, object], label: str, path: Path, name: str = "optimiser_general"
) -> int:
    value = _number(block, label, path, name)
    if value != round(value):
        raise InputError(f"{path}: data_{name}: {label} is {value}, expected a whole number")
    return int(value)


def options_from_optimiser(
    block: Mapping[str, object], comments: list[str], *, path: Path
) -> RefineOptions:
    """Options from the command-line comment, then from the labels that hold options."""
    line = next((c[1:].strip() for c in comments if c[1:].strip().startswith("--")), "")
    options = options_from_command_line(line, source=str(path))

    def text(label: str) -> Path | None:
        value = str(_get(block, label, path))
        return None if value in (_NONE, "") else Path(value)

    number = {
        "low_resol_join_halves": ("rlnJoinHalvesUntilThisResolution", float),
        "oversampling": ("rlnAdaptiveOversampleOrder", int),
        "adaptive_fraction": ("rlnAdaptiveOversampleFraction", float),
        "random_seed": ("rlnRandomSeed", int),
        "particle_diameter": ("rlnParticleDiameter", float),
        "maskedge": ("rlnWidthMaskEdge", int),
        "zero_mask": ("rlnDoZeroMask", bool),
        "flatten_solvent": ("rlnDoSolventFlattening", bool),
        "solvent_correct_fsc": ("rlnDoSolventFscCorrection", bool),
        "coarse_size": ("rlnMaximumCoarseImageSize", int),
        "auto_local_healpix_order": ("rlnAutoLocalSearchesHealpixOrder", int),
        "norm": ("rlnDoCorrectNorm", bool),
        "scale": ("rlnDoCorrectScale", bool),
        "ctf": ("rlnDoCorrectCtf", bool),
        "ctf_intact_first_peak": ("rlnDoIgnoreCtfUntilFirstPeak", bool),
        "fix_sigma_noise": ("rlnFixSigmaNoiseEstimates", bool),
        "fix_sigma_offset": ("rlnFixSigmaOffsetEstimates", bool),
    }
    values: dict[str, Any] = {
        name: (_whole(block, label, path) if kind is int else kind(_number(block, label, path)))
        for name, (label, kind) in number.items()
    }
    limit = _whole(block, "rlnNumberOfIterations", path)
    values["auto_iter_max" if options.auto_refine else "iter"] = limit
    for name, label in (
        ("output_root", "rlnOutputRootName"),
        ("solvent_mask", "rlnSolventMaskName"),
        ("solvent_mask2", "rlnSolventMask2Name"),
        ("tomograms", "rlnTomoTomogramsFile"),
        ("trajectories", "rlnTomoTrajectoriesFile"),
    ):
        if label in block:
            values[name] = text(label)
    return dataclasses.replace(options, **values)


def state_from_optimiser(
    block: Mapping[str, object], comments: list[str], *, path: Path
) -> dict[str, object]:
    """The ``RefineState`` fields the optimiser file holds (labels and the state comment)."""

    def number(label: str) -> float:
        return _number(block, label, path)

    def whole(label: str) -> int:
        return _whole(block, label, path)

    fields: dict[str, object] = {
        "iteration": whole("rlnCurrentIteration"),
        "incr_size": whole("rlnIncrementImageSize"),
        "nr_iter_wo_resol_gain": whole("rlnNumberOfIterWithoutResolutionGain"),
        "best_resolution_inv_angst": number("rlnBestResolutionThusFar"),
        "nr_iter_wo_large_hidden_variable_changes": whole(
            "rlnNumberOfIterWithoutChangingAssignments"
        ),
        "acc_rot_deg": number("rlnOverallAccuracyRotations"),
        "acc_trans_angst": number("rlnOverallAccuracyTranslationsAngst"),
        "changes_orientations_deg": number("rlnChangesOptimalOrientations"),
        "changes_offsets_angst": number("rlnChangesOptimalOffsets"),
        "changes_classes": number("rlnChangesOptimalClasses"),
        "smallest_changes_orientations_deg": number("rlnSmallestChangesOrientations"),
        "smallest_changes_offsets_angst": number("rlnSmallestChangesOffsets"),
        "smallest_changes_classes": whole("rlnSmallestChangesClasses"),
        "has_converged": bool(number("rlnHasConverged")),
        "has_high_fsc_at_limit": bool(number("rlnHasHighFscAtResolLimit")),
        "has_large_incr_size_iter_ago": whole("rlnHasLargeSizeIncreaseIterationsAgo"),
    }
    line = next((c for c in comments if c.startswith(STATE_COMMENT)), None)
    if line is not None:
        for item in line[len(STATE_COMMENT) :].split():
            key, _, value = item.partition("=")
            if key == "has_fine_enough_angular_sampling":
                fields[key] = value == "1"
            elif key == "coarse_size":
                if not value.isdigit():
                    raise InputError(
                        f"{path}: {STATE_COMMENT} coarse_size={value!r}, expected pixels"
                    )
                fields[key] = int(value)
    return fields


def sampling_blocks(
    state: RefineState,
    options: RefineOptions,
    *,
    rot_tilt_deg: Float[Tensor, "m 2"],
    pixel_size_angst: float,
    translations_3d: bool,
) -> dict[str, object]:
    """``data_sampling_general`` and ``data_sampling_directions`` (module docstring).

    ``rot_tilt_deg``: the coarse directions of ``state.healpix_order`` in the
    asymmetric unit (``geometry.pixel_rot_tilt_deg(order, asymmetric_unit_pixels(...))``).
    """
    psi_original = (
        options.psi_step if options.psi_step > 0 else angular_step_deg(options.healpix_order)
    )
    general = {
        "rlnIs3DSampling": 1,
        "rlnIs3DTranslationalSampling": int(translations_3d),
        "rlnHealpixOrder": state.healpix_order,
        "rlnSymmetryGroup": options.sym,
        "rlnTiltAngleLimit": float(options.limit_tilt),
        "rlnPsiStep": float(state.psi_step_deg),
        "rlnOffsetRange": float(state.offset_range_angst),
        "rlnOffsetStep": float(state.offset_step_angst),
        "rlnHelicalOffsetStep": -1.0,
        "rlnSamplingPerturbInstance": float(state.perturbation),
        "rlnSamplingPerturbFactor": float(options.perturb),
        "rlnHealpixOrderOriginal": options.healpix_order,
        "rlnPsiStepOriginal": float(psi_original),
        "rlnOffsetRangeOriginal": float(options.offset_range * pixel_size_angst),
        "rlnOffsetStepOriginal": float(options.offset_step * pixel_size_angst),
    }
    angles = rot_tilt_deg.detach().cpu().double().numpy()
    directions = pd.DataFrame({"rlnAngleRot": angles[:, 0], "rlnAngleTilt": angles[:, 1]})
    return {"sampling_general": general, "sampling_directions": directions}


def state_from_sampling(blocks: Mapping[str, object], *, path: Path) -> dict[str, object]:
    """The ``RefineState`` fields of a sampling file: order, psi step, offsets, perturbation."""
    general = blocks.get("sampling_general")
    if not isinstance(general, dict):
        raise InputError(f"{path}: no data_sampling_general list block")

    def number(label: str) -> float:
        return _number(general, label, path, "sampling_general")

    return {
        "healpix_order": _whole(general, "rlnHealpixOrder", path, "sampling_general"),
        "psi_step_deg": number("rlnPsiStep"),
        "offset_range_angst": number("rlnOffsetRange"),
        "offset_step_angst": number("rlnOffsetStep"),
        "perturbation": number("rlnSamplingPerturbInstance"),
    }
