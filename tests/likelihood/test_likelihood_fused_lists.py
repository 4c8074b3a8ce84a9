"""likelihood.fused_lists: each particle's list scored straight from the reference.

Without a GPU the kernel runs in Triton's interpreter (``tests/conftest.py``).
Held to the float64 scores of the same lists' float64 projections.
"""

import pytest
import torch
from likelihood_cases import gamma

from cryorefine.fourier import sample_rotated, trilinear_kernels
from cryorefine.fourier.texture import reference_texture
from cryorefine.geometry import euler_to_matrix
from cryorefine.likelihood import fused_lists
from cryorefine.likelihood.passes import ParticleWindowData, score_held_lists
from cryorefine.likelihood.scores import squared_differences_per_particle

U32 = 2.0**-24  # float32 unit roundoff
FRACTION = 2.0**-8  # the texture units' interpolation fraction step (fourier.texture)

pytestmark = pytest.mark.skipif(trilinear_kernels.triton is None, reason="needs Triton")


def _kernel_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _case(seed: int, *, n: int, ndim: int, s: int, t: int, rows: int, slots: int):
    gen = torch.Generator().manual_seed(seed)
    pad = 2
    p = n * pad
    reference = torch.randn((p, p, p // 2 + 1), dtype=torch.complex64, generator=gen)
    rotations = euler_to_matrix(torch.rand((rows, 3), generator=gen, dtype=torch.float64) * 360)
    half = n // 2
    axes = [torch.arange(0, half + 1), torch.arange(-half, half)]
    axes.append(torch.arange(-half, half) if ndim == 3 else torch.zeros(1, dtype=torch.int64))
    frequencies = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)
    k = frequencies.shape[0]
    data = torch.randn((s, k), dtype=torch.complex64, generator=gen)
    ctf = torch.randn((s, k), generator=gen)
    weight = torch.rand((s, k), generator=gen)
    angle = torch.rand((t, k), generator=gen, dtype=torch.float64) * 6.283
    phases = torch.polar(torch.ones_like(angle), angle).to(torch.complex64)
    lists = torch.randint(0, rows, (s, slots), generator=gen)
    valid = torch.rand((s, slots), generator=gen) < 0.8
    particles = ParticleWindowData(data, ctf, weight, phases.expand(s, -1, -1))
    scale = float(n) if ndim == 2 else 1.0
    return particles, reference, rotations, lists, valid, frequencies, n / 2 - 0.5, scale, p


def _float64_scores(particles, reference, rotations, lists, frequencies, radius, scale):
    projections = sample_rotated(
        reference.to(torch.complex128),
        rotations,
        frequencies,
        padding_factor=2,
        max_radius=radius,
        scale=scale,
    )
    data, ctf, weight = (x.to(torch.complex128 if x.is_complex() else torch.float64) for x in
                         (particles.data, particles.ctf, particles.weight))  # fmt: skip
    chosen = projections[lists]  # (s, r, k)
    scores = squared_differences_per_particle(
        data, ctf, weight, chosen, particles.phases.to(torch.complex128), precision="float64"
    )
    return scores, data, ctf, weight, chosen


def _bound(data, ctf, weight, chosen, reference, p, scale, u, d=None):
    """Rounding of the sums (``gamma`` of their ``3k`` terms times the magnitudes) plus the
    projections' own error: float32 coordinates move each trilinear weight by a few units of
    ``p`` (``test_rotated_samples``), so ``|dP| <= d``, which moves the score by at most
    ``sum 2 w |K| (|X| + |K| |P|) d + sum w K^2 d^2``."""
    if d is None:
        d = (4 * p * 8 + 8) * U32 * reference.abs().max().item() * 8 * scale
    x, pw = data.abs(), chosen.abs()
    k = ctf.abs()
    magnitude = (
        (weight * x**2).sum(-1)[:, None]
        + torch.einsum("bk,brk->br", weight * k**2, pw**2)
        + 2 * torch.einsum("bk,brk->br", weight * k * x, pw)
    )
    moved = 2 * (weight * k * x).sum(-1)[:, None] + torch.einsum(
        "bk,brk->br", 2 * weight * k**2, pw + d
    )
    return (gamma(3 * data.shape[1] + 8, u) * magnitude + moved * d)[:, None, :]


@pytest.mark.parametrize(
    ("ndim", "n", "t", "slots"),
    [(3, 10, 5, 21), (3, 8, 19, 16), (3, 8, 40, 5), (2, 16, 7, 33)],
)
def test_scores_equal_the_float64_scores_of_the_same_lists(ndim, n, t, slots):
    """Translations past one 16-wide tile (19, 40), slot blocks with padding (21, 33), 2D slices."""
    device = _kernel_device()
    particles, reference, rotations, lists, valid, freq, radius, scale, p = _case(
        n + t, n=n, ndim=ndim, s=3, t=t, rows=30, slots=slots
    )
    on = ParticleWindowData(*(x.to(device) for x in (
        particles.data, particles.ctf, particles.weight, particles.phases)))  # fmt: skip
    got = fused_lists.fused_list_scores(
        on, reference.to(device), rotations.to(device), lists.to(device), valid.to(device),
        freq.to(device), padding_factor=2, max_radius=radius, scale=scale,
        precision="float32", max_bytes=2**30,
    )  # fmt: skip
    want, data, ctf, weight, chosen = _float64_scores(
        particles, reference, rotations, lists, freq, radius, scale
    )
    bound = _bound(data, ctf, weight, chosen, reference, p, scale, U32)
    got = got.cpu().to(torch.float64)
    assert bool(torch.isinf(got[~valid[:, None, :].expand_as(got)]).all())
    inside = valid[:, None, :].expand_as(got)
    assert bool(((got - want).abs() <= bound)[inside].all())
    assert float((got - want).abs()[inside].max()) > 0  # a float32 result, not a copy


def test_small_particle_chunks_give_the_same_scores():
    device = _kernel_device()
    particles, reference, rotations, lists, valid, freq, radius, scale, _ = _case(
        3, n=8, ndim=3, s=5, t=3, rows=12, slots=7
    )
    on = ParticleWindowData(*(x.to(device) for x in (
        particles.data, particles.ctf, particles.weight, particles.phases)))  # fmt: skip
    args = (reference.to(device), rotations.to(device), lists.to(device), valid.to(device),
            freq.to(device))  # fmt: skip
    options = {"padding_factor": 2, "max_radius": radius, "scale": scale, "precision": "float32"}
    whole = fused_lists.fused_list_scores(on, *args, max_bytes=2**30, **options)
    one_by_one = fused_lists.fused_list_scores(on, *args, max_bytes=1, **options)
    torch.testing.assert_close(one_by_one, whole, rtol=0, atol=0)


def test_a_mismatched_z_is_refused():
    with pytest.raises(ValueError, match="reals per translation"):
        fused_lists.list_cross(
            torch.zeros((1, 2, 6)), torch.zeros((1, 4)),
            torch.zeros((4, 4, 3), dtype=torch.complex64),
            torch.eye(3)[None], torch.zeros((1, 1), dtype=torch.int64),
            torch.zeros((4, 3), dtype=torch.int64), padding_factor=2, max_radius=1.0, scale=1.0,
            tf32=False,
        )  # fmt: skip


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the library's path runs on CUDA")
def test_on_cuda_the_held_lists_and_the_fused_kernel_agree():
    precision = "float32"
    """The two paths ``search._list_scores`` chooses between, on one float32 reference."""
    particles, reference, rotations, lists, valid, freq, radius, scale, p = _case(
        9, n=12, ndim=3, s=4, t=19, rows=40, slots=24
    )
    cuda = torch.device("cuda")
    shared = particles.phases[0].to(cuda).expand(particles.phases.shape)  # shared, as the pass's
    on = ParticleWindowData(*(x.to(cuda) for x in (
        particles.data, particles.ctf, particles.weight)), shared)  # fmt: skip
    values = sample_rotated(
        reference.to(cuda), rotations.to(cuda), freq.to(cuda), padding_factor=2,
        max_radius=radius, scale=scale,
    )  # fmt: skip
    held = score_held_lists(
        on, values, lists.to(cuda), valid.to(cuda), cross_correlation=False,
        precision=precision, max_bytes=2**30,
    )  # fmt: skip
    fused = fused_lists.fused_list_scores(
        on, reference.to(cuda), rotations.to(cuda), lists.to(cuda), valid.to(cuda),
        freq.to(cuda), padding_factor=2, max_radius=radius, scale=scale,
        precision=precision, max_bytes=2**30,
    )  # fmt: skip
    _, data, ctf, weight, chosen = _float64_scores(
        particles, reference, rotations, lists, freq, radius, scale
    )
    bound = 2 * _bound(data, ctf, weight, chosen, reference, p, scale, U32)  # both paths' errors
    inside = valid[:, None, :].expand_as(held).to(cuda)
    assert bool(((fused - held).abs().double().cpu() <= bound)[inside.cpu()].all())
    assert bool(torch.isinf(fused[~inside]).all())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="textures need a CUDA GPU")
def test_on_cuda_the_texture_sampled_scores_are_within_the_texture_fractions():
    """The library's path in local searches: each projection moves by at most 2**-8 times
    the summed largest corner differences of the three axes (``test_texture``), at most
    ``3 * 2 * max|reference|``, times ``scale``; the score moves as ``_bound`` says."""
    particles, reference, rotations, lists, valid, freq, radius, scale, p = _case(
        9, n=12, ndim=3, s=4, t=19, rows=40, slots=24
    )
    cuda = torch.device("cuda")
    shared = particles.phases[0].to(cuda).expand(particles.phases.shape)
    on = ParticleWindowData(*(x.to(cuda) for x in (
        particles.data, particles.ctf, particles.weight)), shared)  # fmt: skip
    gpu_reference = reference.to(cuda)
    with reference_texture(gpu_reference) as texture:
        fused = fused_lists.fused_list_scores(
            on, gpu_reference, rotations.to(cuda), lists.to(cuda), valid.to(cuda),
            freq.to(cuda), padding_factor=2, max_radius=radius, scale=scale,
            precision="float32", max_bytes=2**30, texture=texture,
        ).cpu().to(torch.float64)  # fmt: skip
    want, data, ctf, weight, chosen = _float64_scores(
        particles, reference, rotations, lists, freq, radius, scale
    )
    d = (FRACTION + 2.0**-12) * 6 * reference.abs().max().item() * scale
    bound = _bound(data, ctf, weight, chosen, reference, p, scale, U32, d=d)
    inside = valid[:, None, :].expand_as(fused)
    assert bool(((fused - want).abs() <= bound)[inside].all())
    assert bool(torch.isinf(fused[~inside]).all())
