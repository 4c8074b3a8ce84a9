"""likelihood.scores: squared differences and cross-correlation as matrix products."""

import math

import pytest
import torch
from likelihood_cases import U32, U64, blob_map, gamma, reference_of, score_magnitudes

from cryorefine.fourier import extract_slices, fourier_crop
from cryorefine.geometry import axis_angle_to_matrix, euler_to_matrix
from cryorefine.likelihood import (
    cross_correlation_per_particle,
    cross_correlation_scores,
    fourier_window,
    gather_window,
    squared_differences,
    squared_differences_per_particle,
    window_phases,
)
from cryorefine.likelihood.scores import per_particle_cross, resolve_precision, squared_magnitude


def _random_terms(gen, b=3, t=4, r=5, k=37):
    data = torch.randn(b, k, dtype=torch.complex128, generator=gen)
    ctf = torch.randn(b, k, dtype=torch.float64, generator=gen)
    weight = torch.rand(b, k, dtype=torch.float64, generator=gen)
    projections = torch.randn(r, k, dtype=torch.complex128, generator=gen)
    phases = torch.exp(2j * math.pi * torch.rand(t, k, dtype=torch.float64, generator=gen))
    return data, ctf, weight, projections, phases


def _slow_diff2(data, ctf, weight, projections, phases):
    """sum_k w |K P - X S|^2 with one explicit loop over (b, t, r), float64."""
    b, t, r = data.shape[0], phases.shape[0], projections.shape[0]
    out = torch.empty(b, t, r, dtype=torch.float64)
    for i in range(b):
        for j in range(t):
            for m in range(r):
                diff = ctf[i] * projections[m] - data[i] * phases[j]
                out[i, j, m] = (weight[i] * diff.abs() ** 2).sum()
    return out


def _bound(k: int, u: float, magnitudes):
    # Each term of the three sums is formed from ~8 rounded inputs and products, then summed
    # over k (2k for the real pairs of the cross term) and the three sums combined:
    # |error| <= gamma_(2k + 10) * M (Higham, Accuracy and Stability, sec. 3.1).
    return gamma(2 * k + 10, u) * magnitudes


@pytest.mark.parametrize(("precision", "u"), [("float64", U64), ("float32", U32)])
def test_squared_differences_equal_the_slow_loop(device, precision, u):
    gen = torch.Generator().manual_seed(0)
    terms = _random_terms(gen)
    got = squared_differences(*(x.to(device) for x in terms), precision=precision)
    want = _slow_diff2(*terms)
    error = (got.cpu().double() - want).abs()
    bound = _bound(37, u, score_magnitudes(*terms[:4]))[:, None, :]
    assert (error <= bound + gamma(37, U64) * want).all()
    assert got.dtype == (torch.float64 if precision == "float64" else torch.float32)


def test_per_particle_lists_give_the_shared_scores_where_the_lists_agree(device):
    gen = torch.Generator().manual_seed(1)
    data, ctf, weight, projections, phases = (x.to(device) for x in _random_terms(gen))
    b = data.shape[0]
    order = torch.stack([torch.randperm(5, generator=gen) for _ in range(b)]).to(device)
    shared = squared_differences(data, ctf, weight, projections, phases, precision="float64")
    mine = squared_differences_per_particle(
        data, ctf, weight, projections[order], phases.expand(b, -1, -1), precision="float64"
    )
    want = shared.gather(2, order[:, None, :].expand(-1, phases.shape[0], -1))
    bound = _bound(37, U64, score_magnitudes(*(x.cpu() for x in (data, ctf, weight, projections))))
    # the same products, batched differently: each side within the bound of the exact value
    assert ((mine - want).abs().cpu() <= 2 * bound.gather(1, order.cpu())[:, None, :]).all()


def test_a_particle_made_from_a_projection_scores_zero_at_its_pose_and_translation():
    gen = torch.Generator().manual_seed(2)
    window = fourier_window(16, 2, device=torch.device("cpu"))
    projections = torch.randn(6, window.count, dtype=torch.complex128, generator=gen)
    shifts = torch.tensor([[0.0, 0.0], [1.5, -2.0], [-3.0, 0.25]], dtype=torch.float64)
    phases = window_phases(window, shifts, box_size=16, dtype=torch.complex128)
    ctf = torch.randn(2, window.count, dtype=torch.float64, generator=gen)
    # particle 0: K P_4 moved by -t_1; particle 1: K P_2 moved by -t_2 (conj(S) moves by -t)
    data = torch.stack(
        [ctf[0] * projections[4] * phases[1].conj(), ctf[1] * projections[2] * phases[2].conj()]
    )
    diff2 = squared_differences(
        data, ctf, torch.ones_like(ctf), projections, phases, precision="float64"
    )
    flat = diff2.reshape(2, -1).argmin(dim=1)
    assert flat.tolist() == [1 * 6 + 4, 2 * 6 + 2]
    # exact cancellation up to the float64 rounding bound of the three sums
    bound = _bound(
        window.count, U64, score_magnitudes(data, ctf, torch.ones_like(ctf), projections)
    )
    assert diff2[0, 1, 4].abs() <= bound[0, 4]
    assert diff2[1, 2, 2].abs() <= bound[1, 2]


def _slow_cc(data, ctf, projections, phases):
    b, t, r = data.shape[0], phases.shape[0], projections.shape[0]
    out = torch.empty(b, t, r, dtype=torch.float64)
    for i in range(b):
        for j in range(t):
            for m in range(r):
                ref, img = ctf[i] * projections[m], data[i] * phases[j]
                num = (ref * img.conj()).real.sum()
                out[i, j, m] = -num / math.sqrt((ref.abs() ** 2).sum() * (img.abs() ** 2).sum())
    return out


@pytest.mark.parametrize(("precision", "u"), [("float64", U64), ("float32", U32)])
def test_cross_correlation_equals_the_slow_loop(device, precision, u):
    gen = torch.Generator().manual_seed(3)
    data, ctf, _, projections, phases = _random_terms(gen)
    got = cross_correlation_scores(
        *(x.to(device) for x in (data, ctf, projections, phases)), precision=precision
    )
    want = _slow_cc(data, ctf, projections, phases)
    # |cc| <= 1 (Cauchy-Schwarz); numerator error <= gamma_(2k+10) times the product of the
    # norms, each norm's relative error <= gamma_(k+4): in all <= 2 gamma_(2k+10).
    torch.testing.assert_close(got.cpu().double(), want, rtol=0, atol=2 * gamma(2 * 37 + 10, u))
    per_particle = cross_correlation_per_particle(
        data, ctf, projections.expand(3, -1, -1), phases.expand(3, -1, -1), precision="float64"
    )
    torch.testing.assert_close(per_particle, want, rtol=0, atol=2 * gamma(2 * 37 + 10, U64))


def test_cross_correlation_is_minus_one_for_a_scaled_copy():
    gen = torch.Generator().manual_seed(4)
    _, ctf, _, projections, phases = _random_terms(gen, b=1, t=1, r=2)
    image = 3.5 * ctf[0] * projections[1] * phases[0].conj()
    cc = cross_correlation_scores(image[None], ctf, projections, phases, precision="float64")
    assert abs(cc[0, 0, 1].item() + 1.0) < 1e-12
    assert cc[0, 0, 0].item() > -1.0 + 1e-3


def test_tf32_precision_is_restored_after_the_call():
    gen = torch.Generator().manual_seed(5)
    terms = _random_terms(gen)
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        squared_differences(
            *(x.to(torch.complex64) if x.is_complex() else x.float() for x in terms),
            precision="tf32",
        )
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(previous)


def test_an_unknown_precision_is_refused():
    gen = torch.Generator().manual_seed(6)
    with pytest.raises(ValueError, match="precision must be one of"):
        squared_differences(*_random_terms(gen), precision="bf16")


def test_float32_scores_of_neighbouring_poses_stay_within_the_dot_product_bound():
    """Realistic case: 0.25 degree apart orientations, 0.25 px apart translations, SNR ~ 0.1.

    Float32 may only change the best pose of a particle whose float64 gap between the best
    pose and the float32 choice is within the two poses' error bounds.
    """
    gen = torch.Generator().manual_seed(7)
    n, m, b = 32, 24, 12
    reference = reference_of(blob_map(n, gen), dtype=torch.float64)
    truth = euler_to_matrix(torch.rand(b, 3, generator=gen, dtype=torch.float64) * 180)
    axes = torch.nn.functional.normalize(
        torch.randn(27, 3, generator=gen, dtype=torch.float64), dim=1
    )
    small = axis_angle_to_matrix(axes, torch.linspace(0.0, 0.5, 27, dtype=torch.float64))
    window = fourier_window(m, 2, device=torch.device("cpu"))
    images = gather_window(
        fourier_crop(extract_slices(reference, truth, out_size=n), m, ndim=2), window
    )
    signal = (images.abs() ** 2).mean()
    sigma2 = signal / 0.1 / 2  # SNR 0.1 per coefficient
    noise = torch.complex(
        torch.randn(images.shape, generator=gen, dtype=torch.float64),
        torch.randn(images.shape, generator=gen, dtype=torch.float64),
    )
    data = images + noise * sigma2.sqrt()
    ctf = torch.ones(b, window.count, dtype=torch.float64)
    weight = torch.full_like(ctf, 0.5 / sigma2.item())
    shifts = torch.cartesian_prod(*[torch.linspace(-0.25, 0.25, 3, dtype=torch.float64)] * 2)
    phases = window_phases(window, shifts, box_size=n, dtype=torch.complex128)
    scores = {}
    for precision in ("float32", "float64"):
        diffs = []
        for i in range(b):  # each particle's own 27 orientations around its truth
            rotations = truth[i] @ small
            p = gather_window(
                fourier_crop(extract_slices(reference, rotations, out_size=n), m, ndim=2), window
            )
            diffs.append(
                squared_differences(
                    data[i : i + 1],
                    ctf[i : i + 1],
                    weight[i : i + 1],
                    p,
                    phases,
                    precision=precision,
                )[0]
            )
        scores[precision] = torch.stack(diffs).double()
    magnitude = torch.stack(
        [
            score_magnitudes(
                data[i : i + 1],
                ctf[i : i + 1],
                weight[i : i + 1],
                gather_window(
                    fourier_crop(
                        extract_slices(reference, truth[i] @ small, out_size=n), m, ndim=2
                    ),
                    window,
                ),
            )[0]
            for i in range(b)
        ]
    )[:, None, :].expand(-1, shifts.shape[0], -1)
    bound = _bound(window.count, U32, magnitude) + _bound(window.count, U64, magnitude)
    error = (scores["float32"] - scores["float64"]).abs()
    assert (error <= bound).all()
    best32 = scores["float32"].reshape(b, -1).argmin(dim=1)
    best64 = scores["float64"].reshape(b, -1).argmin(dim=1)
    flat64, flat_bound = scores["float64"].reshape(b, -1), bound.reshape(b, -1)
    rows = torch.arange(b)
    gap = flat64[rows, best32] - flat64[rows, best64]
    assert (gap <= flat_bound[rows, best32] + flat_bound[rows, best64]).all()
    # The neighbours really are nearly equal: score spread per particle of order 1 against
    # totals of order k, so the check above is not vacuous.
    assert (flat64.amax(1) - flat64.amin(1)).median() < 0.05 * flat64.amin(1).median()


@pytest.mark.parametrize("n", [64, 70, 10])  # whole blocks, a remainder, less than one block
def test_per_particle_cross_in_blocks_is_each_particles_own_product(n):
    gen = torch.Generator().manual_seed(11)
    shifted = torch.randn(3, 4, n, generator=gen)
    projections = torch.randn(3, 5, n, generator=gen)
    got = per_particle_cross(shifted, projections, block=16)
    want = torch.einsum("btn,brn->btr", shifted.double(), projections.double())
    # float32 sums of n products: within gamma_n sum |z p| of the exact value
    magnitude = torch.einsum("btn,brn->btr", shifted.double().abs(), projections.double().abs())
    assert ((got.double() - want).abs() <= gamma(n, U32) * magnitude).all()


def test_precision_auto_is_tf32_on_a_gpu_and_float32_on_the_cpu():
    # the measured choice (docs/performance.md): tf32 on the GPU kept the tutorial job's
    # figures against the truth; the CPU has no tf32
    assert resolve_precision("auto", torch.device("cuda")) == "tf32"
    assert resolve_precision("auto", torch.device("cpu")) == "float32"
    for given in ("float32", "float64", "tf32"):  # a precision asked for is kept
        assert resolve_precision(given, torch.device("cuda")) == given


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_squared_magnitude_is_the_modulus_squared_within_its_rounding_bound(device, dtype):
    # fresh values over 30 decades (within range of the square), zeros, a strided view
    generator = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    magnitude = 10.0 ** (torch.rand(4096, generator=generator, dtype=torch.float64) * 30 - 15)
    angle = torch.rand(4096, generator=generator, dtype=torch.float64) * 2 * math.pi
    exact = torch.polar(magnitude, angle)
    exact[:7] = 0
    z = exact.to(dtype).to(device).reshape(64, 64)[:, ::2]  # a strided view, as rows of a table
    got = squared_magnitude(z)
    assert got.dtype == z.real.dtype
    assert got.shape == z.shape
    stored = z.to(torch.complex128).cpu()  # |z|^2 of the values as stored
    want = stored.real.square() + stored.imag.square()
    # hypot within 3 ulp (CUDA's bound; 1 on the CPU), an ulp at most eps of the value,
    # doubled by the square, plus the square's own rounding (eps / 2): 6.5 eps, relative
    eps = torch.finfo(got.dtype).eps
    assert torch.all((got.cpu().double() - want).abs() <= 6.5 * eps * want)
    assert torch.equal(z, exact.to(dtype).to(device).reshape(64, 64)[:, ::2])  # z untouched
