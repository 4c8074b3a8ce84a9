"""Make the packaged default map: the HIV-1 CA hexamer of RELION 5's tutorial, from its model.

The model is the C6 hexamer that ModelAngelo built into the tutorial's final map
(``shared/data/hiv_tutorial_relion5/ModelAngelo/job080/job080.cif``). Steps:

1. Axis: the normal of the plane through the centroids of the six complete CA
   chains (the hexagon's plane), through the centre of those six centroids.
   The smallest proper rotation turning that normal onto +z is applied to every
   atom (the model's own in-plane orientation is kept).
2. Centre: the axis goes through voxel ``box // 2`` in x and y; the model's
   centre along z, weighted by each atom's electron scattering factor at zero
   angle (the integral of its density), goes to voxel ``box // 2`` in z.
3. Density: gemmi's ``DensityCalculatorE`` (electron scattering factors of
   International Tables Vol. C, Table 4.3.2.2: five Gaussians per element,
   each blurred by the atom's own B-factor) on a grid ``oversample`` times finer
   than the output, with an extra ``sampling_blur`` B so that even atoms with
   B = 0 are sampled without aliasing.
4. Band limit: Fourier crop to the output grid, remove the sampling blur again
   (multiply by ``exp(+sampling_blur |s|^2 / 4)``), and low-pass with a raised
   cosine that passes everything up to ``pass_angst`` and nothing beyond
   ``stop_angst``.
5. Write float16 (MRC mode 12), voxel size in the header, origin 0 as RELION.

Run from the repository root (the defaults are the packaged map's)::

    python3 scripts/make_embedded_map.py
"""

import argparse
import logging
from pathlib import Path

import gemmi
import mrcfile
import numpy as np
from scipy import ndimage

from cryorefine.io.atomic import write_atomically

__all__ = ["build_embedded_map", "c6_correlation", "hexamer_axis", "main", "rotation_onto_z"]

logger = logging.getLogger("make_embedded_map")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CIF = REPO.parent / "shared/data/hiv_tutorial_relion5/ModelAngelo/job080/job080.cif"
DEFAULT_OUT = REPO / "src/cryorefine/simulate/data/hiv_ca_hexamer_c6.mrc"
N_SUBUNITS = 6


def _f0(atom: gemmi.Atom) -> float:
    """Electron scattering factor at zero angle (Angstrom): the sum of the five Gaussian weights."""
    return float(sum(atom.element.c4322.get_coefs()[:5]))


def _chain_xyz(chain: gemmi.Chain) -> np.ndarray:
    return np.array([atom.pos.tolist() for residue in chain for atom in residue])


def hexamer_axis(model: gemmi.Model) -> tuple[np.ndarray, np.ndarray]:
    """Centre and unit normal (x, y, z, Angstrom) of the hexagon of the six largest chains."""
    chains = sorted(model, key=lambda chain: -chain.count_atom_sites())[:N_SUBUNITS]
    centroids = np.array([_chain_xyz(chain).mean(axis=0) for chain in chains])
    centre = centroids.mean(axis=0)
    normal = np.linalg.svd(centroids - centre)[2][2]
    return centre, normal if normal[2] >= 0 else -normal


def rotation_onto_z(normal: np.ndarray) -> np.ndarray:
    """Smallest proper rotation (3, 3), acting on column vectors, taking ``normal`` onto +z."""
    z = np.array([0.0, 0.0, 1.0])
    v = np.cross(normal, z)
    sin, cos = np.linalg.norm(v), float(normal @ z)
    if sin < 1e-12:
        return np.eye(3)
    vx = np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])
    return np.eye(3) + vx + vx @ vx * ((1.0 - cos) / sin**2)


def _place_atoms(structure: gemmi.Structure, *, box: int, pixel_size_angst: float) -> None:
    """Rotate and shift every atom in place: C6 axis on z through voxel box // 2 (steps 1-2)."""
    model = structure[0]
    centre, normal = hexamer_axis(model)
    rotation = rotation_onto_z(normal)
    atoms = [atom for chain in model for residue in chain for atom in residue]
    xyz = (np.array([atom.pos.tolist() for atom in atoms]) - centre) @ rotation.T
    weight = np.array([_f0(atom) for atom in atoms])
    xyz[:, 2] -= np.sum(weight * xyz[:, 2]) / np.sum(weight)
    xyz += (box // 2) * pixel_size_angst
    for atom, position in zip(atoms, xyz, strict=True):
        atom.pos = gemmi.Position(*position)
    side = box * pixel_size_angst
    structure.cell = gemmi.UnitCell(side, side, side, 90.0, 90.0, 90.0)
    structure.spacegroup_hm = "P 1"
    logger.info("axis tilt from z before rotation: %.3f deg", np.degrees(np.arccos(normal[2])))


def _fine_density(structure: gemmi.Structure, *, size: int, sampling_blur: float) -> np.ndarray:
    """gemmi electron density on a ``size**3`` grid over the unit cell, indexed (z, y, x)."""
    calculator = gemmi.DensityCalculatorE()
    calculator.grid.set_unit_cell(structure.cell)
    calculator.grid.spacegroup = gemmi.SpaceGroup("P 1")
    calculator.grid.set_size(size, size, size)
    calculator.blur = sampling_blur
    calculator.cutoff = 1e-8  # density (1/Angstrom^2) below which an atom's tails are cut
    calculator.put_model_density_on_grid(structure[0])
    return np.array(calculator.grid.array, dtype=np.float64).transpose(2, 1, 0)


def _band_limit(
    fine: np.ndarray,
    *,
    box: int,
    pixel_size_angst: float,
    sampling_blur: float,
    pass_angst: float,
    stop_angst: float,
) -> np.ndarray:
    """Fourier crop to ``box``, undo the sampling blur, raised-cosine low-pass (step 4)."""
    size = fine.shape[0]
    kept = np.r_[0 : box // 2, size - box // 2 : size]
    spectrum = np.fft.fftn(fine)[np.ix_(kept, kept, kept)] * (box / size) ** 3
    k = np.fft.fftfreq(box) / pixel_size_angst  # 1/Angstrom
    s2 = k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2
    s = np.sqrt(s2)
    s_pass, s_stop = 1.0 / pass_angst, 1.0 / stop_angst
    edge = np.clip((s - s_pass) / (s_stop - s_pass), 0.0, 1.0)
    lowpass = 0.5 * (1.0 + np.cos(np.pi * edge))
    spectrum *= lowpass * np.exp(sampling_blur * s2 / 4.0)
    return np.real(np.fft.ifftn(spectrum))


def build_embedded_map(
    cif: Path,
    *,
    box: int = 64,
    pixel_size_angst: float = 2.7,
    oversample: int = 3,
    sampling_blur: float = 40.0,
    pass_angst: float = 7.2,
    stop_angst: float = 6.2,
) -> np.ndarray:
    """Band-limited electron-scattering density of the model, (z, y, x) float32 ``box**3``.

    Units: gemmi's, 1/Angstrom^2 (the transform of scattering factors in Angstrom);
    the sum of the voxels times ``pixel_size_angst**3`` is the sum over atoms of
    their scattering factor at zero angle.
    """
    if stop_angst <= 2.0 * pixel_size_angst:
        raise ValueError(f"stop_angst {stop_angst} must exceed Nyquist {2 * pixel_size_angst}")
    structure = gemmi.read_structure(str(cif))
    structure.remove_alternative_conformations()
    structure.remove_hydrogens()
    _place_atoms(structure, box=box, pixel_size_angst=pixel_size_angst)
    fine = _fine_density(structure, size=box * oversample, sampling_blur=sampling_blur)
    volume = _band_limit(
        fine,
        box=box,
        pixel_size_angst=pixel_size_angst,
        sampling_blur=sampling_blur,
        pass_angst=pass_angst,
        stop_angst=stop_angst,
    )
    return volume.astype(np.float32)


def _rotate_z_about_centre(volume: np.ndarray, angle_deg: float) -> np.ndarray:
    """Rotate (z, y, x) about the z axis through voxel n // 2, linear interpolation."""
    n = volume.shape[-1]
    # ndimage.rotate turns about the array centre (size - 1) / 2; one zero plane after
    # the last y and x makes that n / 2 = n // 2 for even n.
    padded = np.pad(volume, ((0, 0), (0, 1), (0, 1)))
    turned = ndimage.rotate(padded, angle_deg, axes=(1, 2), reshape=False, order=1)
    return turned[:, :n, :n]


def c6_correlation(volume: np.ndarray) -> float:
    """Pearson correlation of a map with its 60-degree turn about z, inside the box's cylinder."""
    n = volume.shape[-1]
    y, x = np.mgrid[:n, :n] - n // 2
    inside = np.broadcast_to(np.hypot(x, y) < n // 2 - 1, volume.shape)
    turned = _rotate_z_about_centre(volume, 360.0 / N_SUBUNITS)
    return float(np.corrcoef(volume[inside], turned[inside])[0, 1])


def _write_mrc(path: Path, volume: np.ndarray, *, pixel_size_angst: float, label: str) -> None:
    def write(partial: Path) -> None:
        with mrcfile.new(partial, data=volume.astype(np.float16), overwrite=True) as mrc:
            mrc.voxel_size = pixel_size_angst
            mrc.header.label[0] = label.encode("ascii")[:80]
            mrc.header.nlabl = 1

    write_atomically(path, write)


def main(argv: list[str] | None = None) -> None:
    """Parse options, build the map, report its figures and write it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cif", type=Path, default=DEFAULT_CIF)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--box", type=int, default=64)
    parser.add_argument("--pixel_size_angst", type=float, default=2.7)
    parser.add_argument("--oversample", type=int, default=3)
    parser.add_argument("--sampling_blur", type=float, default=40.0)
    parser.add_argument("--pass_angst", type=float, default=7.2)
    parser.add_argument("--stop_angst", type=float, default=6.2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    volume = build_embedded_map(
        args.cif,
        box=args.box,
        pixel_size_angst=args.pixel_size_angst,
        oversample=args.oversample,
        sampling_blur=args.sampling_blur,
        pass_angst=args.pass_angst,
        stop_angst=args.stop_angst,
    )
    label = f"cryorefine: HIV-1 CA hexamer, job080.cif, gemmi {gemmi.__version__} c4322"
    _write_mrc(args.out, volume, pixel_size_angst=args.pixel_size_angst, label=label)
    logger.info("wrote %s (%d bytes)", args.out, args.out.stat().st_size)
    logger.info(
        "min %.4g max %.4g sum*px^3 %.6g",
        volume.min(),
        volume.max(),
        volume.sum(dtype=np.float64) * args.pixel_size_angst**3,
    )
    logger.info("C6 correlation (60 deg about z, order 1): %.4f", c6_correlation(volume))


if __name__ == "__main__":
    main()
