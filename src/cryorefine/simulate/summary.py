"""The record of a simulation written to ``simulation.json``: options, SNR, truth, reference.

``simulation_summary`` gathers everything a test of a refinement of the data needs:
every option (by its command-line name), ``SNR_DEFINITION`` with the signal and
noise powers, how the truth was made, the reference's rotation ``Q`` and what it
means for the poses, the mask recipe, the microscope, the conventions and the
tilt scheme.
"""

import math

import torch

from cryorefine import __version__
from cryorefine.simulate.images import MICROSCOPE, MULTIPLICITY_THRESHOLD
from cryorefine.simulate.options import SNR_DEFINITION, SimulationOptions
from cryorefine.simulate.poses import TiltScheme
from cryorefine.simulate.reference import (
    MASK_DILATION_PX,
    MASK_EDGE_WIDTH_PX,
    MASK_THRESHOLD_FRACTION,
)

__all__ = ["simulation_summary"]


def simulation_summary(
    options: SimulationOptions,
    truth_info: dict[str, object],
    signal: float,
    noise_power: float,
    rotation: torch.Tensor,
    axis: torch.Tensor,
    symmetry: str,
    scheme: TiltScheme | None,
) -> dict[str, object]:
    """Everything ``simulation.json`` records (module docstring), JSON-ready."""
    n = options.box_size
    d = 3 if options.data_format == "subtomo3d" else 2
    summary: dict[str, object] = {
        "program": "cryorefine simulate",
        "version": __version__,
        "options": {
            "output_dir": str(options.output_dir),
            "map": None if options.map_path is None else str(options.map_path),
            "sym": symmetry,
            "n_particles": options.n_particles,
            "box": n,
            "angpix": options.pixel_size_angst,
            "snr": "inf" if options.noise_free else options.snr,
            "defocus_range": list(options.defocus_range_angst),
            "tilt_range": list(options.tilt_range_deg),
            "tilt_step": options.tilt_step_deg,
            "dose": options.dose_per_tilt_e_per_angst2,
            "max_offset": options.max_offset_px,
            "format": options.data_format,
            "ref_lowpass": options.ref_lowpass_angst,
            "ref_rotation_deg": options.ref_rotation_deg,
            "bfactor": options.bfactor_angst2,
            "seed": options.seed,
        },
        "snr_definition": SNR_DEFINITION,
        "signal_power": signal,
        "noise_power_per_coefficient": noise_power,
        "noise_sigma_per_pixel": math.sqrt(noise_power * n**d),
        "noise_measurement": {"spa": "image", "relion4": "tilt image", "subtomo3d": "subtomogram"}[
            options.data_format
        ],
        "truth": truth_info,
        "reference": {
            "rotation_deg": options.ref_rotation_deg,
            "axis_xyz": axis.tolist(),
            "matrix": rotation.tolist(),
            "meaning": "reference(x) = lowpass(truth)(Q.T x), Q = matrix (active rotation); "
            "a particle of pose A (truth_particles.star) has pose A Q.T against the reference",
            "lowpass_angst": options.ref_lowpass_angst,
            "lowpass_edge_width_shells": 2.0,
        },
        "mask": {
            "made_from": "reference.mrc",
            "threshold_fraction_of_max": MASK_THRESHOLD_FRACTION,
            "dilation_px": MASK_DILATION_PX,
            "edge_width_px": MASK_EDGE_WIDTH_PX,
        },
        "microscope": MICROSCOPE,
        "conventions": {
            "origin": "the particle centre lies at -origin from box centre n // 2 (RELION)",
            "projector": "padding 2, trilinear, separable gridding correction, 0 beyond Nyquist",
            "bfactor": "exp(-B s^2 / 4) on the signal; not written as rlnCtfBfactor",
            "defocus": "uniform in defocus_range per particle, U = V, angle 0; tomography: "
            "the same for every tilt of the particle",
            "half_sets": "balanced random split (rlnRandomSubset)",
        },
    }
    if scheme is not None:
        summary["tilt_series"] = {
            "tilt_deg": scheme.tilt_deg.tolist(),
            "acquisition_order": scheme.acquisition_order.tolist(),
            "pre_exposure_e_per_angst2": scheme.pre_exposure_e_per_angst2.tolist(),
            "tilt_matrices": "R_f = euler_to_matrix((0, tilt, 0)), tomogram (= particle) "
            "frame to tilt image; dose-symmetric order from 0 degrees, positive first",
            "dose_weight": "Grant & Grigorieff with the cumulative (pre-)exposure of each tilt",
            "multiplicity_threshold": MULTIPLICITY_THRESHOLD,
        }
    return summary
