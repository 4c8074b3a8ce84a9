"""Small tilt-series scenes for the extraction tests: a map, a tomogram and particles in it.

``grid_scene`` builds tilts whose slices lie on grid planes (tilts of 0 and +-90 degrees,
in-plane turns of 0 and 90 degrees), where RELION-4's pseudo-subtomogram model is exact:
every voxel a slice reaches lies on it, and the slice's 2D frequency of it is an integer.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cryorefine.fourier.projector import prepare_reference
from cryorefine.geometry import euler_to_matrix
from cryorefine.io import TiltSeries
from cryorefine.simulate import MICROSCOPE
from cryorefine.simulate.tilt_series_tables import (
    tilt_series_global_row,
    tilt_series_table,
    tilt_series_tomogram,
)
from cryorefine.tomo import TiltSeriesGeometry, relion5_projection_matrices, tilt_series_geometry

F64 = torch.float64

#: (x tilt, y tilt, z rotation) in degrees: slices on the planes z = 0 and x = 0.
GRID_TILTS = np.array(
    [[0.0, 0.0, 0.0], [0.0, 90.0, 0.0], [0.0, -90.0, 0.0], [0.0, 0.0, 90.0], [0.0, 90.0, 90.0]]
)


@dataclass(frozen=True)
class Scene:
    """A tomogram (``series``, ``geometry``), a map's Fourier reference and particle poses."""

    series: TiltSeries
    geometry: TiltSeriesGeometry
    reference_ft: torch.Tensor
    rotations: torch.Tensor
    pixel_size_angst: float
    box_size: int


def blob_map(n: int, generator: torch.Generator) -> torch.Tensor:
    """Random density inside a Gaussian envelope (sigma n / 8) about the box centre, float64."""
    axis = torch.arange(n, dtype=F64) - n // 2
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    envelope = torch.exp(-(x * x + y * y + z * z) / (2 * (n / 8) ** 2))
    return torch.rand(n, n, n, generator=generator, dtype=F64) * envelope


def tomogram(
    angles_deg: np.ndarray,
    *,
    pixel: float,
    size: tuple[int, int, int],
    defocus_angst: float,
    folder: Path,
    name: str = "TS_01",
) -> TiltSeries:
    """A RELION-5 tilt series of the given (x tilt, y tilt, z rotation) angles, 2 e/A^2 a tilt."""
    x_tilt, y_tilt, z_rot = (torch.as_tensor(angles_deg[:, i], dtype=F64) for i in range(3))
    zeros = torch.zeros_like(x_tilt)
    projections = relion5_projection_matrices(
        x_tilt, y_tilt, z_rot, zeros, zeros,
        pixel_size_angst=pixel, tomogram_size_px=size, image_size_px=size[:2],
    )  # fmt: skip
    count = len(angles_deg)
    row = tilt_series_global_row(
        name, microscope=MICROSCOPE, pixel_size_angst=pixel, tomogram_size_px=size,
        frame_count=count, dose_per_tilt_e_per_angst2=2.0,
    )  # fmt: skip
    table = tilt_series_table(
        name, tilt_deg=angles_deg[:, 1], x_tilt_deg=angles_deg[:, 0], z_rot_deg=angles_deg[:, 2],
        pre_exposure_e_per_angst2=2.0 * np.arange(count), defocus_angst=defocus_angst,
        projections=projections.numpy(),
    )  # fmt: skip
    return tilt_series_tomogram(row, table, folder)


def grid_scene(n: int, seed: int, folder: Path, *, pixel: float = 4.0) -> Scene:
    """Grid-plane tilts (module docstring), two random poses, a tomogram of 6 n per side."""
    generator = torch.Generator().manual_seed(seed)
    size = (6 * n, 6 * n, 6 * n)
    series = tomogram(GRID_TILTS, pixel=pixel, size=size, defocus_angst=8000.0, folder=folder)
    geometry = tilt_series_geometry(series, device="cpu", image_size_px=size[:2])
    reference_ft = prepare_reference(
        blob_map(n, generator), padding_factor=2, gridding_correction="separable"
    )
    angles = torch.rand(2, 3, generator=generator, dtype=F64) * torch.tensor([360.0, 180, 360])
    return Scene(series, geometry, reference_ft, euler_to_matrix(angles), pixel, n)
