"""geometry layer: RELION's Euler angles, point groups, HEALPix sampling, local searches, offsets.

Conventions (axes, which way ``A`` maps, ranges): ``geometry.conventions``.
"""

from cryorefine.geometry.asymmetric_unit import (
    SEAM_CHECK_MAX_DIRECTIONS,
    asymmetric_unit_pixels,
    in_asymmetric_region,
    symmetry_mate_directions,
)
from cryorefine.geometry.conventions import xyz_to_zyx, zyx_to_xyz
from cryorefine.geometry.euler import (
    GIMBAL_LOCK_SIN_TILT,
    angular_distance_deg,
    axis_angle_to_matrix,
    direction_to_euler,
    euler_to_direction,
    euler_to_matrix,
    matrix_to_euler,
    orientation_change_deg,
    symmetric_angular_distance_deg,
)
from cryorefine.geometry.healpix import (
    healpix_children,
    healpix_max_pixel_radius_rad,
    healpix_nest2xyf,
    healpix_npix,
    healpix_pix2ang,
    healpix_pix2vec,
    healpix_pix2z_phi,
    healpix_xyf2nest,
)
from cryorefine.geometry.local_search import (
    SIGMA_CUTOFF,
    local_angle_prior,
    local_direction_prior,
    local_psi_prior,
)
from cryorefine.geometry.recentre import recentre_particles, recentred_origins_px
from cryorefine.geometry.sampling import (
    angular_step_deg,
    healpix_rot_tilt_deg,
    next_perturbation,
    orientation_grid_deg,
    oversampled_orientations_deg,
    oversampled_psi_deg,
    perturb_rotations,
    pixel_rot_tilt_deg,
    psi_angles_deg,
)
from cryorefine.geometry.symmetry import SymmetryGroup, point_group
from cryorefine.geometry.translations import (
    oversampled_translations,
    perturb_translations,
    translation_grid,
)

__all__ = [
    "GIMBAL_LOCK_SIN_TILT",
    "SEAM_CHECK_MAX_DIRECTIONS",
    "SIGMA_CUTOFF",
    "SymmetryGroup",
    "angular_distance_deg",
    "angular_step_deg",
    "asymmetric_unit_pixels",
    "axis_angle_to_matrix",
    "direction_to_euler",
    "euler_to_direction",
    "euler_to_matrix",
    "healpix_children",
    "healpix_max_pixel_radius_rad",
    "healpix_nest2xyf",
    "healpix_npix",
    "healpix_pix2ang",
    "healpix_pix2vec",
    "healpix_pix2z_phi",
    "healpix_rot_tilt_deg",
    "healpix_xyf2nest",
    "in_asymmetric_region",
    "local_angle_prior",
    "local_direction_prior",
    "local_psi_prior",
    "matrix_to_euler",
    "next_perturbation",
    "orientation_change_deg",
    "orientation_grid_deg",
    "oversampled_orientations_deg",
    "oversampled_psi_deg",
    "oversampled_translations",
    "perturb_rotations",
    "perturb_translations",
    "pixel_rot_tilt_deg",
    "point_group",
    "psi_angles_deg",
    "recentre_particles",
    "recentred_origins_px",
    "symmetric_angular_distance_deg",
    "symmetry_mate_directions",
    "translation_grid",
    "xyz_to_zyx",
    "zyx_to_xyz",
]
