"""Small synthetic E-step cases shared by the likelihood tests: a blob map, particles, plans."""

import functools
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from cryorefine.fourier import (
    extract_slices,
    fourier_crop,
    prepare_reference,
    rotate_volume,
    shift_fourier,
)
from cryorefine.geometry import angular_step_deg, healpix_npix, psi_angles_deg, translation_grid
from cryorefine.likelihood import ExpectationPlan, OrientationGrid, ParticleTerms

U32 = 2.0**-24  # float32 unit roundoff
U64 = 2.0**-53  # float64 unit roundoff


def blob_map(n: int, generator: torch.Generator, *, count: int = 24, width_px: float = 1.5):
    """A map of Gaussian blobs inside a sphere of radius ``0.3 n`` (float64, ``(n, n, n)``).

    Its spectrum decays like a protein's, so neighbouring orientations give
    nearly equal projections at low resolution.
    """
    centres = (torch.rand(count, 3, generator=generator, dtype=torch.float64) - 0.5) * 0.6 * n
    axis = torch.arange(n, dtype=torch.float64) - n // 2
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    grid = torch.stack([x, y, z], dim=-1)
    volume = torch.zeros(n, n, n, dtype=torch.float64)
    for centre in centres:
        volume += torch.exp(-((grid - centre) ** 2).sum(-1) / (2 * width_px**2))
    return volume


def reference_of(volume: torch.Tensor, dtype=torch.float32):
    """Padded Fourier reference (pad 2, no gridding correction) of ``volume``."""
    return prepare_reference(volume.to(dtype), padding_factor=2, gridding_correction="none")


def whole_grid(order: int, *, perturbation: float = 0.0) -> OrientationGrid:
    """All directions of ``order`` with the default psi step."""
    return OrientationGrid(
        order,
        torch.arange(healpix_npix(order)),
        psi_angles_deg(angular_step_deg(order), device="cpu"),
        perturbation=perturbation,
    )


def make_plan(
    grid: OrientationGrid,
    *,
    ndim: int,
    ori_size: int,
    current_size: int,
    coarse_size: int,
    offset_range_px: float = 1.0,
    offset_step_px: float = 1.0,
    **options,
) -> ExpectationPlan:
    """A plan with the translation grid of ``offset_range_px`` / ``offset_step_px``."""
    translations = translation_grid(offset_range_px, offset_step_px, ndim=ndim, device="cpu")
    return ExpectationPlan(
        ori_size=ori_size,
        current_size=current_size,
        coarse_size=coarse_size,
        orientations=grid,
        translations_px=translations,
        offset_step_px=offset_step_px,
        **options,
    )


def particle_images(reference_ft, rotations, translations_px, *, ori_size: int, ndim: int):
    """Noise-free transforms at ``ori_size`` whose content is ``P(A)`` moved by ``-t``.

    Scoring them at pose ``A`` and trial translation ``t`` (origin 0) gives ``diff2 = 0``.
    """
    project = extract_slices if ndim == 2 else rotate_volume
    images = project(reference_ft, rotations.to(torch.float32), out_size=ori_size)
    return shift_fourier(images, -translations_px.to(torch.float32))


def particle_terms(
    images,
    *,
    current_size: int,
    sigma2: float,
    ndim: int,
    grid_count: int,
    noise: torch.Generator | None = None,
    **extra,
) -> ParticleTerms:
    """Particles with ``K = 1``, white noise of variance ``sigma2`` per component if ``noise``."""
    b, ori_size = images.shape[0], images.shape[1]
    if noise is not None:
        scale = math.sqrt(sigma2)
        real = torch.randn(images.shape, generator=noise) * scale
        imag = torch.randn(images.shape, generator=noise) * scale
        images = images + torch.complex(real, imag)
    cropped = fourier_crop(images, current_size, ndim=ndim)
    fields = {
        "masked_ft": cropped,
        "unmasked_ft": cropped,
        "ctf": torch.ones(cropped.shape),
        "sigma2_noise": torch.full((b, ori_size // 2 + 1), sigma2, dtype=torch.float64),
        "origins_px": torch.zeros(b, ndim, dtype=torch.float64),
        "offset_priors_px": torch.zeros(b, ndim, dtype=torch.float64),
        "log_prior_orientations": torch.zeros(b, grid_count, dtype=torch.float64),
    }
    fields.update(extra)
    return ParticleTerms(**fields)


def gamma(n: int, u: float) -> float:
    """Higham's ``gamma_n = n u / (1 - n u)``: relative error bound of an n-term sum of products."""
    return n * u / (1 - n * u)


def score_magnitudes(data, ctf, weight, projections):
    """``M = sum w |X|^2 + sum w K^2 |P|^2 + 2 sum w |K| |X| |P|`` per (particle, orientation).

    What the rounding errors of ``diff2 = A + B - 2 C`` scale with; ``projections`` are
    ``(r, k)`` or ``(b, r, k)``. The same for every translation, as ``|S| = 1``.
    """
    x, p = data.abs().double(), projections.abs().double()
    w, k = weight.double(), ctf.double()
    if p.dim() == 2:
        p = p.expand(x.shape[0], -1, -1)
    return (
        (w * x**2).sum(-1)[:, None]
        + torch.einsum("bk,brk->br", w * k**2, p**2)
        + 2 * torch.einsum("bk,brk->br", w * k.abs() * x, p)
    )


_PROBE = textwrap.dedent(
    """
    import torch, triton, triton.language as tl

    @triton.jit
    def count(out_ptr, n):
        total = 0
        for i in range(0, n, 1):
            total += 1
        tl.store(out_ptr, total)

    out = torch.zeros(1, dtype=torch.int32)
    count[(1,)](out, 3)
    assert int(out) == 3
    """
)


@functools.cache
def _interpreter_problem() -> str | None:
    """Why Triton's interpreter cannot run the kernels here, or None when it can.

    Triton 3.5's interpreter hands a kernel's scalar arguments over as one-element
    arrays, which NumPy 2.4 refuses to turn into a loop bound: no kernel with a loop
    over a runtime size runs under it, ours or the probe's.
    """
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=300
    )
    if done.returncode == 0 or "only 0-dimensional arrays" not in done.stderr:
        return None  # it runs, or fails otherwise: the tests run and show why
    return "Triton's interpreter cannot loop to a runtime bound here: " + done.stderr[-300:]


def needs_triton_interpreter() -> None:
    """Skip unless Triton is importable and its interpreter can run our kernels on the CPU."""
    pytest.importorskip("triton")
    problem = _interpreter_problem()
    if problem is not None:
        pytest.skip(problem)


def run_in_triton_interpreter(tmp_path, script: str, inputs: tuple):
    """What ``script`` saves to ``sys.argv[2]`` when run under Triton's interpreter
    (``TRITON_INTERPRET=1``, CPU tensors) with ``inputs`` saved to ``sys.argv[1]``."""
    torch.save(inputs, tmp_path / "in.pt")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    command = [sys.executable, "-c", script, str(tmp_path / "in.pt"), str(tmp_path / "out.pt")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return torch.load(tmp_path / "out.pt")
