"""The packaged default structure: the HIV-1 CA hexamer of RELION 5's tutorial, as a map.

The map is the electron-scattering density of the C6 capsid-protein hexamer
that ModelAngelo built at the end of RELION 5's subtomogram-averaging tutorial
(EMPIAR-10164), computed with gemmi and low-pass filtered so that it has no
power beyond 6.2 Angstrom. Its 6-fold axis is the z axis through voxel
``n // 2`` (RELION's C6 convention and box centre), and the model's centre of
mass along z is at voxel ``n // 2``. ``simulate/data/README.md`` gives the
provenance, the licence and the command that regenerates the file.
"""

from importlib import resources

import mrcfile
import numpy as np
from jaxtyping import Float

__all__ = [
    "EMBEDDED_MAP_DESCRIPTION",
    "EMBEDDED_PIXEL_SIZE_ANGST",
    "EMBEDDED_SYMMETRY",
    "embedded_map",
]

EMBEDDED_PIXEL_SIZE_ANGST = 2.7
"""Voxel size of the packaged map (twice the tutorial's 1.35 Angstrom)."""

EMBEDDED_SYMMETRY = "C6"
"""Point group of the packaged structure, 6-fold along z (RELION's C6)."""

EMBEDDED_MAP_DESCRIPTION = (
    "HIV-1 CA hexamer (C6, axis on z) from RELION 5's HIV tutorial (EMPIAR-10164): "
    "density of the ModelAngelo model job080.cif with gemmi's electron scattering "
    "factors (International Tables C 4.3.2.2) and the model's B-factors, raised-cosine "
    "low-pass 7.2 to 6.2 Angstrom; box 64, 2.7 Angstrom per voxel, centre voxel 32."
)
"""One-line description of the packaged map, for logs and reports."""

_FILE_NAME = "hiv_ca_hexamer_c6.mrc"


def embedded_map() -> tuple[Float[np.ndarray, "n n n"], float]:
    """The packaged default map and its voxel size.

    Returns
    -------
    volume
        ``(n, n, n)`` float32 indexed ``(z, y, x)``, a new array on each call;
        box centre at voxel ``n // 2``. Units: gemmi's electron-scattering
        density, 1/Angstrom^2 (the voxel sum times the voxel volume is the sum
        of the atoms' scattering factors at zero angle, in Angstrom); solvent 0.
    pixel_size_angst
        Voxel size in Angstrom from the MRC header (``EMBEDDED_PIXEL_SIZE_ANGST``),
        rounded to 6 decimals to drop the header's float32 digits.
    """
    source = resources.files("cryorefine.simulate").joinpath("data", _FILE_NAME)
    with resources.as_file(source) as path, mrcfile.open(path, mode="r") as mrc:
        volume = np.array(mrc.data, dtype=np.float32)
        pixel_size_angst = round(float(mrc.voxel_size.x), 6)
    return volume, pixel_size_angst
