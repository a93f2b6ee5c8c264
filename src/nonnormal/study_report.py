"""A study's files: ``study.json`` (strict JSON), ``study.md``, ``study.html``, ``table.tex``,
``metrics_vs_T.png`` and a Figure-1 grid per T. What goes in them is decided here; how each is
rendered is :mod:`nonnormal.report`'s. Columns, units and plotted metrics come from the metrics
table (:mod:`nonnormal.metrics.table`)."""

from __future__ import annotations

import math
from pathlib import Path

from .files import json_text, write_atomic
from .metrics import table as metric_table
from .report import (
    html_image,
    html_list,
    html_page,
    html_pre,
    html_table,
    latex_table,
    markdown_table,
    plot_metric_vs_T,
    plot_sample_rows,
    provenance,
)
from .stats import words
from .study_findings import own_T_sample

KEYS = ["pair", "T_train", "sampler", "T_sample", "law_sample"]
AXIS_KEYS = ["pair", "T_train", "conditional", "sampler", "T_sample", "law_sample"]  # a study with conditional models
COMPARISON_COLUMNS = [
    "T_train",
    "T_sample",
    "model",
    "metric",
    "which",
    "vs",
    "n",
    "diff",
    "lo",
    "hi",
    "dof",
    "verdict",
]


def summarize(rows: list[dict], keys: list[str], metrics: list[str]) -> list[dict]:
    """Mean and sd over seeds of ``metrics`` for each distinct value of ``keys``, in first-seen order."""
    import numpy as np

    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k) for k in keys), []).append(r)
    out = []
    for key, members in groups.items():
        row = dict(zip(keys, key))
        row["seeds"] = len(members)
        for m in metrics:
            vals = [r[m] for r in members if isinstance(r.get(m), (int, float)) and math.isfinite(r[m])]
            row[m] = float(np.mean(vals)) if vals else None
            row[m + "_sd"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else None
        out.append(row)
    return out


def comparison_columns(comparisons: list[dict]) -> list[str]:
    """The comparison table's columns: with a ``conditional`` column (the group) in a study with conditional models."""
    if not any("conditional" in c or c["kind"] == "conditional" for c in comparisons):
        return COMPARISON_COLUMNS
    return ["T_train", "conditional", *COMPARISON_COLUMNS[1:]]


def comparison_rows(comparisons: list[dict]) -> list[dict]:
    """One flat row per compared pair (or swapped law, or conditional model) for the tables."""
    flat = []
    for c in comparisons:
        for r in c["rows"]:
            flat.append(
                {
                    "T_train": c["T_train"],
                    **({"conditional": c["conditional"]} if "conditional" in c else {}),
                    "T_sample": c.get("T_sample"),
                    "model": c.get("pair", ""),
                    "metric": c["metric"],
                    "vs": c["reference"],
                    "which": r["pair"],
                    "n": r["n"],
                    "diff": r["diff"],
                    "lo": r["lo"],
                    "hi": r["hi"],
                    "dof": c["dof"],
                    "verdict": "exact" if r.get("exact") else words(r),
                }
            )
    return flat


def metric_series(rows: list[dict], plan: dict, metrics: list[str]) -> dict[str, dict[str, dict[int, list[float]]]]:
    """``series[metric][label][T_train] = [value per seed]``: each pair's own-law walk at its own T, and the ODE
    (one line per set of weights: pairs sharing weights share one ODE line)."""
    series: dict[str, dict[str, dict[int, list[float]]]] = {}
    seen = set()
    for r in rows:
        own = (
            r["sampler"] == "walk"
            and r["law_sample"] == r["p"]
            and r["T_sample"] == own_T_sample(plan["T_sample"], r["T_train"])
        )
        label = r["pair"] if own else (f"ODE ({r['weights_from']})" if r["sampler"] == "ode" else None)
        if label is not None and r.get("conditional"):
            label += " conditional"
        if label is None or (label, r["T_train"], r["seed"]) in seen:
            continue
        seen.add((label, r["T_train"], r["seed"]))
        for m in metrics:
            if isinstance(r.get(m), (int, float)) and not (r["sampler"] == "ode" and m in ("bpd_ode", "bpd_bound")):
                series.setdefault(m, {}).setdefault(label, {}).setdefault(r["T_train"], []).append(r[m])
    return series


def setting_label(row: dict) -> str:
    """A sampler setting in a few words: ``walk T=10 laplace`` or ``ode``."""
    if row.get("sampler") == "ode":
        return "ode"
    return f"walk T={row.get('T_sample')} {row.get('law_sample')}"


def tex_rows(table: list[dict], metrics: list[str]) -> list[dict]:
    """Summary rows with one ``setting`` column and each metric as ``mean ± sd`` text (the narrow form)."""
    from .report import cell

    out = []
    for r in table:
        row = {"pair": r["pair"], "T_train": r["T_train"], "setting": setting_label(r), "seeds": r["seeds"]}
        if "conditional" in r:
            row["setting"] += " conditional" if r["conditional"] else ""
        for m in metrics:
            mean, sd = cell(r.get(m)), cell(r.get(m + "_sd"), 2)
            row[m] = f"{mean} ± {sd}" if mean and sd else mean
        out.append(row)
    return out


def write_study(out: str | Path, result: dict, figures: dict[int, dict], config: dict) -> list[str]:
    """study.json, study.md, study.html, table.tex and the plots of a study; returns the file names.

    study.json is written last: its presence means the study is finished."""
    out = Path(out)
    units = metric_table.units()
    meta = {**provenance(), "dataset": result["dataset"], "plan": result["plan"], "seconds": result["seconds"]}
    slim = [{k: v for k, v in r.items() if not k.endswith("_images")} for r in result["rows"]]
    payload = {
        "provenance": meta,
        "config": config,
        "units": units,
        "findings": result["findings"],
        "rows": slim,
        "comparisons": result["comparisons"],
    }
    metrics = metric_table.names("images")
    keys = AXIS_KEYS if "conditional" in result["plan"] else KEYS
    table = summarize(slim, keys, metrics)
    columns = keys + ["seeds"] + [c for m in metrics for c in (m, m + "_sd")]
    flat = comparison_rows(result["comparisons"])
    comparison_cols = comparison_columns(result["comparisons"])
    headline = metric_table.names("images", headline=True)
    files = ["study.json", "study.md", "study.html", "table.tex", "metrics_vs_T.png"]
    tmp = out / ".metrics_vs_T.tmp.png"
    plot_metric_vs_T(
        metric_series(slim, result["plan"], headline),
        headline,
        tmp,
        f"{result['dataset']}: metrics against T (band: min-max over seeds)",
        units,
    )
    tmp.replace(out / "metrics_vs_T.png")
    for T, rows in figures.items():
        tmp = out / f".figure1-T{T}.tmp.png"
        title = f"{result['dataset']}: T={T}, own law per row, one sample seed for every row"
        if "conditional" in result["plan"]:
            title += " (conditional rows: classes in the training profile)"
        plot_sample_rows(rows, tmp, title)
        tmp.replace(out / f"figure1-T{T}.png")
        files.append(f"figure1-T{T}.png")
    md = [f"# Study: {result['dataset']}", "", "## Findings", ""] + [f"- {f}" for f in result["findings"]]
    md += [
        "",
        "## Rows (mean and sd over seeds)",
        "",
        markdown_table(table, columns, units),
        "## Seed-paired comparisons",
        "",
        markdown_table(flat, comparison_cols),
        f"_nonnormal {meta['version']}, commit {meta['commit']}; command: `{meta['command']}`_",
        "",
    ]
    write_atomic(out / "study.md", "\n".join(md).encode())
    write_atomic(
        out / "table.tex",
        latex_table(
            tex_rows(table, metrics),
            ["pair", "T_train", "setting", "seeds"] + metrics,
            f"Study on {result['dataset']}: mean ± sd over seeds",
            units,
            keys=["pair", "T_train", "setting"],
        ).encode(),
    )
    sections = [
        ("Findings", html_list(result["findings"])),
        ("Metrics against T", html_image(out / "metrics_vs_T.png", "metrics vs T")),
    ]
    sections += [(f"Figure 1 at T={T}", html_image(out / f"figure1-T{T}.png", f"figure 1 T={T}")) for T in figures]
    sections += [
        ("Rows (mean and sd over seeds)", html_table(table, columns, units)),
        ("Seed-paired comparisons", html_table(flat, comparison_cols)),
        ("Config", html_pre(json_text(config))),
    ]
    write_atomic(out / "study.html", html_page(f"nonnormal study: {result['dataset']}", sections, meta).encode())
    write_atomic(out / "study.json", json_text(payload).encode())  # last: its presence means the study is finished
    return files
