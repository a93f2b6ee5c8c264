"""Figures. matplotlib is imported only when a figure is drawn (Agg backend, no display)."""

from __future__ import annotations

import json
import math
from pathlib import Path


def plot_invariance(result: dict[str, dict[int, float]], path: str | Path, title: str = "") -> None:
    """Log-log plot of W1 to the Gaussian limit against the number of steps, one line per law."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=120)
    for law, row in result.items():
        steps = sorted(row)
        style = dict(color="black", linestyle="--", marker="o") if law == "gaussian" else dict(marker="o")
        label = "gaussian (sampling noise)" if law == "gaussian" else law
        ax.plot(steps, [row[T] for T in steps], label=label, **style)
    ax.set_xscale("log", base=2)
    all_steps = sorted({T for row in result.values() for T in row})
    ax.set_xticks(all_steps, [str(T) for T in all_steps])
    ax.set_yscale("log")
    ax.set_xlabel("number of steps T")
    ax.set_ylabel("W1(terminal walk, Gaussian limit)")
    ax.set_title(title or "Invariance: non-normal walks approach the Gaussian limit", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def image_grid(x, nrow: int, pad: int = 1, scale: int = 1):
    """Images in [-1, 1] (n, C, H, W) as one uint8 array (rows of ``nrow``), padded with white lines."""
    import numpy as np

    x = np.asarray(x.detach().cpu().float() if hasattr(x, "detach") else x, dtype=np.float32)
    n, C, H, W = x.shape
    rows = -(-n // nrow)
    grid = np.full((rows * (H + pad) + pad, nrow * (W + pad) + pad, C), 255, dtype=np.uint8)
    pix = np.clip(np.rint((x + 1) * 127.5), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
    for i in range(n):
        r, c = divmod(i, nrow)
        grid[pad + r * (H + pad) : pad + r * (H + pad) + H, pad + c * (W + pad) : pad + c * (W + pad) + W] = pix[i]
    grid = grid.repeat(scale, 0).repeat(scale, 1)
    return grid[..., 0] if C == 1 else grid


def save_grid(x, path: str | Path, nrow: int = 8) -> None:
    """A PNG grid of images in [-1, 1], upscaled so that small images stay visible."""
    from PIL import Image

    H = x.shape[-2]
    Image.fromarray(image_grid(x, nrow, scale=max(1, 64 // H))).save(path)


def plot_scatter(clouds: dict[str, object], path: str | Path, title: str = "") -> None:
    """2-D point clouds, one colour each (the first drawn last, on top)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 5), dpi=120)
    for i, (label, x) in reversed(list(enumerate(clouds.items()))):
        x = x.detach().cpu().double().numpy() if hasattr(x, "detach") else x
        ax.scatter(x[:, 0], x[:, 1], s=3, alpha=0.5 if i else 0.8, color=f"C{i}", label=f"{label} ({len(x)})")
    ax.set_aspect("equal")
    ax.legend(fontsize=8, markerscale=3)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_sample_rows(rows: dict[str, object], path: str | Path, title: str = "") -> None:
    """Figure 1: one row of samples per (q, p) pair, the same seeds in every column."""
    plt = _plt()
    n = len(rows)
    fig, axes = plt.subplots(n, 1, figsize=(10, 1.0 + 0.9 * n), dpi=130, squeeze=False)
    for ax, (label, x) in zip(axes[:, 0], rows.items()):
        ax.imshow(image_grid(x, nrow=x.shape[0]), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    fig.suptitle(title or "Samples, one row per (q, p) pair, same seeds in every column", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_loss_curves(curves: dict[str, list[tuple[int, float]]], path: str | Path, title: str = "") -> None:
    """Training loss (bits/dim of the bound's diffusion part, without its constant) per pair."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=120)
    for label, points in curves.items():
        if points:
            steps, values = zip(*points)
            ax.plot(steps, values, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss - T K(0) / ln 2 (bits/dim)")
    ax.set_yscale("log")
    ax.set_title(title or "Training loss per pair", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def html_report(
    title: str, intro: str, table_md_rows: list[dict], columns: list[str], images: dict[str, Path], notes: list[str]
) -> str:
    """One self-contained HTML page: the table, then each image (embedded as base64 PNG)."""
    import base64
    import html

    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else html.escape(str(v))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(c, ''))}</td>" for c in columns) + "</tr>" for r in table_md_rows)
    figs = "".join(
        f"<h2>{html.escape(name)}</h2><img alt='{html.escape(name)}' src='data:image/png;base64,"
        f"{base64.b64encode(Path(p).read_bytes()).decode()}'>"
        for name, p in images.items()
    )
    items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse}}td,th{{border:1px solid #bbb;padding:4px 8px;text-align:right}}
img{{max-width:100%;image-rendering:pixelated}}</style></head><body>
<h1>{html.escape(title)}</h1><p>{html.escape(intro)}</p>
<table><tr>{head}</tr>{body}</table><ul>{items}</ul>{figs}</body></html>
"""


def provenance() -> dict:
    """What made a result: package version, git commit (when run from a checkout), command line, time."""
    import subprocess
    import sys
    import time

    from . import __version__

    commit = "unknown"
    try:
        res = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
        if res.returncode == 0:
            dirty = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=Path(__file__).parent,
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
            commit = res.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "version": __version__,
        "commit": commit,
        "command": " ".join(sys.argv),
        "time": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def _cell(v, digits: int = 4) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.{digits}g}"
    return "" if v is None else str(v)


def markdown_table(rows: list[dict], columns: list[str], units: dict[str, str] | None = None) -> str:
    """A GitHub-markdown table; ``units`` adds a unit line under the header."""
    head = [c + (f" ({units[c]})" if units and units.get(c) else "") for c in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def latex_table(rows: list[dict], columns: list[str], caption: str = "", units: dict[str, str] | None = None) -> str:
    """A ``tabular`` (booktabs) for a paper's appendix; underscores and other TeX specials escaped."""

    def tex(s: str) -> str:
        s = s.replace("\\", r"\textbackslash{}")
        for a in "_%&#$":
            s = s.replace(a, "\\" + a)
        return s.replace("±", r"$\pm$")

    head = " & ".join(tex(c) + (f" [{tex(units[c])}]" if units and units.get(c) else "") for c in columns)
    body = "\n".join(" & ".join(tex(_cell(r.get(c))) for c in columns) + r" \\" for r in rows)
    cap = f"\\caption{{{tex(caption)}}}\n" if caption else ""
    return (
        f"\\begin{{table}}[h]\n\\centering\n{cap}\\begin{{tabular}}{{{'l' * len(columns)}}}\n\\toprule\n"
        f"{head} \\\\\n\\midrule\n{body}\n\\bottomrule\n\\end{{tabular}}\n\\end{{table}}\n"
    )


def html_page(title: str, sections: list[tuple[str, str]], meta: dict | None = None) -> str:
    """A self-contained page from ``(heading, html)`` sections, with a provenance block at the end."""
    import html

    style = (
        "body{font-family:sans-serif;max-width:1150px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:3px 7px;text-align:right}"
        "img{max-width:100%;image-rendering:pixelated}pre{background:#f4f4f4;padding:1em;overflow-x:auto}"
    )
    body = "".join(f"<h2>{html.escape(h)}</h2>{content}" for h, content in sections)
    if meta:
        body += "<h2>Provenance</h2><pre>" + html.escape(json.dumps(meta, indent=1, default=str)) + "</pre>"
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>\n"
    )


def html_table(rows: list[dict], columns: list[str], units: dict[str, str] | None = None) -> str:
    import html

    head = "".join(
        f"<th>{html.escape(c)}{'<br><small>' + html.escape(units[c]) + '</small>' if units and units.get(c) else ''}</th>"
        for c in columns
    )
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(r.get(c)))}</td>" for c in columns) + "</tr>" for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def html_image(path: str | Path, alt: str = "") -> str:
    import base64
    import html

    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{base64.b64encode(Path(path).read_bytes()).decode()}'>"


def plot_metric_vs_T(
    series: dict[str, dict[str, dict[int, list[float]]]],
    metrics: list[str],
    path: str | Path,
    title: str = "",
    units: dict[str, str] | None = None,
) -> None:
    """Each metric against the step count, one line per label (the same colour in every panel), with a
    band over seeds (min to max): ``series[metric][label] = {T: [value per seed]}``."""
    import numpy as np

    plt = _plt()
    labels = list(dict.fromkeys(label for m in metrics for label in series.get(m, {})))
    colours = {label: f"C{i % 10}" for i, label in enumerate(labels)}
    Ts_all = sorted({T for m in metrics for by_T in series.get(m, {}).values() for T in by_T})
    n = len(metrics)
    cols = min(n, 3)
    rows_ = math.ceil(n / cols)
    fig, axes = plt.subplots(rows_, cols, figsize=(4.3 * cols, 3.2 * rows_ + 0.8), dpi=120, squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        for label, by_T in series.get(metric, {}).items():
            Ts = sorted(by_T)
            mean = [float(np.mean(by_T[T])) for T in Ts]
            lo = [float(np.min(by_T[T])) for T in Ts]
            hi = [float(np.max(by_T[T])) for T in Ts]
            ax.plot(
                Ts, mean, "--" if label.startswith("ODE") else "-", marker="o", ms=3, color=colours[label], label=label
            )
            ax.fill_between(Ts, lo, hi, color=colours[label], alpha=0.15, lw=0)
        ax.set_xscale("log")
        ax.set_xticks(Ts_all, [str(T) for T in Ts_all])
        ax.minorticks_off()
        ax.set_xlabel("T (training steps of the walk)")
        ax.set_title(metric + (f" [{units[metric]}]" if units and units.get(metric) else ""), fontsize=8)
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    handles = [
        plt.Line2D([], [], color=colours[label], ls="--" if label.startswith("ODE") else "-", marker="o", ms=3)
        for label in labels
    ]
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8, frameon=False)
    fig.suptitle(title or "Metrics against the number of steps (band: min to max over seeds)", fontsize=10)
    fig.tight_layout(rect=(0, 0.06 + 0.02 * math.ceil(len(labels) / 4), 1, 1))
    fig.savefig(path)
    plt.close(fig)


UNITS = {
    "bpd_ode": "bits/dim",
    "bpd_bound": "bits/dim",
    "fd": "classifier-feature FD",
    "kid": "MMD^2",
    "saturation": "share at extreme levels",
    "smoothness": "total variation, lower = smoother",
    "hf_power": "power share above 1/4 cycle/px",
    "hist_distance": "TV distance of pixel histograms",
    "train_seconds": "s",
}


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


def comparison_rows(comparisons: list[dict]) -> list[dict]:
    """One flat row per compared pair (or swapped law) for the tables."""
    from .stats import words

    flat = []
    for c in comparisons:
        for r in c["rows"]:
            flat.append(
                {
                    "T_train": c["T_train"],
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


def write_study(out: str | Path, result: dict, figures: dict[int, dict], config: dict) -> list[str]:
    """study.json, study.md, study.html, table.tex and the plots of a study; returns the file names.

    study.json is written last: its presence means the study is finished (see :mod:`nonnormal.jobs`)."""
    from .files import write_atomic

    out = Path(out)
    meta = {**provenance(), "dataset": result["dataset"], "plan": result["plan"], "seconds": result["seconds"]}
    slim = [{k: v for k, v in r.items() if not k.endswith("_images")} for r in result["rows"]]
    payload = {
        "provenance": meta,
        "config": config,
        "units": UNITS,
        "findings": result["findings"],
        "rows": slim,
        "comparisons": result["comparisons"],
    }
    metrics = ["bpd_ode", "bpd_bound", "fd", "kid", "saturation", "smoothness", "hf_power", "hist_distance"]
    keys = ["pair", "T_train", "sampler", "T_sample", "law_sample"]
    table = summarize(slim, keys, metrics)
    columns = keys + ["seeds"] + [c for m in metrics for c in (m, m + "_sd")]
    flat = comparison_rows(result["comparisons"])
    flat_cols = ["T_train", "T_sample", "model", "metric", "which", "vs", "n", "diff", "lo", "hi", "dof", "verdict"]
    # metric vs T: own-law walk rows at T_sample = T_train, and the ODE
    series: dict[str, dict[str, dict[int, list[float]]]] = {}
    seen = set()
    from .study import own_T_sample

    for r in slim:
        own = (
            r["sampler"] == "walk"
            and r["law_sample"] == r["p"]
            and r["T_sample"] == own_T_sample(result["plan"]["T_sample"], r["T_train"])
        )
        label = r["pair"] if own else (f"ODE ({r['weights_from']})" if r["sampler"] == "ode" else None)
        if label is None or (label, r["T_train"], r["seed"]) in seen:  # pairs sharing weights share one ODE line
            continue
        seen.add((label, r["T_train"], r["seed"]))
        for m in metrics:
            if isinstance(r.get(m), (int, float)) and not (r["sampler"] == "ode" and m in ("bpd_ode", "bpd_bound")):
                series.setdefault(m, {}).setdefault(label, {}).setdefault(r["T_train"], []).append(r[m])
    files = ["study.json", "study.md", "study.html", "table.tex", "metrics_vs_T.png"]
    tmp = out / ".metrics_vs_T.tmp.png"
    plot_metric_vs_T(
        series, metrics[:6], tmp, f"{result['dataset']}: metrics against T (band: min-max over seeds)", UNITS
    )
    tmp.replace(out / "metrics_vs_T.png")
    for T, rows in figures.items():
        tmp = out / f".figure1-T{T}.tmp.png"
        plot_sample_rows(rows, tmp, f"{result['dataset']}: T={T}, own law per row, one sample seed for every row")
        tmp.replace(out / f"figure1-T{T}.png")
        files.append(f"figure1-T{T}.png")
    md = [f"# Study: {result['dataset']}", "", "## Findings", ""] + [f"- {f}" for f in result["findings"]]
    md += [
        "",
        "## Rows (mean and sd over seeds)",
        "",
        markdown_table(table, columns, UNITS),
        "## Seed-paired comparisons",
        "",
        markdown_table(flat, flat_cols),
        f"_nonnormal {meta['version']}, commit {meta['commit']}; command: `{meta['command']}`_",
        "",
    ]
    write_atomic(out / "study.md", "\n".join(md).encode())
    write_atomic(
        out / "table.tex", latex_table(table, columns, f"Study on {result['dataset']}: mean over seeds", UNITS).encode()
    )
    import html as html_lib

    sections = [
        ("Findings", "<ul>" + "".join(f"<li>{html_lib.escape(f)}</li>" for f in result["findings"]) + "</ul>"),
        ("Metrics against T", html_image(out / "metrics_vs_T.png", "metrics vs T")),
    ]
    sections += [(f"Figure 1 at T={T}", html_image(out / f"figure1-T{T}.png", f"figure 1 T={T}")) for T in figures]
    sections += [
        ("Rows (mean and sd over seeds)", html_table(table, columns, UNITS)),
        ("Seed-paired comparisons", html_table(flat, flat_cols)),
        ("Config", "<pre>" + html_lib.escape(json.dumps(config, indent=1)) + "</pre>"),
    ]
    write_atomic(out / "study.html", html_page(f"nonnormal study: {result['dataset']}", sections, meta).encode())
    write_atomic(out / "study.json", (json.dumps(payload, indent=1, default=str) + "\n").encode())  # last
    return files
