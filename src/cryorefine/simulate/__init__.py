"""Simulated data sets with ground truth, and the embedded default structure."""

from cryorefine.simulate.embedded import (
    EMBEDDED_MAP_DESCRIPTION,
    EMBEDDED_PIXEL_SIZE_ANGST,
    EMBEDDED_SYMMETRY,
    embedded_map,
)

__all__ = [
    "EMBEDDED_MAP_DESCRIPTION",
    "EMBEDDED_PIXEL_SIZE_ANGST",
    "EMBEDDED_SYMMETRY",
    "embedded_map",
]
