"""Tables from rows (dicts) and column names: markdown, CSV, strict JSON and LaTeX.

``units`` (``{column: unit}``) come from the one metrics table (:func:`nonnormal.metrics.table.units`)
plus the few derived columns a caller defines; every file of one table uses the same column names.

LaTeX: :func:`latex_table` writes ``tabular`` environments that compile with the preamble stated in
its first line (``\\documentclass{article}\\usepackage{booktabs}``); TeX's special characters
(``\\ _ % & # $ { } ^ ~``) are escaped, and a table wider than ``max_columns`` is split into
several, each repeating the ``keys`` columns.
"""

from __future__ import annotations

import csv
import io
import math

from ..files import json_text

PREAMBLE = r"\documentclass{article}\usepackage{booktabs}"
MAX_COLUMNS = 8  # more do not fit a page in a readable size


def cell(v, digits: int = 4) -> str:
    """One value as table text: floats to ``digits`` significant digits, booleans as yes/no, None/NaN empty."""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return "" if not math.isfinite(v) else f"{v:.{digits}g}"
    return "" if v is None else str(v)


def markdown_table(rows: list[dict], columns: list[str], units: dict[str, str] | None = None) -> str:
    """A GitHub-markdown table; ``units`` adds each column's unit to its header (``|`` escaped)."""

    def md(text: str) -> str:
        return text.replace("|", "\\|")

    head = [md(c + (f" ({units[c]})" if units and units.get(c) else "")) for c in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(md(cell(r.get(c))) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def csv_text(rows: list[dict], columns: list[str]) -> str:
    """CSV with a header line; missing values empty."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows({c: _csv_value(r.get(c)) for c in columns} for r in rows)
    return buf.getvalue()


def _csv_value(v):
    return "" if v is None or (isinstance(v, float) and not math.isfinite(v)) else v


def json_table(rows: list[dict], columns: list[str]) -> str:
    """Strict JSON: a list of objects with exactly ``columns`` (null for missing, NaN and infinities)."""
    return json_text([{c: r.get(c) for c in columns} for r in rows])


_TEX = {
    "\\": r"\textbackslash{}",
    "_": r"\_",
    "%": r"\%",
    "&": r"\&",
    "#": r"\#",
    "$": r"\$",
    "{": r"\{",
    "}": r"\}",
    "^": r"\textasciicircum{}",
    "~": r"\textasciitilde{}",
    "±": r"$\pm$",
    "²": r"\textsuperscript{2}",
    "|": r"\textbar{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
}


def tex(text: str) -> str:
    """``text`` with TeX's special characters escaped (safe in a table cell or a caption)."""
    return "".join(_TEX.get(ch, ch) for ch in str(text))


def _chunks(columns: list[str], keys: list[str], max_columns: int) -> list[list[str]]:
    rest = [c for c in columns if c not in keys]
    width = max(1, max_columns - len(keys))
    parts = [rest[i : i + width] for i in range(0, len(rest), width)] or [[]]
    return [keys + p for p in parts]


def latex_table(
    rows: list[dict],
    columns: list[str],
    caption: str = "",
    units: dict[str, str] | None = None,
    keys: list[str] | None = None,
    max_columns: int = MAX_COLUMNS,
) -> str:
    """``table`` environments (booktabs rules) for a paper's appendix, at most ``max_columns`` wide.

    A wider table is split into parts of ``keys`` (default: the first column) plus the next columns,
    each part its own ``table`` with "(part i of n)" in the caption. The first line is a comment
    naming the preamble it needs.
    """
    keys = [c for c in (keys if keys is not None else columns[:1]) if c in columns]
    parts = _chunks(columns, keys, max_columns)
    out = [f"% needs booktabs: compiles with {PREAMBLE} ... \\begin{{document}} \\input{{this file}} \\end{{document}}"]
    for i, cols in enumerate(parts, 1):
        head = " & ".join(tex(c) for c in cols) + " \\\\"
        if units and any(units.get(c) for c in cols):  # a second header line: each column's unit, small
            head += "\n" + " & ".join(f"{{\\footnotesize {tex(units[c])}}}" if units.get(c) else "" for c in cols)
            head += " \\\\"
        body = "\n".join(" & ".join(tex(cell(r.get(c))) for c in cols) + r" \\" for r in rows)
        title = caption + (f" (part {i} of {len(parts)})" if len(parts) > 1 else "")
        cap = f"\\caption{{{tex(title)}}}\n" if title else ""
        out.append(
            f"\\begin{{table}}[h]\n\\centering\n{cap}\\begin{{tabular}}{{{'l' * len(cols)}}}\n\\toprule\n"
            f"{head}\n\\midrule\n{body}\n\\bottomrule\n\\end{{tabular}}\n\\end{{table}}\n"
        )
    return "\n".join(out)
