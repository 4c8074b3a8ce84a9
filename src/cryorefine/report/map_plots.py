"""Plots of the particles' orientations and of the final map (PNG bytes).

The angular distribution is a Mollweide map of the projection directions: the
rot angle is the longitude and the tilt angle the distance from the north pole
(latitude ``90 - tilt``), RELION's ZYZ angles (``geometry.conventions``). Bins
are equal in solid angle (equal steps in longitude and in ``cos(tilt)``), so a
uniform distribution gives a uniform colour.

The map slices are the three central planes through voxel ``n // 2`` of a
``(z, y, x)`` map, drawn in pixels from the box centre with y and z pointing
up; the mask's 0.5 contour is drawn over them, and the centres of mass of the
map and of the mask (``centring``) are marked where given.
"""

import math

import numpy as np
from jaxtyping import Float
from matplotlib.axes import Axes

from cryorefine.report.plots import figure_png, new_figure

__all__ = [
    "MASK_CONTOUR_LEVEL",
    "angular_distribution_plot",
    "direction_histogram",
    "map_slices_plot",
]

#: The mask's outline is its contour at this value (masks run from 0 outside to 1 inside).
MASK_CONTOUR_LEVEL = 0.5

_LONGITUDE_BINS = 72
_LATITUDE_BINS = 36


def direction_histogram(
    rot_deg: Float[np.ndarray, " b"], tilt_deg: Float[np.ndarray, " b"]
) -> tuple[Float[np.ndarray, " u"], Float[np.ndarray, " v"], Float[np.ndarray, "v-1 u-1"]]:
    """Particles per bin of projection direction, bins of equal solid angle.

    Returns
    -------
    longitude_edges_rad, latitude_edges_rad, counts
        ``u = 73`` longitude edges (-pi..pi, from rot wrapped to [-180, 180)),
        ``v = 37`` latitude edges (``arcsin`` of equal steps in ``cos(tilt)``), and
        ``counts[latitude bin, longitude bin]``; every bin spans ``4 pi / (72 * 36)``
        steradians.
    """
    longitude = np.deg2rad((np.asarray(rot_deg, dtype=np.float64) + 180.0) % 360.0 - 180.0)
    cos_tilt = np.cos(np.deg2rad(np.asarray(tilt_deg, dtype=np.float64)))
    lon_edges = np.linspace(-math.pi, math.pi, _LONGITUDE_BINS + 1)
    sin_lat_edges = np.linspace(-1.0, 1.0, _LATITUDE_BINS + 1)
    counts, _, _ = np.histogram2d(longitude, cos_tilt, bins=(lon_edges, sin_lat_edges))
    return lon_edges, np.arcsin(sin_lat_edges), counts.T


def angular_distribution_plot(
    rot_deg: Float[np.ndarray, " b"], tilt_deg: Float[np.ndarray, " b"]
) -> bytes:
    """Particles per bin of projection direction on a Mollweide map (``direction_histogram``)."""
    lon_edges, lat_edges, counts = direction_histogram(rot_deg, tilt_deg)
    figure = new_figure(9.0, 4.8)
    axis = figure.add_subplot(projection="mollweide")
    mesh = axis.pcolormesh(lon_edges, lat_edges, np.ma.masked_equal(counts, 0.0), cmap="viridis")
    axis.grid(alpha=0.4)
    axis.set_title(
        f"Angular distribution of {len(np.asarray(rot_deg))} particles "
        "(longitude: rot; latitude: 90° − tilt)",
        pad=18,
    )
    figure.colorbar(
        mesh, ax=axis, orientation="horizontal", shrink=0.6, label="particles per bin (equal area)"
    )
    return figure_png(figure)


def _slice_panel(
    axis: Axes,
    image: np.ndarray,
    mask: np.ndarray | None,
    *,
    limits: tuple[float, float],
    axes_names: tuple[str, str],
    title: str,
    marks: list[tuple[str, np.ndarray, str, str]],
) -> None:
    rows, cols = image.shape
    extent = (
        -(cols // 2) - 0.5,
        cols - cols // 2 - 0.5,
        -(rows // 2) - 0.5,
        rows - rows // 2 - 0.5,
    )
    axis.imshow(image, cmap="gray", origin="lower", extent=extent, vmin=limits[0], vmax=limits[1])
    if mask is not None and mask.min() < MASK_CONTOUR_LEVEL < mask.max():
        x = np.arange(cols) - cols // 2
        y = np.arange(rows) - rows // 2
        axis.contour(x, y, mask, levels=[MASK_CONTOUR_LEVEL], colors="tab:orange", linewidths=1.5)
    axis.plot([0], [0], "+", color="tab:green", ms=14, mew=2, label="box centre")
    for label, point, marker, colour in marks:
        axis.plot(
            [point[0]], [point[1]], marker, color=colour, ms=9, mew=2, mfc="none", label=label
        )
    axis.set_xlabel(f"{axes_names[0]} (px from the box centre)")
    axis.set_ylabel(f"{axes_names[1]} (px)")
    axis.set_title(title)


def map_slices_plot(
    volume: Float[np.ndarray, "z y x"],
    mask: Float[np.ndarray, "z y x"] | None,
    *,
    map_centre_px: tuple[float, float, float] | None = None,
    mask_centre_px: tuple[float, float, float] | None = None,
) -> bytes:
    """Central slices in x, y and z with the mask's outline and the centres marked.

    Parameters
    ----------
    volume
        The map, ``(z, y, x)``.
    mask
        The mask on the same grid, or None (no outline).
    map_centre_px, mask_centre_px
        ``(x, y, z)`` pixels from the box centre (``centring.centre_of_mass_px``).
    """
    values = np.asarray(volume, dtype=np.float64)
    low, high = np.percentile(values, [0.5, 99.5])
    limits = (float(low), float(high) if high > low else float(low) + 1.0)
    nz, ny, nx = values.shape
    sizes = {"x": nx, "y": ny, "z": nz}
    cuts = [
        ("z", (slice(nz // 2, nz // 2 + 1), slice(None), slice(None)), (0, 1), ("x", "y")),
        ("y", (slice(None), slice(ny // 2, ny // 2 + 1), slice(None)), (0, 2), ("x", "z")),
        ("x", (slice(None), slice(None), slice(nx // 2, nx // 2 + 1)), (1, 2), ("y", "z")),
    ]
    figure = new_figure(13.0, 4.6)
    panels = figure.subplots(1, 3)
    for axis, (name, where, (h, v), names) in zip(panels, cuts, strict=True):
        marks = []
        for label, centre, marker, colour in (
            ("map centre of mass", map_centre_px, "x", "tab:red"),
            ("mask centre", mask_centre_px, "o", "tab:cyan"),
        ):
            if centre is not None and all(math.isfinite(c) for c in centre):
                marks.append((label, np.array([centre[h], centre[v]]), marker, colour))
        _slice_panel(
            axis,
            np.squeeze(values[where]),
            None if mask is None else np.squeeze(np.asarray(mask, dtype=np.float64)[where]),
            limits=limits,
            axes_names=names,
            title=f"{name} = {sizes[name] // 2} ({names[0]}–{names[1]} plane)",
            marks=marks,
        )
    panels[0].legend(fontsize="small", loc="lower left", framealpha=0.8)
    return figure_png(figure)
