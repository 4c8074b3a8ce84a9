"""tomo layer: particles of every flavour as tensors; tilt-series geometry; extraction."""

from cryorefine.tomo.extract import (
    MULTIPLICITY_THRESHOLD,
    SlabInsertion,
    insert_tilt_images,
    pseudo_subtomogram_volumes,
    slab_insertion,
)
from cryorefine.tomo.extract_job import ExtractedSet, ExtractOptions, extract_particles
from cryorefine.tomo.host_buffers import HostBuffers
from cryorefine.tomo.particle_batches import (
    SUPPORTED_FLAVOURS,
    ParticleBatch,
    backprojection_terms,
    finite_particles,
    particle_batches,
)
from cryorefine.tomo.particle_cache import HOST_MEMORY_SHARE, ParticleCache, available_host_bytes
from cryorefine.tomo.prefetch import prefetched
from cryorefine.tomo.stack_batches import (
    PSEUDO_SUBTOMOGRAM_FLAVOURS,
    STACK2D_FLAVOUR,
    StackParticleSet,
    stack_volumes,
    with_tomograms,
)
from cryorefine.tomo.tilt_geometry import (
    ParticleTilts,
    TiltSeriesGeometry,
    decentred_coordinates_px,
    particle_tilts,
    relion5_projection_matrices,
    tilt_series_geometry,
)
from cryorefine.tomo.tilt_images import (
    CIRCLE_EDGE_PX,
    boxes_to_fourier,
    crop_boxes,
    cut_boxes,
    premultiply,
    source_box_size,
    tilt_image_transforms,
)

__all__ = [
    "CIRCLE_EDGE_PX",
    "HOST_MEMORY_SHARE",
    "MULTIPLICITY_THRESHOLD",
    "PSEUDO_SUBTOMOGRAM_FLAVOURS",
    "STACK2D_FLAVOUR",
    "SUPPORTED_FLAVOURS",
    "ExtractOptions",
    "ExtractedSet",
    "HostBuffers",
    "ParticleBatch",
    "ParticleCache",
    "ParticleTilts",
    "SlabInsertion",
    "StackParticleSet",
    "TiltSeriesGeometry",
    "available_host_bytes",
    "backprojection_terms",
    "boxes_to_fourier",
    "crop_boxes",
    "cut_boxes",
    "decentred_coordinates_px",
    "extract_particles",
    "finite_particles",
    "insert_tilt_images",
    "particle_batches",
    "particle_tilts",
    "prefetched",
    "premultiply",
    "pseudo_subtomogram_volumes",
    "relion5_projection_matrices",
    "slab_insertion",
    "source_box_size",
    "stack_volumes",
    "tilt_image_transforms",
    "tilt_series_geometry",
    "with_tomograms",
]
