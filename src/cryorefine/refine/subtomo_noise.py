"""The noise of RELION-4 pseudo-subtomograms, voxel by voxel: in proportion to their CTF².

A pseudo-subtomogram is ``X(k) = sum_f CTF_f(k) w_f(k) Y_f(k)`` over the tilt
images ``f`` whose slices reach ``k``, with the CTF² volume ``W(k) = sum_f
(CTF_f w_f)²`` and the multiplicity ``M(k)``, the number of slices. With the
same noise power ``s2`` in every tilt image, the noise of ``X(k)`` has the
variance ``s2 W(k)``. RELION-4 scores these data as if it were ``2 sigma2(r)
M(k)`` (weight ``1 / (2 sigma2 M)``, REFINE_SPEC §7.1): where the tilts reaching
``k`` have a small CTF or a high dose, the voxel is trusted as much as one
reached by the same number of strong tilts. ``W / M`` spans three decades within
a shell. At the true poses and map (``bench/pose_information.py``), on the issue-5
test data (200 particles, 41 tilts, SNR 10 per tilt), RELION-4's weight believes
the poses 1.5 times better known than the Cramér-Rao bound (median angular error
0.157 against 0.238 degree), so its accuracy estimate is 1.5 times too small
(0.30 against 0.46), and the poses it finds are 1.36 times less precise than the
bound (0.323). On 60 particles of the tutorial's shape: 1.05, 1.44, 1.77 degrees.
With ``V`` below, belief, bound and poses agree within 1% on both.

Here the noise of voxel ``k`` in shell ``r`` of a particle of optics group
``g`` is ``2 sigma2(r) V(k)`` with::

    V(k) = (W(k) / c_g(r) + a M(k)) / (1 + a),   c_g(r) = sum W / sum M,

``c_g(r)`` the CTF² per unit multiplicity of the group's shell (over voxels with
``M > 0.1``, from the first ``RATIO_PARTICLES`` particles of the group), so that
``V`` (``likelihood.subtomo_noise``) sums to what ``M`` sums to and ``sigma2``
keeps RELION's meaning and estimate (``sum |diff|² / (2 sum M)``). The floor
``a = NOISE_FLOOR`` keeps voxels whose CTF² is far below their multiplicity's
share from weighing in without bound, should their noise not fall with it (the
interpolation and cropping of a real extraction); on the test data it moves the
poses' precision by 0.3% (``a`` = 0: 0.2380 degree, 0.1: 0.2388, 0.3: 0.2409).
Where ``M <= 0.1``, ``V`` is 1, as RELION leaves those voxels' weight undivided.
``--subtomo_noise_multiplicity`` restores RELION's ``V = M``.
"""

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from cryorefine.fourier import shell_index
from cryorefine.fourier.shells import shell_sums
from cryorefine.io import ParticleSet
from cryorefine.likelihood.subtomo_noise import MULTIPLICITY_MIN, noise_scale
from cryorefine.tomo import ParticleCache, particle_batches

__all__ = ["RATIO_PARTICLES", "ctf2_per_multiplicity", "noise_scale_grid"]

#: Particles of each optics group read for ``c_g(r)``: the shells' ratios vary from
#: particle to particle by 50-70% (defocus, visible tilts), so 100 give it to about 6%.
RATIO_PARTICLES = 100


def ctf2_per_multiplicity(
    particles: ParticleSet,
    optics_group: np.ndarray,
    *,
    ori_size: int,
    device: torch.device,
    count: int = RATIO_PARTICLES,
    cache: ParticleCache | None = None,
) -> Float[Tensor, "o s"]:
    """``c_g(r)``: the CTF² per unit multiplicity of each optics group's shells (float64).

    Read from the first ``count`` particles of each group (``optics_group`` 0-based per
    row); 0 where a shell has no voxel with ``M > 0.1``. Particles with NaN or
    infinity are left out (``tomo.particle_batches`` names them).
    """
    groups = int(optics_group.max()) + 1
    rows = np.concatenate([np.flatnonzero(optics_group == g)[:count] for g in range(groups)])
    ctf2 = torch.zeros(groups, ori_size // 2 + 1, dtype=torch.float64, device=device)
    multiplicity = torch.zeros_like(ctf2)
    for loaded in particle_batches(
        particles, batch_size=32, device=device, use_ctf=True, rows=rows, cache=cache
    ):
        batch = loaded.select(loaded.finite)
        if batch.multiplicity is None or batch.ctf is None:
            raise ValueError("ctf2_per_multiplicity needs pseudo-subtomograms with CTF volumes")
        used = batch.multiplicity > MULTIPLICITY_MIN
        index = torch.as_tensor(optics_group[batch.rows.cpu().numpy()], device=device)
        ctf2.index_add_(0, index, shell_sums(torch.where(used, batch.ctf, 0.0), ori_size, 3))
        multiplicity.index_add_(
            0, index, shell_sums(torch.where(used, batch.multiplicity, 0.0), ori_size, 3)
        )
    return torch.where(multiplicity > 0, ctf2 / multiplicity.clamp(min=1e-300), 0.0)


def noise_scale_grid(
    ctf2: Float[Tensor, "b m m mh"],
    multiplicity: Float[Tensor, "b m m mh"],
    ratio: Float[Tensor, "b s"],
) -> Float[Tensor, "b m m mh"]:
    """``V`` of ``likelihood.noise_scale`` on whole grids of any (cropped) size ``m``, with
    ``ratio`` ``c_g(r)`` of each particle's optics group, ``ori_size // 2 + 1`` shells."""
    m = ctf2.shape[-2]
    shells = shell_index(m, 3, device=ctf2.device).clamp(max=ratio.shape[-1] - 1)
    return noise_scale(ctf2, multiplicity, ratio.to(ctf2.device)[:, shells])
