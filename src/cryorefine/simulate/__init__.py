"""Simulated data sets with ground truth, and the embedded default structure."""

from cryorefine.simulate.batches import (
    CHUNK_SIZE,
    GPU_CHUNK_FACTOR,
    WRITER_THREADS,
    chunk_size,
    image_names,
    particle_count,
    simulate_particles,
)
from cryorefine.simulate.dataset import SimulatedDataset, simulate_dataset
from cryorefine.simulate.embedded import (
    EMBEDDED_MAP_DESCRIPTION,
    EMBEDDED_PIXEL_SIZE_ANGST,
    EMBEDDED_SYMMETRY,
    embedded_map,
)
from cryorefine.simulate.images import (
    MICROSCOPE,
    MULTIPLICITY_THRESHOLD,
    half_to_centred_cube,
    pseudo_subtomograms,
    spa_images,
    standard_noise,
    subtomograms,
)
from cryorefine.simulate.options import DATA_FORMATS, SNR_DEFINITION, SimulationOptions
from cryorefine.simulate.picks import PickedGeometry, load_picked_geometry
from cryorefine.simulate.poses import (
    ParticleDraws,
    TiltScheme,
    draw_particles,
    quaternion_to_matrix,
    random_rotations,
    scheme_tilts,
    tilt_scheme,
)
from cryorefine.simulate.reference import (
    MASK_BOX_EDGE_PX,
    MASK_DILATION_PX,
    MASK_EDGE_WIDTH_PX,
    MASK_THRESHOLD_FRACTION,
    SYMMETRY_MARGIN_DEG,
    make_mask,
    make_reference,
    reference_rotation,
)
from cryorefine.simulate.summary import simulation_summary
from cryorefine.simulate.truth import (
    PADDING_FACTOR,
    SYMMETRISE_PADDING,
    prepare_truth,
    resample_map,
    shell_power,
    signal_power,
    symmetrise_map,
)

__all__ = [
    "CHUNK_SIZE",
    "DATA_FORMATS",
    "EMBEDDED_MAP_DESCRIPTION",
    "EMBEDDED_PIXEL_SIZE_ANGST",
    "EMBEDDED_SYMMETRY",
    "GPU_CHUNK_FACTOR",
    "MASK_BOX_EDGE_PX",
    "MASK_DILATION_PX",
    "MASK_EDGE_WIDTH_PX",
    "MASK_THRESHOLD_FRACTION",
    "MICROSCOPE",
    "MULTIPLICITY_THRESHOLD",
    "PADDING_FACTOR",
    "SNR_DEFINITION",
    "SYMMETRISE_PADDING",
    "SYMMETRY_MARGIN_DEG",
    "WRITER_THREADS",
    "ParticleDraws",
    "PickedGeometry",
    "SimulatedDataset",
    "SimulationOptions",
    "TiltScheme",
    "chunk_size",
    "draw_particles",
    "embedded_map",
    "half_to_centred_cube",
    "image_names",
    "load_picked_geometry",
    "make_mask",
    "make_reference",
    "particle_count",
    "prepare_truth",
    "pseudo_subtomograms",
    "quaternion_to_matrix",
    "random_rotations",
    "reference_rotation",
    "resample_map",
    "scheme_tilts",
    "shell_power",
    "signal_power",
    "simulate_dataset",
    "simulate_particles",
    "simulation_summary",
    "spa_images",
    "standard_noise",
    "subtomograms",
    "symmetrise_map",
    "tilt_scheme",
]
