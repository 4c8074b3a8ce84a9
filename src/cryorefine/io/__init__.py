"""io layer: RELION's files in and out (STAR, MRC, particle, tomogram and optimisation sets).

Nothing here imports torch: arrays are numpy, tables pandas. STAR labels stay in
this layer; the layers above read particle sets through accessors in field words.
Every output goes through ``write_atomically``; every user mistake raises
``InputError`` naming the file and the row, label or value.
"""

from cryorefine.io.atomic import make_output_folder, write_atomically
from cryorefine.io.image_stacks import read_image, read_images, stored_image_layout
from cryorefine.io.labels import NUMERIC_LABELS, TEXT_LABELS
from cryorefine.io.mrc import (
    MrcHeader,
    parse_image_name,
    read_mrc,
    read_mrc_header,
    split_image_names,
    write_mrc,
)
from cryorefine.io.optimisation_set import (
    OPTIMISATION_SET_LABELS,
    OptimisationSet,
    load_optimisation_set,
    write_optimisation_set,
)
from cryorefine.io.particle_checks import FLAVOURS, PIXEL_SIZE_TOLERANCE
from cryorefine.io.particles import FIELD_LABELS, ParticleSet, load_particles, write_particles
from cryorefine.io.paths import resolve_path
from cryorefine.io.star import FLOAT_DIGITS, StarBlock, read_star, write_star
from cryorefine.io.star_tables import combine_particle_tables, particle_block_name, select_rows
from cryorefine.io.tables import CtfParameters, float_column, int_column
from cryorefine.io.tomograms import (
    TiltAlignment,
    TiltSeries,
    TomogramSet,
    check_particles_against_tomograms,
    load_tomograms,
)
from cryorefine.io.trajectories import Trajectories, load_trajectories

__all__ = [
    "FIELD_LABELS",
    "FLAVOURS",
    "FLOAT_DIGITS",
    "NUMERIC_LABELS",
    "OPTIMISATION_SET_LABELS",
    "PIXEL_SIZE_TOLERANCE",
    "TEXT_LABELS",
    "CtfParameters",
    "MrcHeader",
    "OptimisationSet",
    "ParticleSet",
    "StarBlock",
    "TiltAlignment",
    "TiltSeries",
    "TomogramSet",
    "Trajectories",
    "check_particles_against_tomograms",
    "combine_particle_tables",
    "float_column",
    "int_column",
    "load_optimisation_set",
    "load_particles",
    "load_tomograms",
    "load_trajectories",
    "make_output_folder",
    "parse_image_name",
    "particle_block_name",
    "read_image",
    "read_images",
    "read_mrc",
    "read_mrc_header",
    "read_star",
    "resolve_path",
    "select_rows",
    "split_image_names",
    "stored_image_layout",
    "write_atomically",
    "write_mrc",
    "write_optimisation_set",
    "write_particles",
    "write_star",
]
