"""likelihood.fine: a fine group's projector holds the squares of its rows with them; a group
reads the device once."""

import torch
from host_reads import host_reads
from likelihood_cases import (
    blob_map,
    make_plan,
    particle_images,
    particle_terms,
    reference_of,
    whole_grid,
)

from cryorefine.geometry import euler_to_matrix
from cryorefine.likelihood import fine, prepare
from cryorefine.likelihood.fine_groups import fine_groups
from cryorefine.likelihood.passes import ParticleWindowData
from cryorefine.likelihood.search import Prepared, coarse_pass
from cryorefine.likelihood.window import fourier_window


def _prepared(b: int, window) -> Prepared:
    """A chunk's window terms, zero: ``fine._projector`` reads only the fine window."""
    data = torch.zeros(b, window.count, dtype=torch.complex64)
    real = torch.zeros(b, window.count)
    phases = torch.zeros(b, 1, window.count, dtype=torch.complex64)
    terms = ParticleWindowData(data, real, real, phases)
    return Prepared(terms, window, data, real, real, window, data, real, window, torch.zeros(b))


def test_a_group_holds_its_rows_squares_whenever_it_holds_their_projections():
    # The fine sums' and scores' kernels read |P|^2 of the group's held rows. The
    # projections are held within a quarter of the budget and their float32 squares (half
    # their bytes) within an eighth beside them: held together, even where both would not
    # fit the quarter (the real final iteration's groups: 4.0 GB of projections, 16 GiB).
    gen = torch.Generator().manual_seed(7)
    n = 12
    reference = reference_of(blob_map(n, gen))
    window = fourier_window(n, 3, device=torch.device("cpu"), include_dc=True)
    prep = _prepared(2, window)
    ids = torch.tensor([[0, 3, 5], [3, 7, 0]])
    valid = torch.tensor([[True, True, True], [True, True, False]])
    rows = 4 * 8  # four distinct coarse orientations, eight children each
    table_bytes = rows * window.count * 8  # complex64
    # a quarter of the budget just holds the projections, or just does not
    for max_bytes, held in ((4 * table_bytes, True), (4 * table_bytes - 4, False)):
        plan = make_plan(
            whole_grid(0), ndim=3, ori_size=n, current_size=n, coarse_size=n, max_bytes=max_bytes
        )
        projector, block_rows, _ = fine._projector(ids, valid, prep, reference, plan, None)
        assert projector.projector.rows == rows
        # each pair's block: its coarse orientation's place among the group's (0, 3, 5, 7)
        assert block_rows.tolist() == [[0, 1, 2], [1, 3, 0]]
        assert (projector.projector.values is not None) is held
        assert (projector.projector.powers is not None) is held
        if held:  # the squares of the held projections, within 2u + u^2 (float32)
            exact = torch.view_as_real(projector.projector.values).double().square().sum(-1)
            eps = torch.finfo(torch.float32).eps / 2
            error = (projector.projector.powers.double() - exact).abs()
            assert (error <= (2 * eps + eps * eps) * exact).all()


def test_a_fine_group_reads_the_device_once_where_the_host_knows_its_sizes():
    # Each read of a device value by the host waits, on a GPU, for the queue to drain, and
    # the device then idles while the host queues the next operators. A fine group whose
    # sizes the host already knows (fine_groups) reads what it needs of the pairs that
    # carry weight in one transfer; on the CPU's route the sums' chunk widths are a second.
    # (The boolean indices of distinct_translations and the carried pairs' own read, before
    # sum_pairs' two, made a group of the tutorial's job wait about nine times.)
    gen = torch.Generator().manual_seed(3)
    n = 12
    reference = reference_of(blob_map(n, gen))
    plan = make_plan(whole_grid(0, perturbation=0.3), ndim=3, ori_size=n, current_size=n,
                     coarse_size=n - 4, adaptive_fraction=0.999)  # fmt: skip
    rotations = euler_to_matrix(torch.tensor([[10.0, 40.0, 70.0], [200.0, 100.0, 30.0]]))
    shifts = torch.tensor([[0.5, 0.0, -0.5], [0.0, 0.5, 0.5]])
    images = particle_images(reference, rotations.double(), shifts, ori_size=n, ndim=3)
    sigma2 = (images.abs() ** 2).mean().item()  # a broad posterior: several pairs each
    particles = particle_terms(images, current_size=n, sigma2=sigma2, ndim=3,
                               grid_count=plan.orientations.count)  # fmt: skip
    prep = prepare(particles, plan)
    coarse = coarse_pass(prep, particles, reference, plan)
    window_values = prep.fine_window.count + prep.bp_window.count
    (sizes,) = fine_groups(coarse, plan, window_values, prep.fine_window.count)
    assert sizes.pair_width > 1
    with host_reads() as reads:
        outcome = fine.fine_pass(prep, particles, coarse, reference, plan, None, None, sizes)
    assert reads == ["tolist", "tolist"]
    # and the same outcome as a group that asks the device for its sizes
    asked = fine.fine_pass(prep, particles, coarse, reference, plan)
    torch.testing.assert_close(outcome.rotations, asked.rotations, rtol=0, atol=0)
    torch.testing.assert_close(outcome.bp_data, asked.bp_data, rtol=0, atol=0)
