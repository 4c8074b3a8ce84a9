"""The state of an auto-refine run: one model per half set, and the shared sampling and counters.

``HalfSetModel`` is what RELION's ``MlModel`` holds for one half set and one
class (the content of ``run_itNNN_half1_model.star`` and the half map);
``RefineState`` is the auto-refine part of ``MlOptimiser`` and ``HealpixSampling``
that both halves share (``run_itNNN_optimiser.star`` and ``_sampling.star``).
RELION keeps the sampling and counters equal on both halves: accuracies come
from half 1 and are broadcast, and the current resolution follows from the
SSNR, which depends on the common FSC only (REFINE_SPEC §4.3, §4.6).

Steps are functions that return new values (``dataclasses.replace``); nothing
here changes in place. Initial values are RELION's (``MlOptimiser::parseInitial``,
``initialiseGeneral``): changes and accuracies 999, counters 0.
"""

import math
from dataclasses import dataclass

from jaxtyping import Float
from torch import Tensor

from cryorefine.geometry import angular_step_deg
from cryorefine.refine.options import RefineOptions

__all__ = ["HalfSetModel", "RefineState", "initial_refine_state"]


@dataclass(frozen=True)
class HalfSetModel:
    """RELION's model of one half set (``MlModel`` with one class).

    Attributes
    ----------
    half_set
        1 or 2 (``rlnRandomSubset``); 0 for the joined model of the final iteration.
    reference
        Current map ``(n, n, n)``, ``n`` = ``rlnOriginalImageSize``.
    pixel_size_angst
        Of the map (``rlnPixelSize``).
    data_dimensionality
        2 for images (SPA, 2D tilt stacks), 3 for subtomograms (``rlnDataDimensionality``).
    sigma2_noise
        Noise power per optics group and shell, ``(o, n // 2 + 1)`` float64
        (``rlnSigma2Noise``; units of ``|F|^2`` of the images' coefficients).
    tau2, ssnr, fsc, sigma2_reconstruction, fourier_completeness
        Per shell, float64: ``rlnReferenceTau2``, ``rlnSsnrMap`` (data vs
        prior), ``rlnGoldStandardFsc``, ``rlnReferenceSigma2``, ``rlnFourierCompleteness``.
    orientability
        ``rlnSpectralOrientabilityContribution`` (sums to 1), or None before
        the first accuracy estimate.
    orientation_pdf
        Posterior mass per direction of the current HEALPix order
        (``rlnOrientationDistribution``), or None.
    sigma2_offset_angst2
        Variance of the offset prior (``rlnSigmaOffsetsAngst`` squared).
    norm_correction_average, average_pmax, log_likelihood
        ``rlnNormCorrectionAverage``, ``rlnAveragePmax``, ``rlnLogLikelihood``.
    acc_rot_deg, acc_trans_angst
        ``rlnAccuracyRotations``, ``rlnAccuracyTranslationsAngst`` (999 = not estimated).
    scale_correction
        Per scale group (``rlnGroupScaleCorrection``), float64.
    group_names, group_particle_counts
        ``rlnGroupName`` and ``rlnGroupNrParticles`` of each scale group.
    """

    half_set: int
    reference: Float[Tensor, "n n n"]
    pixel_size_angst: float
    data_dimensionality: int
    sigma2_noise: Float[Tensor, "o s"]
    tau2: Float[Tensor, " s"]
    ssnr: Float[Tensor, " s"]
    fsc: Float[Tensor, " s"]
    sigma2_reconstruction: Float[Tensor, " s"]
    fourier_completeness: Float[Tensor, " s"]
    orientability: Float[Tensor, " s"] | None
    orientation_pdf: Float[Tensor, " m"] | None
    sigma2_offset_angst2: float
    norm_correction_average: float
    average_pmax: float
    log_likelihood: float
    acc_rot_deg: float
    acc_trans_angst: float
    scale_correction: Float[Tensor, " g"]
    group_names: tuple[str, ...]
    group_particle_counts: tuple[int, ...]

    @property
    def ori_size(self) -> int:
        """Box side ``n`` of the map in pixels (``rlnOriginalImageSize``)."""
        return int(self.reference.shape[-1])


@dataclass(frozen=True)
class RefineState:
    """Sampling, image sizes and convergence counters of an auto-refine run (both halves).

    Attributes
    ----------
    iteration
        Last iteration done (0 before the first; ``rlnCurrentIteration``).
    healpix_order, psi_step_deg
        Coarse sampling (before oversampling): ``rlnHealpixOrder``, ``rlnPsiStep``.
    offset_range_angst, offset_step_angst
        Coarse translational search, Angstrom, as RELION keeps it
        (``rlnOffsetRange``, ``rlnOffsetStep``); ``offset_px`` converts.
    perturbation
        ``rlnSamplingPerturbInstance`` (``geometry.next_perturbation``).
    local_searches, sigma_rot_deg, sigma_tilt_deg, sigma_psi_deg
        Gaussian priors around each particle's angles (``rlnOrientationalPriorMode``
        1) with these widths (``rlnSigmaPriorRotAngle``...); 0 when global.
    current_resolution_inv_angst, best_resolution_inv_angst
        ``1 / rlnCurrentResolution`` and ``rlnBestResolutionThusFar`` (1/Angstrom).
    current_size, coarse_size
        Image sizes of the fine and the coarse pass (even, pixels of the model box).
    incr_size, has_high_fsc_at_limit, has_large_incr_size_iter_ago
        ``rlnIncrementImageSize``, ``rlnHasHighFscAtResolLimit``,
        ``rlnHasLargeSizeIncreaseIterationsAgo`` (always 0, as RELION 5).
    acc_rot_deg, acc_trans_angst
        Overall accuracies (``rlnOverallAccuracyRotations``, ``...TranslationsAngst``).
    changes_orientations_deg, changes_offsets_angst, changes_classes
        Changes of the best poses in the last iteration (``rlnChangesOptimal*``).
    smallest_changes_orientations_deg, smallest_changes_offsets_angst, smallest_changes_classes
        Smallest changes so far (``rlnSmallestChanges*``).
    nr_iter_wo_resol_gain, nr_iter_wo_large_hidden_variable_changes
        ``rlnNumberOfIterWithoutResolutionGain``, ``rlnNumberOfIterWithoutChangingAssignments``.
    has_fine_enough_angular_sampling, has_converged
        Set by ``update_angular_sampling`` and ``check_convergence``; once
        converged, the next iteration is the final one (halves joined, full size).
    """

    iteration: int
    healpix_order: int
    psi_step_deg: float
    offset_range_angst: float
    offset_step_angst: float
    current_resolution_inv_angst: float
    best_resolution_inv_angst: float
    current_size: int
    coarse_size: int
    incr_size: int
    perturbation: float = 0.0
    local_searches: bool = False
    sigma_rot_deg: float = 0.0
    sigma_tilt_deg: float = 0.0
    sigma_psi_deg: float = 0.0
    has_high_fsc_at_limit: bool = False
    has_large_incr_size_iter_ago: int = 0
    acc_rot_deg: float = 999.0
    acc_trans_angst: float = 999.0
    changes_orientations_deg: float = 999.0
    changes_offsets_angst: float = 999.0
    changes_classes: float = 9999999.0
    smallest_changes_orientations_deg: float = 999.0
    smallest_changes_offsets_angst: float = 999.0
    smallest_changes_classes: int = 9999999
    nr_iter_wo_resol_gain: int = 0
    nr_iter_wo_large_hidden_variable_changes: int = 0
    has_fine_enough_angular_sampling: bool = False
    has_converged: bool = False

    def fine_angular_step_deg(self, oversampling: int) -> float:
        """Angular step after ``oversampling`` (what RELION prints as "Angular step")."""
        return angular_step_deg(self.healpix_order, oversampling=oversampling)

    def offset_px(self, pixel_size_angst: float) -> tuple[float, float]:
        """Coarse ``(offset_range, offset_step)`` in pixels of ``pixel_size_angst``."""
        return (
            self.offset_range_angst / pixel_size_angst,
            self.offset_step_angst / pixel_size_angst,
        )


def _round(x: float) -> int:
    """RELION's ``ROUND``: half away from zero."""
    return math.floor(abs(x) + 0.5) * (1 if x >= 0 else -1)


def initial_refine_state(
    options: RefineOptions, *, ori_size: int, pixel_size_angst: float
) -> RefineState:
    """The state before iteration 1 (RELION's ``initialiseGeneral`` and iteration 0).

    Sampling from the options: psi step ``360 / (6 * 2**healpix_order)`` unless
    ``psi_step`` is given, offsets converted from pixels to Angstrom with the
    model's pixel size. Priors: ``sigma_ang`` sets all three widths,
    ``sigma_rot/tilt/psi`` each its own (0 where not given); local searches
    are on if any is given, or if ``healpix_order >= auto_local_healpix_order``
    (then, unless all three were given, all are twice the fine step).
    Current resolution as ``update_current_resolution`` at iteration 0:
    shell ``ROUND(n p / ini_high)`` (``minres_map`` without ``ini_high``);
    ``current_size = min(n, 2 (shell + incr_size))``; ``coarse_size`` is set to
    it until ``image_sizes`` runs.
    """
    order = options.healpix_order
    psi = options.psi_step if options.psi_step > 0 else angular_step_deg(order)
    sigmas: tuple[float, ...]
    if options.sigma_ang > 0:
        sigmas = (options.sigma_ang,) * 3
    else:
        sigmas = tuple(
            max(s, 0.0) for s in (options.sigma_rot, options.sigma_tilt, options.sigma_psi)
        )
    local = any(s > 0 for s in sigmas)
    if options.auto_refine and order >= options.auto_local_healpix_order:
        local = True
        if not all(s > 0 for s in sigmas):
            sigmas = (2.0 * angular_step_deg(order, oversampling=options.oversampling),) * 3
    length = ori_size * pixel_size_angst
    shell = _round(length / options.ini_high) if options.ini_high > 0 else options.minres_map
    resolution = shell / length
    size = min(ori_size, 2 * (shell + options.incr_size))
    return RefineState(
        iteration=0,
        healpix_order=order,
        psi_step_deg=psi,
        offset_range_angst=options.offset_range * pixel_size_angst,
        offset_step_angst=options.offset_step * pixel_size_angst,
        current_resolution_inv_angst=resolution,
        best_resolution_inv_angst=max(resolution, 1.0 / 999.0),
        current_size=size,
        coarse_size=size,
        incr_size=options.incr_size,
        local_searches=local,
        sigma_rot_deg=sigmas[0],
        sigma_tilt_deg=sigmas[1],
        sigma_psi_deg=sigmas[2],
    )
