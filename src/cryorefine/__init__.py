"""cryorefine: gold-standard 3D auto-refinement for cryo-ET and cryo-EM on PyTorch.

Layers (shared/docs/ARCHITECTURE.md), each importing only those below it:
io, geometry, fourier, tomo, likelihood, refine, then simulate/report/parallel,
and cli on top.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
