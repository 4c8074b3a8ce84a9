"""tomo layer: particles of every flavour as tensors; tilt-series geometry (to come)."""

from cryorefine.tomo.particle_batches import (
    SUPPORTED_FLAVOURS,
    ParticleBatch,
    backprojection_terms,
    particle_batches,
)

__all__ = ["SUPPORTED_FLAVOURS", "ParticleBatch", "backprojection_terms", "particle_batches"]
