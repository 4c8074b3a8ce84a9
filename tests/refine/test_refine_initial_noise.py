"""The first noise estimate of RELION-4 pseudo-subtomograms is per unit multiplicity."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cryorefine.fourier import shift_fourier
from cryorefine.refine.initialise import _initial_sigma2, load_inputs
from cryorefine.refine.noise import initial_noise_sums, initial_sigma2_noise
from cryorefine.refine.options import RefineOptions
from cryorefine.simulate import SimulationOptions, simulate_dataset
from cryorefine.tomo import particle_batches

N = 16


@pytest.fixture(scope="module")
def relion4_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("initial_noise")
    simulate_dataset(
        SimulationOptions(
            output_dir=folder,
            symmetry="C6",
            n_particles=4,
            box_size=N,
            pixel_size_angst=10.8,
            snr=1.0,
            data_format="relion4",
            seed=13,
        )
    )
    return folder


def _mean_multiplicity_per_shell(multiplicity: np.ndarray) -> np.ndarray:
    """Slow float64 loop: the mean of M over every stored coefficient of each shell."""
    sums, counts = np.zeros(N // 2 + 1), np.zeros(N // 2 + 1)
    for volume in multiplicity:
        for z in range(N):
            for y in range(N):
                for x in range(N // 2 + 1):
                    kz, ky = (z if z <= N // 2 else z - N), (y if y <= N // 2 else y - N)
                    shell = round(math.sqrt(x * x + ky * ky + kz * kz))
                    if shell <= N // 2:
                        sums[shell] += volume[z, y, x]
                        counts[shell] += 1
    return sums / np.maximum(counts, 1)


def test_the_spectrum_is_relions_divided_by_each_shells_mean_multiplicity(
    relion4_set: Path,
) -> None:
    options = RefineOptions(
        input_particles=relion4_set / "particles.star",
        reference=relion4_set / "reference.mrc",
        output_root=relion4_set / "run",
        ctf=True,
        particle_diameter=150.0,
    )
    device = torch.device("cpu")
    inputs = load_inputs(options, device=device)
    got = _initial_sigma2(inputs, options, device=device)
    (batch,) = particle_batches(inputs.particles, batch_size=4, device=device, use_ctf=True)
    assert batch.multiplicity is not None
    centred = shift_fourier(batch.data_ft, batch.origins_px)
    groups = torch.zeros(4, dtype=torch.int64)
    relions = initial_sigma2_noise(
        *initial_noise_sums(centred, groups, nr_optics_groups=1, ndim=3), ndim=3
    )
    mean = _mean_multiplicity_per_shell(batch.multiplicity.double().numpy())
    assert (mean[1:] > 1.0).all()  # many tilts through every shell: the division matters
    expected = relions[0].numpy() / np.where(mean > 0.1, mean, 1.0)
    # The same float64 sums in another order: a few ulps.
    np.testing.assert_allclose(got[0].numpy(), expected, rtol=1e-12)
