"""Each coefficient's noise of a RELION-4 pseudo-subtomogram, in units of ``2 sigma2``.

``V = (W / c + a M) / (1 + a)`` where the multiplicity ``M`` exceeds
``MULTIPLICITY_MIN``, else 1 (RELION's undivided weight there), with ``W`` the
coefficient's CTF² weight, ``c`` the CTF² per unit multiplicity of its shell
(``refine.subtomo_noise`` reads it and says why) and ``a = NOISE_FLOOR``. Where
``c`` is 0 (a shell with no multiplicity), ``V = M``, RELION-4's rule. The scores
weigh each coefficient by ``1 / (2 sigma2 V)``.
"""

import torch
from jaxtyping import Float
from torch import Tensor

__all__ = ["MULTIPLICITY_MIN", "NOISE_FLOOR", "noise_scale"]

#: ``a``: a voxel's noise is at least this share of its multiplicity's.
NOISE_FLOOR = 0.1

#: Coefficients reached by less multiplicity than this keep RELION's undivided weight.
MULTIPLICITY_MIN = 0.1


def noise_scale(
    ctf2: Float[Tensor, "..."], multiplicity: Float[Tensor, "..."], ratio: Float[Tensor, "..."]
) -> Float[Tensor, "..."]:
    """``V`` (float64) of coefficients with CTF² ``ctf2``, multiplicity ``multiplicity`` and
    their shells' ``c`` in ``ratio`` (all of one shape, or broadcastable)."""
    counts = multiplicity.to(torch.float64)
    per_unit = ratio.to(torch.float64)
    weighted = (ctf2.to(torch.float64) / per_unit.clamp(min=1e-300) + NOISE_FLOOR * counts) / (
        1.0 + NOISE_FLOOR
    )
    scale = torch.where(per_unit > 0, weighted, counts)
    return torch.where(counts > MULTIPLICITY_MIN, scale, 1.0)
