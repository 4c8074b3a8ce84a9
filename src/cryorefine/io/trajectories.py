"""Particle trajectories (``motion.star``, rlnTomoTrajectoriesFile): motion per particle per tilt.

The file has a first table (the number of particles) and then one table per
particle, named by its rlnTomoParticleName (``data_TS_01/17``), one row per tilt
image in Angstrom, relative to the particle's position in the chronologically
first tilt. The tables are kept as read; ``shifts_angst`` gives one as an array.
"""

from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np
import pandas as pd
from jaxtyping import Float64

from cryorefine.errors import InputError
from cryorefine.io.star import StarBlock, read_star
from cryorefine.io.tables import float_column

__all__ = ["Trajectories", "load_trajectories"]

_SHIFTS = ("rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst")


@dataclass(frozen=True)
class Trajectories:
    """A trajectories file: its first table and one table per particle, in file order."""

    path: Path
    general: StarBlock
    per_particle: dict[str, pd.DataFrame]

    def shifts_angst(self, particle_name: str) -> Float64[np.ndarray, "i 3"]:
        """(x, y, z) shift in Angstrom of particle ``particle_name`` in each tilt image."""
        table = self.per_particle.get(particle_name)
        if table is None:
            raise InputError(f"{self.path}: no trajectory for particle {particle_name!r}")
        return np.stack(
            [float_column(table, label, path=self.path, block=particle_name) for label in _SHIFTS],
            axis=1,
        )


def load_trajectories(path: str | PathLike[str]) -> Trajectories:
    """Read a trajectories file; every block after the first is one particle's trajectory.

    Raises
    ------
    InputError
        The file is unreadable or holds no particle tables.
    """
    star = Path(path)
    blocks = read_star(star)
    names = list(blocks)
    tables = {name: block for name, block in blocks.items() if name != names[0]}
    not_tables = [name for name, block in tables.items() if not isinstance(block, pd.DataFrame)]
    if not_tables:
        raise InputError(f"{star}: data_{not_tables[0]} is not a loop table (one row per tilt)")
    if not tables:
        raise InputError(f"{star}: no particle trajectories (only data_{names[0]})")
    per_particle = {
        name: block for name, block in tables.items() if isinstance(block, pd.DataFrame)
    }
    return Trajectories(path=star, general=blocks[names[0]], per_particle=per_particle)
