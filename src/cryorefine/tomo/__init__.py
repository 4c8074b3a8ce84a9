"""tomo layer: particles of every flavour as tensors; tilt-series geometry."""

from cryorefine.tomo.particle_batches import (
    SUPPORTED_FLAVOURS,
    ParticleBatch,
    backprojection_terms,
    particle_batches,
)
from cryorefine.tomo.tilt_geometry import (
    ParticleTilts,
    TiltSeriesGeometry,
    decentred_coordinates_px,
    particle_tilts,
    relion5_projection_matrices,
    tilt_series_geometry,
)

__all__ = [
    "SUPPORTED_FLAVOURS",
    "ParticleBatch",
    "ParticleTilts",
    "TiltSeriesGeometry",
    "backprojection_terms",
    "decentred_coordinates_px",
    "particle_batches",
    "particle_tilts",
    "relion5_projection_matrices",
    "tilt_series_geometry",
]
