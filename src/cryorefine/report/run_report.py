"""``write_report``: the HTML page of a refinement run (``cryorefine report``, end of ``refine``).

The page holds, from the run's files (``run_history``): the FSC curves of every
iteration; resolution and current image size, angular and translational
sampling with their accuracies, and the changes of orientations and offsets per
iteration; the particles' angular distribution (the last ``ROOT_data.star``);
central slices of the final map with the mask's outline; the offset between the
map's centre of mass and the mask's centre with the ``cryorefine star-handler
--center`` command that recentres the particles on the mask (``centring``);
and a table of the per-iteration numbers. What the files do not hold is said
on the page, under "Notes"; only a run with no file at all is an error.
"""

import html
import math
from dataclasses import dataclass, field
from pathlib import Path

from cryorefine.errors import InputError
from cryorefine.io import load_particles, write_atomically
from cryorefine.report.html import Section, image_html, page_html, table_html
from cryorefine.report.map_plots import angular_distribution_plot
from cryorefine.report.map_section import MapInputs, map_section, read_map_inputs
from cryorefine.report.plots import (
    changes_plot,
    fsc_plot,
    resolution_plot,
    rotation_plot,
    translation_plot,
)
from cryorefine.report.run_history import RunHistory, read_run_history

__all__ = ["default_report_path", "write_report"]


@dataclass
class _Page:
    """What the sections found out as they were built: notes and summary lines."""

    notes: list[str] = field(default_factory=list)
    summary: list[tuple[str, str]] = field(default_factory=list)


def default_report_path(run_root: Path | str) -> Path:
    """``ROOT_report.html`` beside the run's files (a folder stands for ``FOLDER/run``)."""
    root = Path(run_root)
    if root.is_dir():
        root = root / "run"
    return root.with_name(f"{root.name}_report.html")


def _number(value: float, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if math.isfinite(value) else "–"


def _plots_section(history: RunHistory, page: _Page) -> list[Section]:
    sections = []
    fsc = fsc_plot(history)
    if fsc is None:
        page.notes.append("no FSC curve in the run's model files: the FSC plot is not drawn")
    else:
        caption = "Dashed: FSC = 0.143, the gold-standard resolution criterion."
        sections.append(Section("FSC per iteration", image_html(fsc, alt="FSC", caption=caption)))
    figures = []
    for plot, alt in (
        (resolution_plot, "resolution and current size"),
        (rotation_plot, "angular sampling and accuracy"),
        (translation_plot, "translational sampling and accuracy"),
        (changes_plot, "changes in orientations and offsets"),
    ):
        png = plot(history)
        if png is None:
            page.notes.append(f"no values for the plot of {alt} in the run's files")
        else:
            figures.append(image_html(png, alt=alt))
    if figures:
        body = f'<div class="plots">{"".join(figures)}</div>'
        sections.append(Section("Per iteration", body))
    return sections


def _angles_section(history: RunHistory, page: _Page) -> list[Section]:
    data = history.files.latest("data")
    if data is None:
        page.notes.append("no particle file (ROOT_data.star): no angular distribution")
        return []
    try:
        particles = load_particles(data, check_images=False)
    except InputError as error:
        page.notes.append(f"skipped the angular distribution: {error}")
        return []
    page.summary.append(("particles", f"{len(particles)} ({data.name})"))
    if len(particles) == 0:
        page.notes.append(f"{data}: no particles: no angular distribution")
        return []
    angles = particles.angles_deg()
    png = angular_distribution_plot(angles[:, 0], angles[:, 1])
    caption = f"Projection directions of the particles in {data.name}."
    return [
        Section(
            "Angular distribution", image_html(png, alt="angular distribution", caption=caption)
        )
    ]


def _iteration_table(history: RunHistory) -> Section:
    header = [
        "iteration",
        "resolution (Å)",
        "current size (px)",
        "HEALPix order",
        "angular step (°)",
        "offset range (px)",
        "offset step (px)",
        "accuracy rot (°)",
        "accuracy trans (Å)",
        "changes orient (°)",
        "changes offsets (Å)",
    ]
    rows = [
        [
            "final" if r.is_final else str(r.iteration),
            _number(r.resolution_angst),
            _number(r.current_size_px, 0),
            _number(r.healpix_order, 0),
            _number(r.angular_step_deg, 3),
            _number(r.offset_range_px),
            _number(r.offset_step_px),
            _number(r.acc_rot_deg),
            _number(r.acc_trans_angst),
            _number(r.changes_orientations_deg),
            _number(r.changes_offsets_angst),
        ]
        for r in history.iterations
    ]
    return Section("Numbers per iteration", table_html(header, rows, text_columns=1))


def _intro(history: RunHistory, page: _Page) -> str:
    final = [r for r in history.iterations if math.isfinite(r.resolution_angst)]
    finished = any(r.is_final for r in history.iterations)
    lines = [
        ("run", str(history.files.root)),
        ("state", "finished (final files written)" if finished else "not finished"),
        # iteration 0 is the start (RELION's run_it000 files), not an iteration run
        ("iterations", str(sum(1 for r in history.iterations if r.is_final or r.iteration > 0))),
        ("resolution", f"{_number(final[-1].resolution_angst)} Å" if final else "–"),
        ("pixel size", f"{_number(history.pixel_size_angst, 3)} Å"),
        ("box", f"{history.ori_size_px} px" if history.ori_size_px else "–"),
        ("symmetry", history.symmetry or "–"),
        *page.summary,
    ]
    rows = [[name, value] for name, value in lines]
    body = table_html(["", ""], rows, text_columns=2)
    if page.notes:
        items = "".join(f"<li>{html.escape(note)}</li>" for note in page.notes)
        body += f'<h2>Notes</h2><ul class="note">{items}</ul>'
    return body


def write_report(
    run_root: Path | str,
    output: Path | str | None = None,
    *,
    mask: Path | str | None = None,
) -> Path:
    """Write the run's report: one self-contained HTML page (module docstring).

    Parameters
    ----------
    run_root
        The run's output root (``--o`` of refine, e.g. ``Refine3D/job012/run``) or its folder.
    output
        The HTML file; default ``ROOT_report.html`` (``default_report_path``).
    mask
        Mask for the outline and the centring; default the run's ``--solvent_mask``
        if its optimiser file names one, else none (the page says so).

    Returns
    -------
    Path
        The written page.

    Raises
    ------
    InputError
        No file of a run with that root exists, or ``mask`` is given but cannot be
        used (missing, unreadable, another box than the map's).
    """
    history = read_run_history(run_root)
    page = _Page(notes=list(history.notes))
    target = Path(output) if output is not None else default_report_path(run_root)
    sections = _plots_section(history, page)
    sections += _angles_section(history, page)
    inputs: MapInputs = read_map_inputs(history, mask, page.notes)
    page.summary += inputs.summary
    sections += map_section(history, inputs, page.notes)
    sections.append(_iteration_table(history))
    text = page_html(f"cryorefine report: {history.files.root}", _intro(history, page), sections)

    def write(partial: Path) -> None:
        partial.write_text(text, encoding="utf-8")

    target.parent.mkdir(parents=True, exist_ok=True)
    return write_atomically(target, write)
