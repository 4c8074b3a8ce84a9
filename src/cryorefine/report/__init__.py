"""report layer: one self-contained HTML page with the plots of a refinement run.

``write_report(run_root, output)`` reads the run's per-iteration files
(``run_history``), draws the plots (``plots``, ``map_plots``), measures where the
map sits against its mask (``centring``) and writes the page (``html``).
"""

from cryorefine.report.centring import centre_of_mass_px, map_mask_offset_px, recentre_command
from cryorefine.report.html import Section, image_html, page_html, table_html
from cryorefine.report.map_plots import (
    MASK_CONTOUR_LEVEL,
    angular_distribution_plot,
    direction_histogram,
    map_slices_plot,
)
from cryorefine.report.map_section import MapInputs, map_section, read_map_inputs
from cryorefine.report.plots import (
    DPI,
    changes_plot,
    figure_png,
    fsc_plot,
    new_figure,
    resolution_plot,
    rotation_plot,
    translation_plot,
)
from cryorefine.report.run_files import (
    FILE_KINDS,
    RunFiles,
    command_line_option,
    find_run_files,
    solvent_mask_name,
)
from cryorefine.report.run_history import (
    FscCurve,
    IterationRecord,
    RunHistory,
    read_run_history,
)
from cryorefine.report.run_log import LOG_KEYS, read_run_log
from cryorefine.report.run_report import default_report_path, write_report

__all__ = [
    "DPI",
    "FILE_KINDS",
    "LOG_KEYS",
    "MASK_CONTOUR_LEVEL",
    "FscCurve",
    "IterationRecord",
    "MapInputs",
    "RunFiles",
    "RunHistory",
    "Section",
    "angular_distribution_plot",
    "centre_of_mass_px",
    "changes_plot",
    "command_line_option",
    "default_report_path",
    "direction_histogram",
    "figure_png",
    "find_run_files",
    "fsc_plot",
    "image_html",
    "map_mask_offset_px",
    "map_section",
    "map_slices_plot",
    "new_figure",
    "page_html",
    "read_map_inputs",
    "read_run_history",
    "read_run_log",
    "recentre_command",
    "resolution_plot",
    "rotation_plot",
    "solvent_mask_name",
    "table_html",
    "translation_plot",
    "write_report",
]
