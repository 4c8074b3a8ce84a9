"""likelihood.window: which coefficients are in play, gathering, phases, shell sums."""

import itertools
import math

import pytest
import torch
from likelihood_cases import U64

from cryorefine.fourier import fourier_crop, phase_shift_grid, rfft_shape
from cryorefine.likelihood import (
    fourier_window,
    gather_window,
    scatter_window,
    shell_matrix,
    window_phases,
)


def _slow_window(size, ndim, include_dc, include_redundant):
    """(flat index, shell) by looping over the half-complex grid in FFTW order."""
    shape = rfft_shape(size, ndim)
    kept = []
    for flat, index in enumerate(itertools.product(*[range(s) for s in shape])):
        k = [i if i <= size // 2 else i - size for i in index[:-1]] + [index[-1]]  # (.., y, x)
        kx, ky = k[-1], k[-2]
        shell = round(math.sqrt(sum(v * v for v in k)))
        if shell > size // 2 or (shell == 0 and not include_dc):
            continue
        if kx == 0 and ky < 0 and not include_redundant:
            continue
        kept.append((flat, shell))
    return kept


@pytest.mark.parametrize(("size", "ndim"), [(8, 2), (10, 2), (6, 3)])
@pytest.mark.parametrize("include_dc", [False, True])
@pytest.mark.parametrize("include_redundant", [False, True])
def test_window_keeps_shells_up_to_half_size_as_relion(size, ndim, include_dc, include_redundant):
    window = fourier_window(
        size,
        ndim,
        device=torch.device("cpu"),
        include_dc=include_dc,
        include_redundant=include_redundant,
    )
    want = _slow_window(size, ndim, include_dc, include_redundant)
    assert window.flat_index.tolist() == [f for f, _ in want]
    assert window.shell.tolist() == [s for _, s in want]
    assert window.count == len(want)


def test_gather_then_scatter_restores_the_window_and_zeros_the_rest(device):
    gen = torch.Generator().manual_seed(0)
    window = fourier_window(12, 2, device=device)
    grid = torch.randn(3, 12, 7, dtype=torch.complex64, generator=gen).to(device)
    values = gather_window(grid, window)
    back = scatter_window(values, window)
    inside = torch.zeros(12 * 7, dtype=torch.bool, device=device)
    inside[window.flat_index] = True
    inside = inside.reshape(12, 7)
    torch.testing.assert_close(back, torch.where(inside, grid, 0), rtol=0, atol=0)
    assert back.device == grid.device


def test_gather_rejects_a_grid_of_another_size():
    window = fourier_window(8, 2, device=torch.device("cpu"))
    with pytest.raises(ValueError, match="expected a grid"):
        gather_window(torch.zeros(2, 10, 6), window)


def test_window_phases_equal_the_cropped_phase_grid_of_the_full_box(device):
    gen = torch.Generator().manual_seed(1)
    ori, size = 20, 12
    shifts = (torch.rand(5, 2, generator=gen, dtype=torch.float64) - 0.5) * 8
    window = fourier_window(size, 2, device=device)
    got = window_phases(window, shifts.to(device), box_size=ori, dtype=torch.complex128)
    want = gather_window(fourier_crop(phase_shift_grid(shifts, ori), size, ndim=2), window)
    # Both evaluate exp(-2 pi i k.s / n) in float64; arguments up to 2 pi * 10 * 8 / 20 ~ 25:
    # angle error ~ 25 u, so the factors agree to ~ 30 u.
    torch.testing.assert_close(got.cpu(), want, rtol=0, atol=30 * 25 * U64)


def test_window_phases_of_a_volume_shift_follow_xyz_order():
    window = fourier_window(8, 3, device=torch.device("cpu"))
    shift = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    got = window_phases(window, shift, box_size=8, dtype=torch.complex128)[0]
    kx = window.frequencies[:, 0].to(torch.float64)
    torch.testing.assert_close(got, torch.exp(-2j * math.pi * kx / 8), rtol=0, atol=1e-14)


def test_shell_matrix_sums_each_shell():
    gen = torch.Generator().manual_seed(2)
    window = fourier_window(10, 2, device=torch.device("cpu"), include_dc=True)
    values = torch.rand(4, window.count, generator=gen, dtype=torch.float64)
    got = values @ shell_matrix(window, 8)
    want = torch.zeros(4, 8, dtype=torch.float64)
    for j, shell in enumerate(window.shell.tolist()):
        want[:, shell] += values[:, j]
    # k-term sums of values in [0, 1]: error <= k u * sum
    torch.testing.assert_close(got, want, rtol=window.count * U64, atol=0)


def test_a_window_is_built_once_per_arguments_and_shared():
    """Every batch asks for the same few windows; building one waits for a GPU (``nonzero``)."""
    cpu = torch.device("cpu")
    first = fourier_window(12, 3, device=cpu, include_dc=True)
    assert fourier_window(12, 3, device=torch.device("cpu"), include_dc=True) is first
    other = fourier_window(12, 3, device=cpu)
    assert other is not first
    assert other.count == first.count - 1  # the same window without the DC term
