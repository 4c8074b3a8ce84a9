"""Simulated data sets with ground truth, and the embedded default structure."""

from cryorefine.simulate.dataset import (
    CHUNK_SIZE,
    SimulatedDataset,
    chunk_size,
    simulate_dataset,
)
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
    subtomograms,
)
from cryorefine.simulate.options import DATA_FORMATS, SNR_DEFINITION, SimulationOptions
from cryorefine.simulate.poses import (
    ParticleDraws,
    TiltScheme,
    draw_particles,
    quaternion_to_matrix,
    random_rotations,
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
    "ParticleDraws",
    "SimulatedDataset",
    "SimulationOptions",
    "TiltScheme",
    "chunk_size",
    "draw_particles",
    "embedded_map",
    "half_to_centred_cube",
    "make_mask",
    "make_reference",
    "prepare_truth",
    "pseudo_subtomograms",
    "quaternion_to_matrix",
    "random_rotations",
    "reference_rotation",
    "resample_map",
    "shell_power",
    "signal_power",
    "simulate_dataset",
    "simulation_summary",
    "spa_images",
    "subtomograms",
    "symmetrise_map",
    "tilt_scheme",
]
