"""Per-iteration plots of a run (PNG bytes): FSC curves, resolution, sampling, accuracy, changes.

Figures are drawn with matplotlib's object API on an Agg canvas of their own
(no pyplot, no global backend), at 100 dots per inch: a figure of ``w x h``
inches is ``100 w x 100 h`` pixels, shown at that size on the page. A plot
whose values are all unknown (NaN) is not drawn: the functions return None.
"""

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from cryorefine.report.run_history import IterationRecord, RunHistory

__all__ = [
    "DPI",
    "changes_plot",
    "figure_png",
    "fsc_plot",
    "new_figure",
    "resolution_plot",
    "rotation_plot",
    "translation_plot",
]

#: Dots per inch of every figure: pixels on the page per inch of figure size.
DPI = 100

_FSC_THRESHOLD = 0.143

#: At most about this many ticks on an iteration axis.
_MAX_ITERATION_TICKS = 12

#: Resolutions (Angstrom) labelled on the FSC plot's top axis, where they fall inside it.
_ANGSTROM_TICKS = (50.0, 20.0, 12.0, 8.0, 6.0, 5.0, 4.0, 3.5, 3.0, 2.5, 2.2, 2.0, 1.8, 1.6)


def new_figure(width_in: float, height_in: float) -> Figure:
    """A figure on its own Agg canvas, constrained layout, ``DPI`` dots per inch."""
    figure = Figure(figsize=(width_in, height_in), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def figure_png(figure: Figure) -> bytes:
    """The figure as PNG bytes, at its own size and ``DPI``, on a white background."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, facecolor="white")
    return buffer.getvalue()


@dataclass(frozen=True)
class _Series:
    label: str
    values: np.ndarray
    right_axis: bool = False
    marker: str = "o"
    step: bool = False


def _x(history: RunHistory) -> np.ndarray:
    return np.array([record.iteration for record in history.iterations], dtype=np.float64)


def _values(records: Sequence[IterationRecord], name: str, scale: float = 1.0) -> np.ndarray:
    return np.array([getattr(record, name) for record in records], dtype=np.float64) * scale


def _iteration_plot(
    history: RunHistory,
    series: list[_Series],
    *,
    title: str,
    left_label: str,
    right_label: str = "",
) -> bytes | None:
    shown = [s for s in series if np.isfinite(s.values).any()]
    if not shown:
        return None
    x = _x(history)
    final = np.array([record.is_final for record in history.iterations])
    figure = new_figure(6.4, 3.9)
    left = figure.add_subplot()
    right = left.twinx() if any(s.right_axis for s in shown) else None
    colours = iter(["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"])
    handles = []
    for s in shown:
        axis = right if s.right_axis and right is not None else left
        colour = next(colours)
        known = np.isfinite(s.values)
        if s.step:
            (line,) = axis.step(
                x[known], s.values[known], where="post", color=colour, label=s.label
            )
        else:
            (line,) = axis.plot(x[known], s.values[known], color=colour, label=s.label)
        axis.plot(x[known & ~final], s.values[known & ~final], s.marker, color=colour, ms=4)
        axis.plot(x[known & final], s.values[known & final], "*", color=colour, ms=11)
        handles.append(line)
    left.set_xlabel("iteration")
    left.set_ylabel(left_label)
    if right is not None:
        right.set_ylabel(right_label)
    _iteration_axis(left, x, final)
    left.set_title(title)
    left.grid(alpha=0.3)
    figure.legend(handles=handles, fontsize="small", loc="outside lower center", ncols=3)
    return figure_png(figure)


def _iteration_axis(axis: Axes, x: np.ndarray, final: np.ndarray) -> None:
    """Integer ticks over the iterations; the final iteration's tick reads "final"."""
    first, last = int(x.min()), int(x.max())
    axis.set_xlim(first - 0.5, last + 0.5)
    step = max(1, math.ceil((last - first) / _MAX_ITERATION_TICKS))
    ticks = list(range(first, last + 1, step))
    final_x = {int(value) for value in x[final]}
    ticks = sorted(set(ticks) | final_x)
    labels = ["final" if tick in final_x else str(tick) for tick in ticks]
    axis.set_xticks(ticks, labels)


def resolution_plot(history: RunHistory) -> bytes | None:
    """Resolution (Angstrom) and current image size (pixels) per iteration."""
    records = history.iterations
    return _iteration_plot(
        history,
        [
            _Series("resolution (Å)", _values(records, "resolution_angst")),
            _Series("current size (px)", _values(records, "current_size_px"), True, "s", step=True),
        ],
        title="Resolution and current image size",
        left_label="resolution (Å)",
        right_label="current size (px)",
    )


def rotation_plot(history: RunHistory) -> bytes | None:
    """Angular sampling step and the accuracy of rotations (degrees) per iteration."""
    records = history.iterations
    return _iteration_plot(
        history,
        [
            _Series("angular step (°)", _values(records, "angular_step_deg"), step=True),
            _Series("accuracy of rotations (°)", _values(records, "acc_rot_deg"), marker="s"),
            _Series("HEALPix order", _values(records, "healpix_order"), True, "^", step=True),
        ],
        title="Angular sampling and accuracy",
        left_label="degrees",
        right_label="HEALPix order",
    )


def translation_plot(history: RunHistory) -> bytes | None:
    """Offset search range and step, and the accuracy of translations (pixels) per iteration."""
    records = history.iterations
    pixel = history.pixel_size_angst
    per_pixel = 1.0 / pixel if math.isfinite(pixel) and pixel > 0 else math.nan
    return _iteration_plot(
        history,
        [
            _Series("offset range (px)", _values(records, "offset_range_px"), step=True),
            _Series("offset step (px)", _values(records, "offset_step_px"), step=True),
            _Series(
                "accuracy of translations (px)",
                _values(records, "acc_trans_angst", per_pixel),
                marker="s",
            ),
        ],
        title="Translational sampling and accuracy",
        left_label="pixels",
    )


def changes_plot(history: RunHistory) -> bytes | None:
    """Changes of the optimal orientations (degrees) and offsets (Angstrom) per iteration."""
    records = history.iterations
    return _iteration_plot(
        history,
        [
            _Series("changes in orientations (°)", _values(records, "changes_orientations_deg")),
            _Series("changes in offsets (Å)", _values(records, "changes_offsets_angst"), True, "s"),
        ],
        title="Changes in the optimal orientations and offsets",
        left_label="degrees",
        right_label="Å",
    )


def fsc_plot(history: RunHistory) -> bytes | None:
    """Gold-standard FSC of every iteration against resolution; the final curve in black."""
    curves = [(r, r.fsc) for r in history.iterations if r.fsc is not None]
    if not curves:
        return None
    figure = new_figure(10.0, 4.5)
    axis = figure.add_subplot()
    numbers = [r.iteration for r, _ in curves]
    norm = Normalize(vmin=min(numbers), vmax=max(max(numbers), min(numbers) + 1))
    colours = ScalarMappable(norm=norm, cmap="viridis")
    for record, fsc in curves:
        if record.is_final:
            axis.plot(fsc.resolution_inv_angst, fsc.fsc, color="black", lw=2.2, label="final")
        else:
            colour = colormaps["viridis"](norm(record.iteration))
            axis.plot(fsc.resolution_inv_angst, fsc.fsc, color=colour, lw=1.2)
    axis.axhline(_FSC_THRESHOLD, color="grey", ls="--", lw=1, label="FSC = 0.143")
    axis.axhline(0.0, color="grey", lw=0.5)
    axis.set_xlabel("resolution (1/Å)")
    axis.set_ylabel("gold-standard FSC")
    axis.set_ylim(-0.1, 1.05)
    highest = max(float(np.nanmax(fsc.resolution_inv_angst)) for _, fsc in curves)
    axis.set_xlim(0.0, highest * 1.02 if highest > 0 else 1.0)
    top = axis.twiny()
    top.set_xlim(axis.get_xlim())
    ticks = [a for a in _ANGSTROM_TICKS if 1.0 / a <= axis.get_xlim()[1]]
    top.set_xticks([1.0 / a for a in ticks], [f"{a:g}" for a in ticks])
    top.set_xlabel("resolution (Å)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize="small", loc="upper right")
    axis.set_title("FSC between the half maps, every iteration (colour: iteration)")
    if any(not record.is_final for record, _ in curves):
        colours.set_array(np.array(numbers, dtype=np.float64))
        figure.colorbar(colours, ax=[axis, top], label="iteration", pad=0.01)
    return figure_png(figure)
