"""Inputs and outputs of one E-step batch (``likelihood.expectation``)."""

import math
from dataclasses import dataclass, fields, replace
from functools import cached_property

import torch
from jaxtyping import Complex, Float, Int
from torch import Tensor

from cryorefine.geometry import oversampled_translations
from cryorefine.likelihood.poses import OrientationGrid
from cryorefine.likelihood.settings import tuning_setting
from cryorefine.likelihood.sums import ShellSums
from cryorefine.likelihood.window import FourierWindow

__all__ = [
    "BackprojectionSums",
    "ExpectationPlan",
    "ExpectationResult",
    "ParticleTerms",
    "ProjectionCache",
    "memory_budget",
]


def _budget_cap() -> int:
    """The largest budget in bytes: 16 GiB, or ``CRYOREFINE_BUDGET_CAP_GIB`` (1-1024, for
    measurements)."""
    return int(tuning_setting("CRYOREFINE_BUDGET_CAP_GIB", 16.0, 1.0, 1024.0) * 2**30)


def memory_budget(device: torch.device) -> int:
    """``ExpectationPlan.max_bytes`` for ``device``: a quarter of the free GPU memory
    (between 1 and 16 GiB; ``CRYOREFINE_BUDGET_CAP_GIB`` moves the 16 for measurements:
    a cap of 32 on an H200 changed iterations 4 and 16 of the tutorial's job by no more
    than the runs' spread), 512 MiB on the CPU.

    Free memory includes what torch's caching allocator holds but does not use:
    after one half set the cache can hold most of the card, and counting only
    the driver's free memory gave the next half set a budget several times
    smaller (smaller groups, slower). Where ranks share the GPU
    (``torch.cuda.set_per_process_memory_fraction``), a quarter of what this
    process's part leaves. The E-step's intermediates peak near twice
    the budget (the score arrays of a chunk plus one orientation chunk's
    gathers); the rest stays free for the reference, the back-projector and the
    particle batch.
    """
    if device.type != "cuda":
        return 2**29
    free, total = torch.cuda.mem_get_info(device)
    allocated = torch.cuda.memory_allocated(device)
    available = free + torch.cuda.memory_reserved(device) - allocated
    # torch asks for the device's index ("cuda" alone is the current device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    fraction = getattr(torch.cuda, "get_per_process_memory_fraction", lambda _: 1.0)(index)
    if fraction < 1.0:  # ranks that share the GPU: this process's part of it
        available = min(available, int(fraction * total) - allocated)
    return int(min(max(available // 4, 2**30), _budget_cap()))


@dataclass(frozen=True)
class ExpectationPlan:
    """What one iteration searches, shared by all batches of a half set.

    Its tensors (``orientations``, ``translations_px``) live on the particles' device.

    Attributes
    ----------
    ori_size
        Particle box ``n`` in pixels (the frequencies' and shifts' box).
    current_size
        Fine image size ``m`` (even, ``<= ori_size``); the particle tensors come at this size.
    coarse_size
        Image size of the first pass (even, ``<= current_size``).
    orientations
        The coarse orientation grid (``poses.OrientationGrid``).
    translations_px
        Coarse trial translations ``(t, ndim)`` in pixels, relative to each
        particle's origin, perturbation included (``geometry.translation_grid``,
        ``perturb_translations``).
    offset_step_px
        Coarse translation step (for the oversampled children).
    sigma2_offset_px2
        Variance of the Gaussian offset prior in pixels squared (RELION's
        ``sigma2_offset`` / pixel**2); ``math.inf`` for a flat prior.
    oversampling
        Adaptive oversampling order of the second pass (``--oversampling``, 1).
    adaptive_fraction
        Posterior mass kept after the first pass (``--adaptive_fraction``, 0.999).
    padding_factor
        Padding of ``reference_ft`` (``--pad``, 2).
    cross_correlation
        Score with the normalised cross-correlation and assign each particle to
        its best pose (``--firstiter_cc`` in iteration 1).
    precision
        ``"float32"``, ``"float64"`` or ``"tf32"`` (``likelihood.scores``).
    max_bytes
        Budget for the intermediates of one call (the score arrays of a
        particle chunk, projections and gathers of an orientation chunk).
    """

    ori_size: int
    current_size: int
    coarse_size: int
    orientations: OrientationGrid
    translations_px: Float[Tensor, "t ndim"]
    offset_step_px: float
    sigma2_offset_px2: float = math.inf
    oversampling: int = 1
    adaptive_fraction: float = 0.999
    padding_factor: int = 2
    cross_correlation: bool = False
    precision: str = "float32"
    max_bytes: int = 2**30

    @cached_property
    def fine_translations_px(self) -> Float[Tensor, "tg ndim"]:
        """The fine translation grid, coarse translation ``i``'s children at rows ``i g + j``
        (``g = 2**(oversampling * ndim)``); computed once per plan (every fine group uses it).
        Shared: read it, do not write into it."""
        with torch.inference_mode(False):  # a normal tensor, whatever the caller's mode
            fine = oversampled_translations(
                self.translations_px,
                offset_step_px=self.offset_step_px,
                oversampling=self.oversampling,
            )
            return fine.reshape(-1, self.translations_px.shape[1])


@dataclass(frozen=True)
class ParticleTerms:
    """One batch of particles of one half set, prepared by the caller.

    Grids are half-complex ``(b, m, m // 2 + 1)`` (2D) or ``(b, m, m, m // 2 + 1)``
    (3D) at ``current_size`` (``fourier.fourier_crop`` of the full transforms),
    as stored: the particle centre lies at ``-origin``.

    Attributes
    ----------
    masked_ft
        Masked particle transforms (scores, noise sums).
    unmasked_ft
        Unmasked transforms (back-projection).
    ctf
        ``K`` of ``X = K P`` (``tomo.ParticleBatch.ctf``).
    sigma2_noise
        Noise spectrum of each particle's optics group, ``(b, ori_size // 2 + 1)``,
        positive up to shell ``current_size // 2``.
    origins_px
        Current origins ``(x, y[, z])`` in pixels.
    offset_priors_px
        Centre of each particle's offset prior in pixels (0 when none).
    log_prior_orientations
        Log prior of coarse orientations: ``(b, m * p)`` over the whole grid, or
        ``(b, c)`` over ``orientation_ids``; ``-inf`` = not searched.
    orientation_ids
        ``(b, c)`` coarse orientation ids each particle searches (local
        searches), or None for the whole grid.
    multiplicity
        RELION-4 multiplicity grids, or None.
    ctf2_per_multiplicity
        RELION-4: ``c`` of each particle's shells, ``(b, ori_size // 2 + 1)``: each
        coefficient's noise is ``2 sigma2 V`` of ``subtomo_noise.noise_scale`` (``ctf``
        is the CTF² weight), or None for RELION's rule: the multiplicity where it
        exceeds 0.1, else 1.
    ctf_premultiplied
        Data carry one CTF (RELION-4): back-project ``X`` and ``K``.
    diff2_offset
        Constant added to each particle's scores for the log-likelihood only
        (RELION: half the image power beyond ``current_size``), or None.
    scale
        Intensity scale ``s`` of each particle's group (``--scale``), or None
        for 1: the model becomes ``X = s K P``, scored and summed with ``s K``,
        and the back-projection inserts ``s Y`` with weight ``s^2 V`` (RELION's
        ``Mctf *= scale``; premultiplied data: ``X`` with weight ``s K``).
    """

    masked_ft: Complex[Tensor, "b ..."]
    unmasked_ft: Complex[Tensor, "b ..."]
    ctf: Float[Tensor, "b ..."]
    sigma2_noise: Float[Tensor, "b s"]
    origins_px: Float[Tensor, "b ndim"]
    offset_priors_px: Float[Tensor, "b ndim"]
    log_prior_orientations: Float[Tensor, "b c"]
    orientation_ids: Int[Tensor, "b c"] | None = None
    multiplicity: Float[Tensor, "b ..."] | None = None
    ctf2_per_multiplicity: Float[Tensor, "b s"] | None = None
    ctf_premultiplied: bool = False
    diff2_offset: Float[Tensor, " b"] | None = None
    scale: Float[Tensor, " b"] | None = None

    @property
    def count(self) -> int:
        """Number of particles ``b``."""
        return int(self.masked_ft.shape[0])

    @property
    def ndim(self) -> int:
        """2 for images, 3 for volumes."""
        return self.masked_ft.dim() - 1

    def select(self, part: slice | Tensor) -> "ParticleTerms":
        """The particles ``part`` (a slice or indices) of the batch."""
        changes = {
            f.name: getattr(self, f.name)[part]
            for f in fields(self)
            if isinstance(getattr(self, f.name), Tensor)
        }
        return replace(self, **changes)


@dataclass(frozen=True)
class ProjectionCache:
    """Projections of a half set's reference that every batch of an iteration shares.

    Attributes
    ----------
    coarse
        The coarse grid's projections on the coarse window, ``(m * p, k)``, or None.
    fine
        Projections of the children of every coarse orientation on the fine
        window, row ``coarse_id * 8**oversampling + child``, or None.
    """

    coarse: Complex[Tensor, "rc kc"] | None = None
    fine: Complex[Tensor, "rf kf"] | None = None


@dataclass(frozen=True)
class BackprojectionSums:
    """Sums to insert into the back-projector (``sums.insert_backprojection``).

    Attributes
    ----------
    data
        ``sum w Y S`` per orientation in play (``likelihood.sums``).
    weight
        ``sum w V`` per orientation in play.
    rotations
        RELION's matrices ``A`` of those orientations.
    window
        The window of ``data`` and ``weight`` (current size, DC and Friedel mates included).
    """

    data: Complex[Tensor, "r k"]
    weight: Float[Tensor, "r k"]
    rotations: Float[Tensor, "r 3 3"]
    window: FourierWindow


@dataclass(frozen=True)
class ExpectationResult:
    """What one batch gives to the particle table and to the M-step.

    Attributes
    ----------
    rotations, angles_deg, origins_px
        Best (maximum-weight) fine pose: matrix ``A``, ``(rot, tilt, psi)``
        (``geometry.matrix_to_euler``), new origin ``origin + t`` in pixels.
    pmax
        ``rlnMaxValueProbDistribution``.
    significant_samples
        ``rlnNrOfSignificantSamples`` (coarse pass).
    log_likelihood
        ``rlnLogLikeliContribution`` (``likelihood.posterior``).
    weight_sums
        Sum of the weights that entered the sums (RELION's ``sumw_group`` terms;
        just below 1 because of the second significance cut).
    shell_sums
        Noise and scale sums per particle and shell ``(b, ori_size // 2 + 1)``,
        zero beyond ``current_size // 2``: the caller adds the image power beyond.
    multiplicity_sums
        RELION-4: the multiplicity summed per shell over the window, or None.
    offset_moments_px2
        ``sum w |origin + t - prior|^2`` in pixels squared.
    direction_mass
        Posterior mass per coarse direction (``orientations.pixels``), summed over the batch.
    backprojection
        Per-orientation sums for the back-projector.
    """

    rotations: Float[Tensor, "b 3 3"]
    angles_deg: Float[Tensor, "b 3"]
    origins_px: Float[Tensor, "b ndim"]
    pmax: Float[Tensor, " b"]
    significant_samples: Int[Tensor, " b"]
    log_likelihood: Float[Tensor, " b"]
    weight_sums: Float[Tensor, " b"]
    shell_sums: ShellSums
    multiplicity_sums: Float[Tensor, "b s"] | None
    offset_moments_px2: Float[Tensor, " b"]
    direction_mass: Float[Tensor, " m"]
    backprojection: BackprojectionSums
