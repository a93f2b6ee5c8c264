"""What a frontier's rows say, and its files: per-setting summaries, the best setting per NFE against
the best Gaussian one (seed-paired, variance pooled as :func:`nonnormal.stats.paired_differences`
does), the recipe check, and ``frontier.json`` / ``.md`` / ``.html`` / ``.tex`` and two figures.

A *setting* here is a model's pair with a sampler and a law (``gaussian/gaussian walk/laplace``). It is
*Gaussian* when the model is gaussian/gaussian and its increments (if any) are Gaussian: the field's
usual choice, the reference every other setting is measured against.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from . import stats

PRIMARY = "frontier.json"
GAUSSIAN_PAIR = "gaussian/gaussian"
EXTRA_UNITS = {
    "nfe": "network calls",
    "nfe_target": "network calls",
    "bpd_ode_long": "bits/dim",
    "gap": "bits/dim",
    "fd_gaussian": "classifier-feature FD",
}
CURVE = "fd"  # the metric of the figure and of the best-setting table


def units() -> dict[str, str]:
    """The metrics table's units, and the frontier's own columns'."""
    from .metrics import table

    return {**table.units(), **EXTRA_UNITS}


def metrics() -> list[str]:
    """The columns summarised per setting: the table's sample metrics (headline first), then the bound."""
    from .metrics import table

    sampled = table.metrics("images", sampled=True)
    return [m.name for m in sampled if m.headline] + [m.name for m in sampled if not m.headline] + ["bpd_bound"]


def setting_of(row: dict) -> str:
    """The name of a row's setting: its model's pair, sampler and law."""
    return f"{row['pair']} {row['setting']}"


def is_gaussian(row: dict) -> bool:
    return row["pair"] == GAUSSIAN_PAIR and row.get("law") in (None, "gaussian")


def summarize(rows: list[dict], names: list[str] | None = None) -> list[dict]:
    """One line per (setting, NFE target): actual NFE, seeds, and each metric's mean, sd, min, max."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((setting_of(r), r["nfe_target"]), []).append(r)
    out = []
    for (name, target), group in groups.items():
        line = {"setting": name, "nfe_target": target, "nfe": sorted({r["nfe"] for r in group}), "seeds": len(group)}
        line["nfe"] = line["nfe"][0] if len(line["nfe"]) == 1 else line["nfe"]
        for m in names if names is not None else metrics():
            v = [r[m] for r in group if isinstance(r.get(m), (int, float)) and math.isfinite(r[m])]
            if v:
                mean, sd, _ = stats.mean_sd(v)
                line.update({m: mean, m + "_sd": sd, m + "_min": min(v), m + "_max": max(v)})
        out.append(line)
    return out


def best_settings(rows: list[dict], metric: str = "fd", level: float = stats.LEVEL) -> list[dict]:
    """Per NFE target: the setting with the lowest mean ``metric``, the best Gaussian setting, and the
    seed-paired difference best - best Gaussian with its interval (pooled over every setting at that NFE:
    ``dof`` degrees of freedom, ``comparisons`` differences from the best Gaussian one)."""
    out = []
    for target in sorted({r["nfe_target"] for r in rows}):
        values: dict[str, dict[int, float]] = {}
        nfe: dict[str, int] = {}
        gaussian = set()
        for r in rows:
            if r["nfe_target"] != target or not isinstance(r.get(metric), (int, float)) or not math.isfinite(r[metric]):
                continue
            name = setting_of(r)
            values.setdefault(name, {})[r["seed"]] = float(r[metric])
            nfe[name] = r["nfe"]
            if is_gaussian(r):
                gaussian.add(name)
        if not values:
            continue
        means = {k: float(np.mean(list(v.values()))) for k, v in values.items()}
        best = min(means, key=lambda k: (means[k], k))
        line = {"nfe_target": target, "best": best, "nfe": nfe[best], metric: means[best]}
        if not gaussian:
            out.append({**line, "best_gaussian": None, "verdict": "no Gaussian setting"})
            continue
        ref = min(gaussian, key=lambda k: (means[k], k))
        line.update({"best_gaussian": ref, "nfe_gaussian": nfe[ref], metric + "_gaussian": means[ref]})
        res = stats.paired_differences(values, ref, level=level)
        line.update(dof=res["dof"], comparisons=res["comparisons"], level=level)
        line["against"] = [  # every other setting's seed-paired difference from the best Gaussian one
            {k: r[k] for k in ("pair", "diff", "lo", "hi", "distinguishable", "distinguishable_bonferroni")}
            for r in res["rows"]
        ]
        if best == ref:
            line.update(diff=0.0, lo=None, hi=None, distinguishable=None, distinguishable_bonferroni=None)
            line["non_normal_wins"] = False
            line["verdict"] = "the best setting is Gaussian"
        else:
            row = next(r for r in res["rows"] if r["pair"] == best)
            line.update(diff=row["diff"], lo=row["lo"], hi=row["hi"], distinguishable=row["distinguishable"])
            line["distinguishable_bonferroni"] = row["distinguishable_bonferroni"]
            line["non_normal_wins"] = bool(row["distinguishable"])
            line["verdict"] = (
                f"{best} is {stats.words(row)} from {ref} "
                f"({metric} {row['diff']:+.3g}, {int(level * 100)}% CI [{row['lo']:+.3g}, {row['hi']:+.3g}])"
                if row.get("distinguishable") is not None
                else f"{best} vs {ref}: {stats.words(row)}"
            )
        out.append(line)
    return out


def against_table(best: list[dict]) -> list[dict]:
    """One row per setting, one column per NFE target: its difference from that NFE's best Gaussian setting,
    ``diff [lo, hi]``, ``†`` when distinguishable at the interval's level, ``‡`` after Bonferroni too;
    ``ref`` in the reference's own cell."""
    cells: dict[str, dict[str, str]] = {}
    for b in best:
        col = f"NFE {b['nfe_target']}"
        if b.get("best_gaussian"):
            cells.setdefault(b["best_gaussian"], {})[col] = "ref"
        for r in b.get("against", []):
            text = f"{r['diff']:+.2f}"
            if r.get("lo") is not None and r.get("hi") is not None:
                text += f" [{r['lo']:+.2f}, {r['hi']:+.2f}]"
            text += " ‡" if r.get("distinguishable_bonferroni") else " †" if r.get("distinguishable") else ""
            cells.setdefault(r["pair"], {})[col] = text
    return [{"setting": name, **cols} for name, cols in sorted(cells.items())]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_frontier(rows: list[dict], path, title: str, metric: str = "fd") -> None:
    """``metric`` against actual NFE (log x): a panel per pair, a line per setting (mean over seeds),
    a band from the lowest to the highest seed."""
    plt = _plt()
    pairs = sorted({r["pair"] for r in rows})
    fig, axes = plt.subplots(1, len(pairs), figsize=(6 * len(pairs), 4.5), squeeze=False, sharey=True)
    for ax, pair in zip(axes[0], pairs):
        for name in dict.fromkeys(r["setting"] for r in rows if r["pair"] == pair):
            pts: dict[int, list[float]] = {}
            for r in rows:
                if r["pair"] == pair and r["setting"] == name and isinstance(r.get(metric), (int, float)):
                    pts.setdefault(r["nfe"], []).append(r[metric])
            xs = sorted(pts)
            mean = [float(np.mean(pts[x])) for x in xs]
            style = "-" if "/" not in name or name.endswith("/gaussian") else ("--" if "fitted" not in name else ":")
            (line,) = ax.plot(xs, mean, style, marker="o", ms=3, label=name)
            ax.fill_between(
                xs, [min(pts[x]) for x in xs], [max(pts[x]) for x in xs], color=line.get_color(), alpha=0.15
            )
        ax.set_xscale("log")
        ticks = sorted({r["nfe_target"] for r in rows})  # the targets (heun's 2N-1 calls sit just left of them)
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("NFE (network calls)")
        ax.set_title(f"model {pair}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel(f"{metric} ({units().get(metric, '')})")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_shapes(shapes: list[dict], path, title: str) -> None:
    """The fitted shape (gennorm beta / Student-t nu) and variance ratio per step against t."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for s in shapes:
        pts = [(t, b, v) for t, b, v in zip(s["t"], s["shape"], s["variance_ratio"]) if b is not None]
        axes[0].plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"model {s['pair']}")
        axes[1].plot([p[0] for p in pts], [p[2] for p in pts], marker="o", label=f"model {s['pair']}")
    family = shapes[0]["family"] if shapes else ""
    axes[0].axhline(2.0 if family == "gennorm" else float("nan"), color="grey", lw=0.8, ls="--")
    axes[0].set_ylabel("beta (2: Gaussian, 1: Laplace)" if family == "gennorm" else "shape")
    axes[1].set_ylabel("variance ratio s_k^2")
    for ax in axes:
        ax.set_xlabel("t (where step k evaluates the model)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _replace(tmp: Path, final: Path) -> None:
    import os

    os.replace(tmp, final)


def write_frontier(out, result: dict, config: dict) -> list[str]:
    """frontier.md, .html, .tex, frontier.png, shapes.png and frontier.json (last: the job is finished)."""
    from . import report
    from .files import write_atomic, write_json

    out = Path(out)
    rows = result["rows"]
    meta = {**report.provenance(), "dataset": result["dataset"], "seconds": result["seconds"]}
    summary = summarize(rows)  # the table's sample metrics and the bound
    best = best_settings(rows)
    files = ["frontier.json", "frontier.md", "frontier.html", "frontier.tex", "frontier.png"]
    title = (
        f"{result['dataset']}: FD against NFE (line: mean over {len(result['plan']['seeds'])} seeds; band: min..max)"
    )
    _plot_to(out, "frontier.png", lambda p: plot_frontier(rows, p, title))
    if result["shapes"]:
        files.append("shapes.png")
        t = f"fitted {result['shapes'][0]['family']} kernel per step, T = {result['shapes'][0]['T']}, seed {result['shapes'][0]['seed']}"
        _plot_to(out, "shapes.png", lambda p: plot_shapes(result["shapes"], p, t))
    u, names = units(), metrics()
    sum_cols = ["setting", "nfe_target", "nfe", "seeds", CURVE, CURVE + "_sd", CURVE + "_min", CURVE + "_max"]
    sum_cols += [m for m in names if m != CURVE]
    best_cols = [
        "nfe_target",
        "best",
        "nfe",
        "fd",
        "best_gaussian",
        "nfe_gaussian",
        "fd_gaussian",
        "diff",
        "lo",
        "hi",
        "distinguishable",
        "distinguishable_bonferroni",
        "dof",
        "comparisons",
    ]
    check_cols = ["pair", "seed", "steps", "bpd_ode", "steps_long", "bpd_ode_long", "gap", "within"]
    notes = [
        "FD, KID, saturation and total variation on the same samples per setting (one sample seed: settings "
        "coupled image by image); NFE is the actual count of network calls (heun: 2N - 1).",
        "bpd_bound: the discrete bound of the walk settings at T = steps with that law, or with the kernel fitted "
        "per step on training images (never on the test images the bound is scored on).",
        "Best setting: lowest mean FD over seeds. Its difference from the best Gaussian setting (a gaussian/gaussian "
        "model with Gaussian or no increments) is seed-paired, the seed variance pooled over every setting at that "
        "NFE (dof and number of comparisons in the table); 95% intervals, and whether the difference survives a Bonferroni correction for those comparisons.",
        "The best setting is picked on the same seeds that score its difference, and the interval does not count "
        "that choice (the winner's curse): a setting that stays ahead at several NFEs, or in another run, is "
        "better evidence than one interval. 'Every setting against the best Gaussian' shows them all.",
    ]
    flagged = [c for c in result["check"] if not c["within"]]
    check_note = (
        f"Recipe check: each pair's seed-{result['check'][0]['seed']} model against one trained with "
        f"{result['fplan']['check_factor']}x the steps (bits/dim, probability-flow ODE): "
        + ("every gap is within 0.1 bits/dim." if not flagged else f"{len(flagged)} gap(s) over 0.1 bits/dim: FLAGGED.")
        if result["check"]
        else "Recipe check: not run (frontier.check_factor = 0)."
    )
    md = [
        f"# Frontier: {result['dataset']}",
        "",
        "## Best setting per NFE",
        "",
        report.markdown_table(best, best_cols, u),
    ]
    md += [f"- NFE {b['nfe_target']}: {b['verdict']}." for b in best] + [""]
    against, nfe_cols = against_table(best), [f"NFE {b['nfe_target']}" for b in best]
    if against:
        md += [
            "## Every setting against the best Gaussian setting",
            "",
            "Seed-paired difference in FD from the best Gaussian setting at that NFE (`ref`), 95% interval; "
            "† distinguishable, ‡ also after Bonferroni over that NFE's comparisons.",
            "",
            report.markdown_table(against, ["setting", *nfe_cols], {}),
        ]
    md += ["## Training check", "", check_note, ""]
    if result["check"]:
        md += [report.markdown_table(result["check"], check_cols, u)]
    md += ["## Figure", "", "![FD against NFE](frontier.png)", ""]
    if result["shapes"]:
        md += ["## Fitted shapes", "", "![fitted shapes](shapes.png)", ""]
        md += [
            f"- model {s['pair']}: shape per step (t ascending) "
            + ", ".join(f"{b:.2f}" for b in s["shape"] if b is not None)
            for s in result["shapes"]
        ] + [""]
    md += ["## All settings (mean and sd over seeds)", "", report.markdown_table(summary, sum_cols, u)]
    md += (
        ["## Notes", ""]
        + [f"- {n}" for n in notes]
        + ["", f"_nonnormal {meta['version']}, commit {meta['commit']}; command: `{meta['command']}`_", ""]
    )
    write_atomic(out / "frontier.md", "\n".join(md).encode())
    tex = report.latex_table(best, best_cols, f"{result['dataset']}: best setting per NFE against the best Gaussian", u)
    tex += report.latex_table(summary, sum_cols[:8], f"{result['dataset']}: every setting (mean over seeds)", u)
    write_atomic(out / "frontier.tex", tex.encode())
    import html as html_lib

    sections = [
        ("Best setting per NFE", report.html_table(best, best_cols, u)),
        ("FD against NFE", report.html_image(out / "frontier.png", "FD against NFE")),
        (
            "Training check",
            f"<p>{html_lib.escape(check_note)}</p>" + report.html_table(result["check"], check_cols, u),
        ),
    ]
    if against:
        sections.append(
            ("Every setting against the best Gaussian setting", report.html_table(against, ["setting", *nfe_cols], {}))
        )
    if result["shapes"]:
        sections.append(("Fitted shapes", report.html_image(out / "shapes.png", "fitted shapes")))
    sections += [
        ("All settings", report.html_table(summary, sum_cols, u)),
        ("Notes", "<ul>" + "".join(f"<li>{html_lib.escape(n)}</li>" for n in notes) + "</ul>"),
    ]
    write_atomic(
        out / "frontier.html", report.html_page(f"nonnormal frontier: {result['dataset']}", sections, meta).encode()
    )
    payload = {
        "provenance": meta,
        "config": config,
        "fplan": result["fplan"],
        "plan": result["plan"],
        "units": units(),
        "notes": notes,
        "best": best,
        "check": result["check"],
        "shapes": result["shapes"],
        "rows": rows,
    }
    write_json(out / PRIMARY, payload)  # strict JSON, last: the job is finished
    return files


def _plot_to(out: Path, name: str, draw) -> None:
    tmp = out / f".{name}.tmp.png"
    draw(tmp)
    _replace(tmp, out / name)
