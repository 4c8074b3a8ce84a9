"""``run_itNNN_half{1,2}_model.star`` (and the final ``run_model.star``) both ways.

Blocks and labels in RELION 5's order (``MlModel::write``, checked against the
HIV tutorial's ``Refine3D/job012/run_model.star``): ``data_model_general``,
``data_model_classes``, ``data_model_class_1`` (spectra per shell),
``data_model_groups`` (scale groups), ``data_model_optics_group_N`` (noise, only
shells with ``sigma2 > 0``) and ``data_model_pdf_orient_class_1``. A model
without an orientability spectrum (before the first accuracy estimate) has no
``rlnSpectralOrientabilityContribution`` column, as RELION; one without an
orientation pdf has no pdf block. ``rlnCurrentResolution`` is in Angstrom.
"""

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from cryorefine.errors import InputError
from cryorefine.io import StarBlock, float_column, int_column, read_mrc, read_star, resolve_path
from cryorefine.refine.maximisation import overall_fourier_completeness
from cryorefine.refine.model import HalfSetModel, RefineState
from cryorefine.refine.options import RefineOptions

__all__ = ["ModelStarGeneral", "half_model_from_star", "model_star_blocks"]


@dataclass(frozen=True)
class ModelStarGeneral:
    """What ``data_model_general`` holds for the run rather than the half (for ``--continue``)."""

    current_resolution_inv_angst: float
    current_size: int
    local_searches: bool
    sigma_rot_deg: float
    sigma_tilt_deg: float
    sigma_psi_deg: float
    tau2_fudge: float
    padding_factor: int
    r_min_nn: int
    reference_image: str


def _shell_columns(n: int, pixel_size_angst: float) -> dict[str, np.ndarray]:
    index = np.arange(n // 2 + 1)
    length = n * pixel_size_angst
    with np.errstate(divide="ignore"):
        angstrom = np.where(index > 0, length / np.maximum(index, 1), 999.0)
    return {
        "rlnSpectralIndex": index,
        "rlnResolution": index / length,
        "rlnAngstromResolution": angstrom,
    }


def _numpy(values: Tensor) -> np.ndarray:
    return values.detach().to("cpu", torch.float64).numpy()


def model_star_blocks(
    model: HalfSetModel,
    state: RefineState,
    options: RefineOptions,
    *,
    reference_image: str,
) -> dict[str, StarBlock]:
    """Every block of a model file (module docstring); ``reference_image``: the map as named."""
    n, pixel = model.ori_size, model.pixel_size_angst
    general = {
        "rlnReferenceDimensionality": 3,
        "rlnDataDimensionality": model.data_dimensionality,
        "rlnOriginalImageSize": n,
        "rlnCurrentResolution": 1.0 / state.current_resolution_inv_angst,
        "rlnCurrentImageSize": state.current_size,
        "rlnPaddingFactor": float(options.pad),
        "rlnIsHelix": 0,
        "rlnFourierSpaceInterpolator": 1,
        "rlnMinRadiusNnInterpolation": options.r_min_nn,
        "rlnPixelSize": float(pixel),
        "rlnNrClasses": 1,
        "rlnNrBodies": 1,
        "rlnNrGroups": len(model.group_names),
        "rlnNrOpticsGroups": model.sigma2_noise.shape[0],
        "rlnTau2FudgeFactor": float(options.tau2_fudge),
        "rlnNormCorrectionAverage": float(model.norm_correction_average),
        "rlnSigmaOffsetsAngst": math.sqrt(model.sigma2_offset_angst2),
        "rlnOrientationalPriorMode": int(state.local_searches),
        "rlnSigmaPriorRotAngle": float(state.sigma_rot_deg),
        "rlnSigmaPriorTiltAngle": float(state.sigma_tilt_deg),
        "rlnSigmaPriorPsiAngle": float(state.sigma_psi_deg),
        "rlnLogLikelihood": float(model.log_likelihood),
        "rlnAveragePmax": float(model.average_pmax),
    }
    estimated, total = overall_fourier_completeness(
        model.ssnr, model.fourier_completeness, ori_size=n, pixel_size_angst=pixel
    )
    classes = pd.DataFrame(
        {
            "rlnReferenceImage": [reference_image],
            "rlnClassDistribution": [1.0],
            "rlnAccuracyRotations": [float(model.acc_rot_deg)],
            "rlnAccuracyTranslationsAngst": [float(model.acc_trans_angst)],
            "rlnEstimatedResolution": [estimated],
            "rlnOverallFourierCompleteness": [total],
        }
    )
    spectra = _shell_columns(n, pixel) | {
        "rlnSsnrMap": _numpy(model.ssnr),
        "rlnGoldStandardFsc": _numpy(model.fsc),
        "rlnFourierCompleteness": _numpy(model.fourier_completeness),
        "rlnReferenceSigma2": _numpy(model.sigma2_reconstruction),
        "rlnReferenceTau2": _numpy(model.tau2),
    }
    if model.orientability is not None:
        spectra["rlnSpectralOrientabilityContribution"] = _numpy(model.orientability)
    groups = pd.DataFrame(
        {
            "rlnGroupNumber": np.arange(1, len(model.group_names) + 1),
            "rlnGroupName": list(model.group_names),
            "rlnGroupNrParticles": np.asarray(model.group_particle_counts, dtype=np.int64),
            "rlnGroupScaleCorrection": _numpy(model.scale_correction),
        }
    )
    blocks: dict[str, StarBlock] = {
        "model_general": general,
        "model_classes": classes,
        "model_class_1": pd.DataFrame(spectra),
        "model_groups": groups,
    }
    shells = _shell_columns(n, pixel)
    for group, noise in enumerate(_numpy(model.sigma2_noise), start=1):
        kept = noise > 0
        blocks[f"model_optics_group_{group}"] = pd.DataFrame(
            {
                "rlnSpectralIndex": shells["rlnSpectralIndex"][kept],
                "rlnResolution": shells["rlnResolution"][kept],
                "rlnSigma2Noise": noise[kept],
            }
        )
    if model.orientation_pdf is not None:
        blocks["model_pdf_orient_class_1"] = pd.DataFrame(
            {"rlnOrientationDistribution": _numpy(model.orientation_pdf)}
        )
    return blocks


def _table(
    blocks: dict[str, StarBlock], name: str, labels: tuple[str, ...], path: Path
) -> pd.DataFrame:
    table = blocks.get(name)
    if not isinstance(table, pd.DataFrame):
        raise InputError(f"{path}: no data_{name} loop block")
    missing = [label for label in labels if label not in table.columns]
    if missing:
        raise InputError(f"{path}: data_{name}: labels {', '.join(missing)} are missing")
    if len(table) == 0:
        raise InputError(f"{path}: data_{name} has no rows")
    return table


#: Whole-number labels of data_model_general and the least value each may take.
_WHOLE = {
    "rlnDataDimensionality": 2,
    "rlnOriginalImageSize": 2,
    "rlnCurrentImageSize": 1,
    "rlnPaddingFactor": 1,
    "rlnMinRadiusNnInterpolation": 0,
    "rlnNrOpticsGroups": 1,
    "rlnOrientationalPriorMode": 0,
}


def _general(blocks: dict[str, StarBlock], path: Path) -> dict[str, float]:
    """data_model_general's numbers: finite, sizes whole, pixel size and resolution positive."""
    general = blocks.get("model_general")
    if not isinstance(general, dict):
        raise InputError(f"{path}: no data_model_general list block")
    labels = (
        "rlnCurrentResolution rlnPixelSize rlnTau2FudgeFactor rlnNormCorrectionAverage "
        "rlnSigmaOffsetsAngst rlnSigmaPriorRotAngle rlnSigmaPriorTiltAngle "
        "rlnSigmaPriorPsiAngle rlnLogLikelihood rlnAveragePmax"
    ).split()
    out: dict[str, float] = {}
    for label in [*_WHOLE, *labels]:
        value = general.get(label)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InputError(f"{path}: data_model_general: {label} is {value!r}, expected a number")
        least = _WHOLE.get(label)
        wrong = not math.isfinite(value)
        if least is not None:
            wrong = wrong or value < least or value != round(value)
        elif label in ("rlnCurrentResolution", "rlnPixelSize"):
            wrong = wrong or value <= 0
        elif label == "rlnSigmaOffsetsAngst":  # squared into the offsets' variance
            wrong = wrong or not math.isfinite(value * value)
        if wrong:
            expected = (
                f"a whole number >= {least}" if least is not None else "a finite number"
            ) + (" > 0" if label in ("rlnCurrentResolution", "rlnPixelSize") else "")
            if label == "rlnSigmaOffsetsAngst":
                expected += " whose square is finite (Angstrom)"
            raise InputError(f"{path}: data_model_general: {label} is {value}, expected {expected}")
        out[label] = float(value)
    return out


def _spectrum(
    table: pd.DataFrame,
    label: str,
    size: int,
    device: torch.device | None,
    *,
    path: Path,
    block: str,
) -> Tensor:
    """A per-shell column placed by ``rlnSpectralIndex`` into ``size`` shells (0 where absent)."""
    out = np.zeros(size)
    index = int_column(table, "rlnSpectralIndex", path=path, block=block)
    inside = (index >= 0) & (index < size)
    out[index[inside]] = float_column(table, label, path=path, block=block)[inside]
    return torch.as_tensor(out, device=device)


def half_model_from_star(
    path: Path,
    *,
    half_set: int,
    reference: Float[Tensor, "n n n"] | None = None,
    device: torch.device | None = None,
) -> tuple[HalfSetModel, ModelStarGeneral]:
    """Read a model file; the map is read from ``rlnReferenceImage`` unless ``reference`` is given.

    Raises
    ------
    InputError
        A block or label is missing, or the map cannot be read or has another size.
    """
    blocks = read_star(path)
    general = _general(blocks, path)
    n = int(general["rlnOriginalImageSize"])
    size = n // 2 + 1
    classes = _table(blocks, "model_classes", ("rlnReferenceImage", "rlnAccuracyRotations"), path)
    image = str(classes["rlnReferenceImage"].iloc[0])
    if reference is None:
        volume, _ = read_mrc(resolve_path(image, path))
        reference = torch.tensor(np.array(volume), device=device)
    if tuple(reference.shape) != (n, n, n):
        raise InputError(
            f"{path}: {image} has shape {tuple(reference.shape)}, expected ({n}, {n}, {n})"
        )
    spectra_labels = (
        "rlnSpectralIndex",
        "rlnSsnrMap",
        "rlnGoldStandardFsc",
        "rlnFourierCompleteness",
    )
    spectra = _table(
        blocks, "model_class_1", (*spectra_labels, "rlnReferenceSigma2", "rlnReferenceTau2"), path
    )
    groups = _table(
        blocks,
        "model_groups",
        ("rlnGroupName", "rlnGroupNrParticles", "rlnGroupScaleCorrection"),
        path,
    )
    noise = [
        _spectrum(
            _table(blocks, f"model_optics_group_{g}", ("rlnSpectralIndex", "rlnSigma2Noise"), path),
            "rlnSigma2Noise",
            size,
            device,
            path=path,
            block=f"model_optics_group_{g}",
        )
        for g in range(1, int(general["rlnNrOpticsGroups"]) + 1)
    ]

    def shells(label: str) -> Tensor:
        return _spectrum(spectra, label, size, device, path=path, block="model_class_1")

    def column(table: pd.DataFrame, label: str, block: str) -> np.ndarray:
        return float_column(table, label, path=path, block=block)

    pdf = blocks.get("model_pdf_orient_class_1")
    orientable = "rlnSpectralOrientabilityContribution" in spectra.columns
    model = HalfSetModel(
        half_set=half_set,
        reference=reference,
        pixel_size_angst=general["rlnPixelSize"],
        data_dimensionality=int(general["rlnDataDimensionality"]),
        sigma2_noise=torch.stack(noise),
        tau2=shells("rlnReferenceTau2"),
        ssnr=shells("rlnSsnrMap"),
        fsc=shells("rlnGoldStandardFsc"),
        sigma2_reconstruction=shells("rlnReferenceSigma2"),
        fourier_completeness=shells("rlnFourierCompleteness"),
        orientability=shells("rlnSpectralOrientabilityContribution") if orientable else None,
        orientation_pdf=None
        if not isinstance(pdf, pd.DataFrame)
        else torch.tensor(
            column(pdf, "rlnOrientationDistribution", "model_pdf_orient_class_1"), device=device
        ),
        sigma2_offset_angst2=general["rlnSigmaOffsetsAngst"] ** 2,
        norm_correction_average=general["rlnNormCorrectionAverage"],
        average_pmax=general["rlnAveragePmax"],
        log_likelihood=general["rlnLogLikelihood"],
        acc_rot_deg=float(column(classes, "rlnAccuracyRotations", "model_classes")[0]),
        acc_trans_angst=float(
            float_column(
                classes,
                "rlnAccuracyTranslationsAngst",
                path=path,
                block="model_classes",
                default=999.0,
            )[0]
        ),
        scale_correction=torch.tensor(
            column(groups, "rlnGroupScaleCorrection", "model_groups"), device=device
        ),
        group_names=tuple(str(name) for name in groups["rlnGroupName"]),
        group_particle_counts=tuple(
            int(c)
            for c in int_column(groups, "rlnGroupNrParticles", path=path, block="model_groups")
        ),
    )
    run = ModelStarGeneral(
        current_resolution_inv_angst=1.0 / general["rlnCurrentResolution"],
        current_size=int(general["rlnCurrentImageSize"]),
        local_searches=general["rlnOrientationalPriorMode"] > 0,
        sigma_rot_deg=general["rlnSigmaPriorRotAngle"],
        sigma_tilt_deg=general["rlnSigmaPriorTiltAngle"],
        sigma_psi_deg=general["rlnSigmaPriorPsiAngle"],
        tau2_fudge=general["rlnTau2FudgeFactor"],
        padding_factor=int(general["rlnPaddingFactor"]),
        r_min_nn=int(general["rlnMinRadiusNnInterpolation"]),
        reference_image=image,
    )
    return model, run
