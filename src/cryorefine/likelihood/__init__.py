"""likelihood layer: the E-step as batched matrix products (scores, posterior, M-step sums).

Notation and the product forms: ``likelihood.scores`` and ``likelihood.sums``;
the coefficients in play: ``likelihood.window``; one batch end to end:
``likelihood.expectation``.
"""

from cryorefine.likelihood.expectation import (
    coarse_window,
    expectation,
    prepare,
    projection_cache,
)
from cryorefine.likelihood.plan import (
    BackprojectionSums,
    ExpectationPlan,
    ExpectationResult,
    ParticleTerms,
    ProjectionCache,
    memory_budget,
)
from cryorefine.likelihood.poses import OrientationGrid, coarse_rotations, fine_rotations
from cryorefine.likelihood.posterior import (
    hard_assignment,
    log_evidence,
    log_likelihood_contribution,
    log_sigma2_sum,
    pmax,
    posterior_weights,
    significant_samples,
)
from cryorefine.likelihood.scores import (
    PRECISIONS,
    DataTerms,
    cross_correlation_per_particle,
    cross_correlation_scores,
    data_terms,
    matmul_precision,
    orientation_terms,
    resolve_precision,
    scores_from_terms,
    squared_differences,
    squared_differences_per_particle,
    working_dtypes,
)
from cryorefine.likelihood.sums import (
    ShellSums,
    backprojection_inputs,
    backprojection_sums,
    insert_backprojection,
    offset_moments,
    shell_sums,
    shell_sums_from_products,
)
from cryorefine.likelihood.window import (
    FourierWindow,
    fourier_window,
    gather_window,
    scatter_window,
    shell_matrix,
    window_phases,
)

__all__ = [
    "PRECISIONS",
    "BackprojectionSums",
    "DataTerms",
    "ExpectationPlan",
    "ExpectationResult",
    "FourierWindow",
    "OrientationGrid",
    "ParticleTerms",
    "ProjectionCache",
    "ShellSums",
    "backprojection_inputs",
    "backprojection_sums",
    "coarse_rotations",
    "coarse_window",
    "cross_correlation_per_particle",
    "cross_correlation_scores",
    "data_terms",
    "expectation",
    "fine_rotations",
    "fourier_window",
    "gather_window",
    "hard_assignment",
    "insert_backprojection",
    "log_evidence",
    "log_likelihood_contribution",
    "log_sigma2_sum",
    "matmul_precision",
    "memory_budget",
    "offset_moments",
    "orientation_terms",
    "pmax",
    "posterior_weights",
    "prepare",
    "projection_cache",
    "resolve_precision",
    "scatter_window",
    "scores_from_terms",
    "shell_matrix",
    "shell_sums",
    "shell_sums_from_products",
    "significant_samples",
    "squared_differences",
    "squared_differences_per_particle",
    "window_phases",
    "working_dtypes",
]
