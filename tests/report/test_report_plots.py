"""Plots and page pieces: equal-area direction bins, PNG sizes, omitted empty plots, escaping."""

import base64
import io
import math

import numpy as np
import torch
from matplotlib import image as mpimg
from report_fake_run import write_fake_run

from cryorefine.report import (
    DPI,
    changes_plot,
    direction_histogram,
    fsc_plot,
    image_html,
    map_slices_plot,
    read_run_history,
    resolution_plot,
    rotation_plot,
    table_html,
    translation_plot,
)


def _slow_histogram(rot_deg, tilt_deg, lon_edges, lat_edges):
    """Float64, particle by particle: find the bin of (wrapped rot, 90 - tilt) by search."""
    counts = np.zeros((len(lat_edges) - 1, len(lon_edges) - 1))
    for rot, tilt in zip(rot_deg, tilt_deg, strict=True):
        lon = math.radians((rot + 180.0) % 360.0 - 180.0)
        lat = math.asin(math.cos(math.radians(tilt)))  # 90 deg - tilt, for tilt in [0, 180]
        i = next(k for k in range(len(lon_edges) - 1) if lon < lon_edges[k + 1] or k == 71)
        j = next(k for k in range(len(lat_edges) - 1) if lat < lat_edges[k + 1] or k == 35)
        counts[j, i] += 1
    return counts


def test_direction_histogram_matches_a_particle_by_particle_float64_binning():
    gen = torch.Generator().manual_seed(4)
    rot = (torch.rand(500, generator=gen, dtype=torch.float64) * 800.0 - 400.0).numpy()
    tilt = (torch.rand(500, generator=gen, dtype=torch.float64) * 180.0).numpy()
    lon_edges, lat_edges, counts = direction_histogram(rot, tilt)
    want = _slow_histogram(rot, tilt, lon_edges, lat_edges)
    # Angles 1e-3 deg or more from an edge land in the same bin in both (float64 rounding of
    # the wrap and the sine is ~1e-14 deg); count the particles that are not that close.
    lon = np.radians((rot + 180.0) % 360.0 - 180.0)
    lat = np.arcsin(np.cos(np.radians(tilt)))
    near = np.min(np.abs(lon[:, None] - lon_edges[None]), axis=1) < math.radians(1e-3)
    near |= np.min(np.abs(lat[:, None] - lat_edges[None]), axis=1) < math.radians(1e-3)
    assert near.sum() == 0
    np.testing.assert_array_equal(counts, want)
    assert counts.sum() == 500


def test_direction_bins_have_equal_solid_angle():
    lon_edges, lat_edges, _ = direction_histogram(np.zeros(1), np.zeros(1))
    # Solid angle of a bin: d(longitude) * d(sin latitude).
    solid = np.diff(lon_edges)[None, :] * np.diff(np.sin(lat_edges))[:, None]
    np.testing.assert_allclose(solid, 4 * math.pi / (72 * 36), rtol=1e-12)
    assert math.isclose(solid.sum(), 4 * math.pi, rel_tol=1e-12)


def test_uniform_directions_fill_every_latitude_band_alike():
    gen = torch.Generator().manual_seed(5)
    count = 72_000
    rot = (torch.rand(count, generator=gen, dtype=torch.float64) * 360.0 - 180.0).numpy()
    cos_tilt = torch.rand(count, generator=gen, dtype=torch.float64) * 2.0 - 1.0
    tilt = np.degrees(np.arccos(cos_tilt.numpy()))  # uniform on the sphere
    _, _, counts = direction_histogram(rot, tilt)
    bands = counts.sum(axis=1)
    # Each band holds 1/36 of the directions: binomial, mean 2000, sd sqrt(2000 * 35/36) ~ 44;
    # 36 bands all within 5 sd fail with probability < 36 * 6e-7.
    assert np.abs(bands - count / 36).max() < 5 * math.sqrt(count / 36 * 35 / 36)


def test_the_north_pole_and_rot_180_land_in_the_edge_bins():
    _, _, counts = direction_histogram(np.array([180.0, -180.0, 0.0]), np.array([90.0, 90.0, 0.0]))
    assert counts[:, 0].sum() == 2  # rot = +-180 wraps to -180: the first longitude bin
    assert counts[-1].sum() == 1  # tilt 0 is the north pole: the last latitude band


def test_plots_have_the_pixel_size_of_their_figure(tmp_path):
    history = read_run_history(write_fake_run(tmp_path, iterations=3).root)
    for plot, size in (
        (fsc_plot, (10.0, 4.5)),
        (resolution_plot, (6.4, 3.9)),
        (rotation_plot, (6.4, 3.9)),
        (translation_plot, (6.4, 3.9)),
        (changes_plot, (6.4, 3.9)),
    ):
        pixels = mpimg.imread(io.BytesIO(plot(history)), format="png")
        assert pixels.shape[:2] == (round(size[1] * DPI), round(size[0] * DPI)), plot.__name__


def test_plots_without_values_are_omitted(tmp_path):
    run = write_fake_run(
        tmp_path, iterations=1, finished=False, skip={"optimiser": [0], "sampling": [0]}
    )
    history = read_run_history(run.root)
    assert fsc_plot(history) is None  # iteration 0 has no FSC yet
    assert rotation_plot(history) is None
    assert translation_plot(history) is None
    assert changes_plot(history) is None
    assert resolution_plot(history) is not None


def test_map_slices_are_drawn_without_a_mask_and_with_one_that_misses_a_slice():
    volume = torch.randn(16, 16, 16, generator=torch.Generator().manual_seed(6)).numpy()
    mask = np.zeros((16, 16, 16))
    mask[8, 6:10, 6:10] = 1.0  # crosses 0.5 in the z-slice only
    for with_mask in (None, mask):
        pixels = mpimg.imread(io.BytesIO(map_slices_plot(volume, with_mask)), format="png")
        assert pixels[..., :3].std() > 0.05


def test_image_and_table_html_escape_their_text():
    png = b"\x89PNG\r\n\x1a\n"
    img = image_html(png, alt='a "b" <c>', caption="x < y")
    assert 'alt="a &quot;b&quot; &lt;c&gt;"' in img
    assert "<figcaption>x &lt; y</figcaption>" in img
    assert base64.b64encode(png).decode() in img
    table = table_html(["", ""], [["<b>", "1"]], text_columns=1)
    assert "<thead>" not in table
    assert '<td class="text">&lt;b&gt;</td><td>1</td>' in table
