"""fourier layer: pure functions on tensors (device in, device out).

Conventions (axes, layout, normalisation, shells, shift sign): ``fourier.conventions``.
"""

from cryorefine.fourier.backprojector import (
    add_packed,
    insert_slices,
    insert_volumes,
    packed_accumulator,
    zero_accumulators,
)
from cryorefine.fourier.conventions import (
    frequency_indices,
    friedel_redundant,
    from_fourier,
    rfft_shape,
    shell_index,
    to_fourier,
)
from cryorefine.fourier.ctf import (
    ctf_2d,
    ctf_at_frequencies,
    ctf_volume_to_half_complex,
    dose_weight,
    dose_weight_at_frequencies,
    electron_wavelength_angst,
)
from cryorefine.fourier.ctf3d import tilt_series_ctf_weights
from cryorefine.fourier.filters import (
    apply_bfactor,
    bfactor_envelope,
    fourier_crop,
    fourier_pad,
    fourier_window,
    high_pass,
    low_pass,
    phase_shift_grid,
    randomise_phases_beyond,
    shift_fourier,
)
from cryorefine.fourier.gridding import (
    GriddingCorrection,
    iterative_gridding_weights,
    mask_outside_sphere,
    trilinear_gridding_correction,
)
from cryorefine.fourier.interpolation import centred_half_frequencies, padded_size
from cryorefine.fourier.masks import (
    check_mask_values,
    mask_transforms,
    mask_with_background,
    noise_images,
    radius_from_centre,
    soft_sphere_mask,
    solvent_flatten,
)
from cryorefine.fourier.projector import extract_slices, prepare_reference, rotate_volume
from cryorefine.fourier.reconstruction import (
    average_to_map,
    downsampled_average,
    reconstruct,
    reconstruction_sigma2,
    regularised_average,
)
from cryorefine.fourier.rescale import rescale_map, rescaled_size, window_map
from cryorefine.fourier.rotated_samples import sample_rotated, splat_rotated
from cryorefine.fourier.shells import (
    first_shell_below,
    fsc,
    fsc_to_ssnr,
    fsc_true,
    power_spectrum,
    radial_average,
    resolution_at,
    resolution_shell,
    shell_counts,
    shell_sums,
    shell_values_to_grid,
)
from cryorefine.fourier.symmetrise import apply_point_group, enforce_hermitian_symmetry, symmetrise

__all__ = [
    "GriddingCorrection",
    "add_packed",
    "apply_bfactor",
    "apply_point_group",
    "average_to_map",
    "bfactor_envelope",
    "centred_half_frequencies",
    "check_mask_values",
    "ctf_2d",
    "ctf_at_frequencies",
    "ctf_volume_to_half_complex",
    "dose_weight",
    "dose_weight_at_frequencies",
    "downsampled_average",
    "electron_wavelength_angst",
    "enforce_hermitian_symmetry",
    "extract_slices",
    "first_shell_below",
    "fourier_crop",
    "fourier_pad",
    "fourier_window",
    "frequency_indices",
    "friedel_redundant",
    "from_fourier",
    "fsc",
    "fsc_to_ssnr",
    "fsc_true",
    "high_pass",
    "insert_slices",
    "insert_volumes",
    "iterative_gridding_weights",
    "low_pass",
    "mask_outside_sphere",
    "mask_transforms",
    "mask_with_background",
    "noise_images",
    "packed_accumulator",
    "padded_size",
    "phase_shift_grid",
    "power_spectrum",
    "prepare_reference",
    "radial_average",
    "radius_from_centre",
    "randomise_phases_beyond",
    "reconstruct",
    "reconstruction_sigma2",
    "regularised_average",
    "rescale_map",
    "rescaled_size",
    "resolution_at",
    "resolution_shell",
    "rfft_shape",
    "rotate_volume",
    "sample_rotated",
    "shell_counts",
    "shell_index",
    "shell_sums",
    "shell_values_to_grid",
    "shift_fourier",
    "soft_sphere_mask",
    "solvent_flatten",
    "splat_rotated",
    "symmetrise",
    "tilt_series_ctf_weights",
    "to_fourier",
    "trilinear_gridding_correction",
    "window_map",
    "zero_accumulators",
]
