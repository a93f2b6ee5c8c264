"""Rendering only: results in, files' contents out. Nothing here knows what a study or a run is.

- :mod:`.tables`: markdown, CSV, strict JSON and LaTeX tables;
- :mod:`.pages`: self-contained HTML pages;
- :mod:`.figures`: sample grids and rows, loss curves, metrics against T, the invariance plot;
- :mod:`.provenance`: version, commit, command line and time of a result.

What goes into a study's or a comparison's files is decided by :mod:`nonnormal.study_report` and
:mod:`nonnormal.compare`; the names below are the ones they (and the CLI) use.
"""

from .figures import (
    image_grid,
    plot_invariance,
    plot_loss_curves,
    plot_metric_vs_T,
    plot_sample_rows,
    plot_scatter,
    save_grid,
)
from .pages import esc, html_image, html_list, html_page, html_pre, html_table
from .provenance import provenance
from .tables import PREAMBLE, cell, csv_text, json_table, latex_table, markdown_table, tex

__all__ = [
    "PREAMBLE",
    "cell",
    "csv_text",
    "esc",
    "html_image",
    "html_list",
    "html_page",
    "html_pre",
    "html_table",
    "image_grid",
    "json_table",
    "latex_table",
    "markdown_table",
    "plot_invariance",
    "plot_loss_curves",
    "plot_metric_vs_T",
    "plot_sample_rows",
    "plot_scatter",
    "provenance",
    "save_grid",
    "tex",
]
