"""A batch's results reach the host after the next batch is queued, as if read at once.

``send`` queues a batch's new poses and statistics (pinned copies on a GPU);
``receive`` waits for them and adds them to the half set's outputs and sums. A
particle left out of the E-step (not finite) keeps the table's pose and norm.
"""

import numpy as np
import pytest
import torch

from cryorefine.likelihood import fourier_window
from cryorefine.likelihood.plan import BackprojectionSums, ExpectationResult
from cryorefine.likelihood.sums import ShellSums
from cryorefine.refine.batch_results import receive, send
from cryorefine.refine.half_sums import HalfSetSums

PIXEL_ANGST = 2.5


def _result(b: int, device: torch.device, seed: int) -> ExpectationResult:
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=gen, dtype=torch.float64).to(device)

    eye = torch.eye(3, dtype=torch.float64, device=device).expand(b, 3, 3)
    return ExpectationResult(
        rotations=eye, angles_deg=rand(b, 3) * 360, origins_px=rand(b, 2) * 4 - 2, pmax=rand(b),
        significant_samples=torch.arange(1, b + 1, device=device), log_likelihood=rand(b) * -1e4,
        weight_sums=rand(b), shell_sums=ShellSums(rand(b, 3), rand(b, 3), rand(b, 3)),
        multiplicity_sums=None, offset_moments_px2=rand(b), direction_mass=rand(3),
        backprojection=BackprojectionSums(
            rotations=eye[:0], data=torch.zeros(0, 1, dtype=torch.complex64, device=device),
            weight=torch.zeros(0, 1, device=device),
            window=fourier_window(8, 2, device=device),
        ),
    )  # fmt: skip


def _empty_sums() -> HalfSetSums:
    def zeros(*shape: int) -> torch.Tensor:
        return torch.zeros(*shape, dtype=torch.float64)

    return HalfSetSums(
        data=zeros(1), weight=zeros(1), noise=zeros(1, 3), multiplicity=None,
        weight_per_group=zeros(1), offset_moments_angst2=0.0, direction_mass=zeros(3),
        pmax_sum=0.0, count=0, scale_sums=zeros(2, 1, 3),
    )  # fmt: skip


def _devices() -> list[torch.device]:
    return [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", _devices(), ids=str)
def test_received_batches_add_the_poses_and_sums_of_their_scored_particles_in_order(device):
    # two batches queued before the first is received, as run_half_set does; in the
    # second, the particle at row 6 was left out (a NaN in its image)
    rows = [np.array([3, 0, 5]), np.array([6, 1, 4, 2])]
    finite = [np.ones(3, dtype=bool), np.array([False, True, True, True])]
    table_angles = np.arange(21.0).reshape(7, 3)
    table_origins = np.arange(21.0).reshape(7, 3) / 10
    table_norms = np.linspace(0.5, 1.1, 7)
    results = [_result(int(f.sum()), device, seed) for seed, f in enumerate(finite)]
    new_norms = [r.pmax * 2 for r in results]
    queued = [
        send(r, n, rows_, f, table_norms[rows_])
        for r, n, rows_, f in zip(results, new_norms, rows, finite, strict=True)
    ]
    sums = _empty_sums()
    outputs: dict[str, list[np.ndarray]] = {
        key: [] for key in ("angles", "origins", "pmax", "nsig", "ll", "left_out", "norm")
    }
    for batch in queued:
        receive(batch, sums, outputs, angles_deg=table_angles[batch.all_rows],
                origins_angst=table_origins[batch.all_rows], ndim=2,
                pixel_size_angst=PIXEL_ANGST)  # fmt: skip
    angles = np.concatenate(outputs["angles"])
    origins = np.concatenate(outputs["origins"])
    scored = np.concatenate(finite)
    want_angles = torch.cat([r.angles_deg for r in results]).cpu().numpy()
    want_origins = torch.cat([r.origins_px for r in results]).cpu().numpy() * PIXEL_ANGST
    np.testing.assert_array_equal(angles[scored], want_angles)
    np.testing.assert_array_equal(origins[scored, :2], want_origins)
    assert (origins[scored, 2] == 0).all()  # 2D data: no z origin
    # the left-out particle keeps the table's pose and norm, and pmax 0
    np.testing.assert_array_equal(angles[~scored], table_angles[[6]])
    np.testing.assert_array_equal(origins[~scored], table_origins[[6]])
    pmax = np.concatenate(outputs["pmax"])
    assert pmax[~scored].tolist() == [0.0]
    np.testing.assert_array_equal(
        np.concatenate(outputs["nsig"])[scored], np.array([1, 2, 3, 1, 2, 3])
    )
    norms = np.concatenate(outputs["norm"])
    np.testing.assert_array_equal(norms[scored], torch.cat(new_norms).cpu().numpy())
    assert norms[~scored].tolist() == [table_norms[6]]
    assert np.concatenate(outputs["left_out"]).tolist() == [6]
    # the sums as float64 on the host, batch after batch
    want_moments = sum(float(r.offset_moments_px2.sum()) * PIXEL_ANGST**2 for r in results)
    assert sums.offset_moments_angst2 == want_moments
    assert sums.pmax_sum == sum(float(r.pmax.sum()) for r in results)
    assert sums.norm_sum == float(norms[:3][finite[0]].sum()) + float(norms[3:][finite[1]].sum())


def test_a_batch_without_a_scored_particle_keeps_every_pose():
    rows, finite = np.array([2, 0]), np.zeros(2, dtype=bool)
    angles, origins = np.ones((2, 3)), np.full((2, 3), 0.5)
    sums = _empty_sums()
    outputs: dict[str, list[np.ndarray]] = {
        key: [] for key in ("angles", "origins", "pmax", "nsig", "ll", "left_out", "norm")
    }
    batch = send(None, None, rows, finite, np.array([0.9, 1.0]))
    receive(batch, sums, outputs, angles_deg=angles, origins_angst=origins, ndim=3,
            pixel_size_angst=PIXEL_ANGST)  # fmt: skip
    np.testing.assert_array_equal(outputs["angles"][0], angles)
    np.testing.assert_array_equal(outputs["origins"][0], origins)
    assert outputs["norm"][0].tolist() == [0.9, 1.0]
    assert outputs["left_out"][0].tolist() == [2, 0]
    assert (sums.offset_moments_angst2, sums.pmax_sum, sums.norm_sum) == (0.0, 0.0, 0.0)
