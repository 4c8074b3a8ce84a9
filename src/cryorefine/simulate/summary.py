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
from cryorefine.errors import InputError
from cryorefine.io import TiltSeries
from cryorefine.simulate.images import MICROSCOPE, MULTIPLICITY_THRESHOLD
from cryorefine.simulate.options import SNR_DEFINITION, SimulationOptions
from cryorefine.simulate.picks import PickedGeometry
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
    picked: PickedGeometry | None = None,
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
            "tomograms": None if options.tomograms_star is None else str(options.tomograms_star),
            "particles": None if options.particles_star is None else str(options.particles_star),
            "bin": options.binning,
            "tilt_image_size": None
            if options.tilt_image_size_px is None
            else list(options.tilt_image_size_px),
            "float16": options.float16,
        },
        "snr_definition": SNR_DEFINITION,
        "signal_power": signal,
        "noise_power_per_coefficient": noise_power,
        "noise_sigma_per_pixel": math.sqrt(noise_power * n**d),
        "noise_measurement": {
            "spa": "image",
            "relion4": "tilt image",
            "subtomo3d": "subtomogram",
            "tilt_series": "tilt image (a box of --box pixels)",
        }[options.data_format],
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
        "microscope": MICROSCOPE if picked is None else picked.microscope,
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
    if picked is not None:
        summary["tilt_series"] = _picked_summary(picked)
    return summary


def _nominal_tilts(series: TiltSeries) -> list[float] | None:
    try:
        return [float(angle) for angle in series.nominal_tilt_angles_deg()]
    except InputError:  # a RELION-4 table without nominal angles
        return None


def _picked_summary(picked: PickedGeometry) -> dict[str, object]:
    """The real tilt series: which, how binned, how many picks, and each tomogram's tilts."""
    tomograms = {}
    for name, geometry in picked.geometries.items():
        series = picked.tomograms[name]
        tomograms[name] = {
            "particles": picked.tomo_names.count(name),
            "tilts": len(geometry),
            "nominal_tilt_deg": _nominal_tilts(series),
            "pre_exposure_e_per_angst2": geometry.pre_exposure_e_per_angst2.tolist(),
            "defocus_u_angst": geometry.defocus_u_angst.tolist(),
            "hand": geometry.hand,
            "image_size_px": list(geometry.image_size_px),
        }
    return {
        "source": "real tilt series (--tomograms) and picks (--particles)",
        "binning": picked.binning,
        "tilt_series_pixel_size_angst": picked.tilt_series_pixel_size_angst,
        "picks_in_file": picked.picks,
        "picks_dropped_unseen": picked.dropped,
        "visibility_radius_px": picked.visibility_radius_px,
        "defocus": "per tilt rlnDefocusU/V plus hand * pixel * depth of the particle "
        "(tomo.tilt_geometry); astigmatism, CTF scale and B-factor of the tilt",
        "dose_weight": "Grant & Grigorieff with each tilt's rlnMicrographPreExposure",
        "multiplicity_threshold": MULTIPLICITY_THRESHOLD,
        "surface_frames": None
        if picked.subtomogram_angles_deg is None
        else {
            "poses": "rot uniform, tilt 90 and psi 0 plus a normal spread, in frames along "
            "each pick's surface normal (simulate.surface_frames)",
            "normal_spread_deg": picked.options.normal_spread_deg,
        },
        "tomograms": tomograms,
    }
