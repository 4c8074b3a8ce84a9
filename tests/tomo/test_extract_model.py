"""Extraction reproduces RELION-4's pseudo-subtomogram model where that model is exact.

Tilt images are simulated (``simulate.simulate_tilt_images``: projection, CTF, dose,
sub-pixel placement, dark particles) and extracted (``tomo.tilt_image_transforms``,
``tomo.pseudo_subtomogram_volumes``); the result is compared with
``simulate.pseudo_subtomograms``, which builds ``ctf2 V_A`` directly in 3D from the
same reference, pose and tilts. With slices on grid planes (``extract_scenes``) the
two are the same numbers, so they must agree to float64 rounding.
"""

import torch
from extract_scenes import F64, grid_scene

from cryorefine.fourier.conventions import frequency_indices, to_fourier
from cryorefine.simulate import pseudo_subtomograms
from cryorefine.simulate.tilt_series import simulate_tilt_images
from cryorefine.tomo import particle_tilts, pseudo_subtomogram_volumes, tilt_image_transforms

N = 16


def _extract(scene, images, picks_angst, *, use_ctf=True):
    tilts = particle_tilts(scene.geometry, picks_angst, visibility_radius_px=N / 2)
    transforms = tilt_image_transforms(
        images, tilts, scene.geometry, binning=1.0, box_size=N, crop_size=N, circle_crop=False,
        use_ctf=use_ctf,
    )  # fmt: skip
    data, weights = pseudo_subtomogram_volumes(
        transforms, tilts, voltage_kv=300.0, spherical_aberration_mm=2.7,
        amplitude_contrast=0.1, pixel_size_angst=scene.pixel_size_angst, use_ctf=use_ctf,
    )  # fmt: skip
    return tilts, data, weights


def _inside_nyquist(volumes):
    """Coefficients with |k| < n / 2: a real image's Nyquist coefficients are forced real,
    the direct model's are not, so the Nyquist shell is left out of the comparison."""
    k = frequency_indices(N, 3)
    return to_fourier(volumes, 3)[:, (k * k).sum(dim=-1) < (N // 2) ** 2]


def _compare(scene, centres_px, origins_px):
    """Simulate at the true centres, extract at centre + origin, compare with the direct model."""
    pixel = scene.pixel_size_angst
    truth = particle_tilts(scene.geometry, centres_px * pixel)
    images = simulate_tilt_images(
        scene.reference_ft, scene.rotations, truth, image_size_px=scene.geometry.image_size_px,
        box_size=N, pixel_size_angst=pixel, paste_size=N,
    )  # fmt: skip
    tilts, data, weights = _extract(scene, images, (centres_px + origins_px) * pixel)
    assert bool(tilts.visible.all())
    want_data, want_weights = pseudo_subtomograms(
        scene.reference_ft, scene.rotations, origins_px, tilts, pixel_size_angst=pixel,
        box_size=N, tilt_noise_power=0.0,
    )  # fmt: skip
    # Same function, same arguments: the CTF^2 || multiplicity volumes are identical.
    torch.testing.assert_close(weights, want_weights, rtol=0.0, atol=0.0)
    got, want = _inside_nyquist(data), _inside_nyquist(want_data)
    # float64 throughout; each coefficient passes ~10 steps (FFTs of n^2 terms, phase
    # shifts, a sum over 5 slices), each with relative rounding <= n^2 u (Higham 3.1)
    # of values <= max|want|: n^2 u * 10 * max|want|.
    atol = N * N * 2.0**-53 * 10 * float(want.abs().max())
    torch.testing.assert_close(got, want, rtol=0.0, atol=atol)
    assert float(want.abs().max()) > 1e3 * atol  # not a comparison of zeros


def test_extracted_particle_equals_the_direct_model_at_fractional_centres(tmp_path):
    scene = grid_scene(N, seed=3, folder=tmp_path)
    gen = torch.Generator().manual_seed(4)
    spread = torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]], dtype=F64) * 1.4 * N
    centres = spread + torch.rand(2, 3, generator=gen, dtype=F64)  # sub-pixel everywhere
    _compare(scene, centres, torch.zeros(2, 3, dtype=F64))


def test_extracted_particle_equals_the_direct_model_with_a_pick_offset(tmp_path):
    # Whole-pixel centres, picks off by < 1/2 pixel along y: the boxes sit where the
    # pasted projections are, the particle lies at -origin in them, and the defocus is
    # unchanged (tilts about y, turns about z keep depth independent of y).
    scene = grid_scene(N, seed=5, folder=tmp_path)
    gen = torch.Generator().manual_seed(6)
    centres = torch.round(torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]], dtype=F64) * 1.4 * N)
    origins = torch.zeros(2, 3, dtype=F64)
    origins[:, 1] = torch.rand(2, generator=gen, dtype=F64) * 0.9 - 0.45
    _compare(scene, centres, origins)


def test_without_ctf_the_weights_are_the_multiplicity(tmp_path):
    scene = grid_scene(N, seed=7, folder=tmp_path)
    images = torch.zeros(5, *scene.geometry.image_size_px[::-1], dtype=F64)
    picks = torch.zeros(1, 3, dtype=F64)
    _, data, weights = _extract(scene, images, picks, use_ctf=False)
    torch.testing.assert_close(weights[:, :N], weights[:, N:], rtol=0.0, atol=0.0)
    assert float(weights[:, N:].max()) == 5.0  # five slices through the origin
    assert float(data.abs().max()) == 0.0
