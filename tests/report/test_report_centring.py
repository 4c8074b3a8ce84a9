"""Centre of mass of a map and of its mask, and the recentring command."""

import argparse
import math
import shlex

import numpy as np
import pytest
import torch

from cryorefine.cli import star_handler
from cryorefine.report import centre_of_mass_px, map_mask_offset_px, recentre_command


def _slow_centre_of_mass(volume: np.ndarray) -> np.ndarray:
    """Float64, voxel by voxel: sum of max(v, 0) * (x, y, z) over sum of max(v, 0)."""
    nz, ny, nx = volume.shape
    total, moment = 0.0, np.zeros(3)
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                weight = max(float(volume[z, y, x]), 0.0)
                total += weight
                moment += weight * np.array([x - nx // 2, y - ny // 2, z - nz // 2], dtype=float)
    return moment / total


def _gaussian(shape, centre_xyz, sigma_px, *, dtype=torch.float64, device="cpu"):
    axes = [torch.arange(n, dtype=dtype, device=device) - n // 2 for n in shape]
    z, y, x = torch.meshgrid(*axes, indexing="ij")
    r2 = (x - centre_xyz[0]) ** 2 + (y - centre_xyz[1]) ** 2 + (z - centre_xyz[2]) ** 2
    return torch.exp(-r2 / (2 * sigma_px**2))


@pytest.mark.parametrize("shape", [(8, 10, 12), (9, 9, 9)])
def test_centre_of_mass_matches_a_float64_voxel_loop(device, shape):
    gen = torch.Generator().manual_seed(11)
    volume = torch.randn(shape, dtype=torch.float64, generator=gen) + 0.3  # negatives ignored
    got = centre_of_mass_px(volume.to(device))
    want = _slow_centre_of_mass(volume.numpy())
    assert got.device.type == device.type
    # Two sums of <= 1000 terms of magnitude <= 12 * max|v| in float64: relative error of each
    # below 1000 * 2**-53 (Higham 3.1); the result is a ratio of such sums, sizes ~ 1-10 px.
    torch.testing.assert_close(got.cpu(), torch.from_numpy(want), rtol=0.0, atol=1e-10)


def test_float32_input_gives_the_float64_result_of_its_values(device):
    gen = torch.Generator().manual_seed(12)
    volume = torch.rand(10, 10, 10, generator=gen, dtype=torch.float32)
    got = centre_of_mass_px(volume.to(device))
    assert got.dtype == torch.float64
    want = _slow_centre_of_mass(volume.double().numpy())
    # The float32 values are converted exactly; the sums are float64 (as above).
    torch.testing.assert_close(got.cpu(), torch.from_numpy(want), rtol=0.0, atol=1e-10)


def test_a_gaussian_blob_has_its_centre_as_centre_of_mass(device):
    centre = (2.3, -1.7, 0.6)
    volume = _gaussian((32, 32, 32), centre, 2.0, device=device)
    got = centre_of_mass_px(volume)
    # Sampled Gaussian: by Poisson summation the first moment of the samples is exact up to
    # ~ 4 pi sigma^2 exp(-2 pi^2 sigma^2) ~ 2e-33 (sigma = 2 px); the tails cut by the box
    # edge (>= 13 px = 6.5 sigma away) weigh < exp(-6.5^2 / 2) ~ 7e-10 of the mass.
    torch.testing.assert_close(
        got.cpu(), torch.tensor(centre, dtype=torch.float64), atol=1e-8, rtol=0
    )


def test_negative_density_does_not_move_the_centre(device):
    blob = _gaussian((24, 24, 24), (1.0, 2.0, -3.0), 1.0, device=device)
    hole = _gaussian((24, 24, 24), (-5.0, -4.0, 4.0), 1.0, device=device)
    # Clamping removes the blob's tail beyond the mid-plane, 5.5 px = 5.5 sigma away: a mass
    # fraction Q(5.5) ~ 2e-8 with a lever arm < 20 px, so the centre moves < 4e-7 px.
    got = centre_of_mass_px(blob - hole)
    torch.testing.assert_close(got, centre_of_mass_px(blob), atol=1e-6, rtol=0)


def test_a_volume_without_positive_voxels_has_no_centre(device):
    assert torch.isnan(centre_of_mass_px(-torch.ones(4, 4, 4, device=device))).all()


def test_offset_of_a_map_shifted_from_its_mask_is_the_shift_within_a_quarter_pixel(device):
    gen = torch.Generator().manual_seed(3)
    for _ in range(3):
        mask_centre = (torch.rand(3, generator=gen, dtype=torch.float64) - 0.5) * 4
        shift = (torch.rand(3, generator=gen, dtype=torch.float64) - 0.5) * 8
        n = 32
        axes = [torch.arange(n, dtype=torch.float64) - n // 2] * 3
        z, y, x = torch.meshgrid(*axes, indexing="ij")
        r = torch.sqrt(
            (x - mask_centre[0]) ** 2 + (y - mask_centre[1]) ** 2 + (z - mask_centre[2]) ** 2
        )
        # Soft spherical mask: 1 inside 9 px, raised-cosine edge to 13 px.
        mask = torch.where(
            r < 9, 1.0, torch.where(r > 13, 0.0, 0.5 + 0.5 * torch.cos(math.pi * (r - 9) / 4))
        )
        volume = _gaussian((n, n, n), (mask_centre + shift).tolist(), 2.5)
        got = map_mask_offset_px(volume.to(device).float(), mask.to(device).float())
        # Done criterion: within 0.25 px. The float64 reference is both centres computed
        # voxel by voxel; our float32 inputs round each voxel by 2**-24 relative.
        want = _slow_centre_of_mass(volume.numpy()) - _slow_centre_of_mass(mask.numpy())
        torch.testing.assert_close(got.cpu(), torch.from_numpy(want), atol=1e-5, rtol=0)
        assert (got.cpu() - shift).abs().max() < 0.25


def test_map_and_mask_of_different_boxes_are_refused():
    # ValueError in production; under the tests jaxtyping's TypeCheckError (a TypeError) comes
    # first, from the shared "z y x" of the signature.
    with pytest.raises((ValueError, TypeError)):
        map_mask_offset_px(torch.ones(4, 4, 4), torch.ones(4, 4, 5))


def test_recentre_command_parses_as_star_handler_with_the_offset_and_quoted_paths():
    command = recentre_command(
        "Refine 3D/run_data.star", (1.23456, -0.5, 2.0), output="Refine 3D/centred.star"
    )
    words = shlex.split(command)
    assert words[:2] == ["cryorefine", "star-handler"]
    parser = argparse.ArgumentParser()
    star_handler.add_arguments(parser)
    args = parser.parse_args(words[2:])
    assert args.center
    assert args.i == "Refine 3D/run_data.star"
    assert str(args.o) == "Refine 3D/centred.star"
    # Written with 3 decimals: within 0.0005 px of the offset.
    assert abs(args.center_X - 1.23456) <= 5e-4
    assert (args.center_Y, args.center_Z) == (-0.5, 2.0)
