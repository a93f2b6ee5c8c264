"""The main job: train one model per (q, p) pair and seed with the same recipe, evaluate each on the
same test images, and put them side by side (the paper's Table 2 and Figure 1), with seed-paired
intervals against gaussian/gaussian and two reference rows.

It is a :class:`nonnormal.study.Study` with one step count and each model sampled with its own law.
Everything lands in one folder: ``models/`` (one run folder per trained model), ``cache/``,
``table.md``/``table.csv``/``table.json``/``table.tex``, ``figure1.png``, ``loss_curves.png`` and
``report.html``, ``table.json`` last. An interrupted comparison (killed at any moment) picks up where
it stopped when called again on the folder; a finished one is rebuilt only with ``force``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from . import config as config_lib
from . import jobs
from .errors import NonnormalError
from .study import PAIRS, parse_pairs  # noqa: F401 -- the pairs live with the study engine; named here too

DERIVED_UNITS = {
    "bpd_ode_sd": "sd over seeds",
    "bpd_ode_se": "SE over test images",
    "diff": "bpd_ode - gaussian/gaussian, seed-paired",
    "diff_lo": "95% CI",
    "diff_hi": "95% CI",
    "train_seconds": "s per model",
}  # the columns of compare's table that are not metrics; the metrics' units come from the metrics table
OUTPUTS = ["table.md", "table.csv", "table.json", "table.tex", "figure1.png", "loss_curves.png", "report.html"]
PRIMARY = "table.json"  # written last: a folder holding it is finished


def table_columns() -> list[str]:
    """The table's columns: bpd_ode with its two spreads and the paired difference, then every other
    headline metric of the metrics table."""
    from .metrics import table

    others = [m for m in table.names("images", headline=True) if m != "bpd_ode"]
    return ["q", "p", "seeds", "bpd_ode", "bpd_ode_sd", "bpd_ode_se", "diff", "diff_lo", "diff_hi", "verdict"] + [
        *others,
        "train_seconds",
    ]


def table_units() -> dict[str, str]:
    from .metrics import table

    return {**table.units(), **DERIVED_UNITS}


def compare(
    out: str | Path,
    pairs=PAIRS,
    config_path=None,
    overrides=(),
    *,
    seeds: int = 2,
    n_samples: int | None = None,
    n_test: int | None = None,
    rtol: float = 1e-3,
    columns: int = 12,
    sample_seed: int = 0,
    progress: bool = True,
    log=print,
    force: bool = False,
    n_jobs: int = 1,
) -> list[dict]:
    """Train and evaluate each pair with ``seeds`` seeds into ``out``; write the tables, figures and report.

    A folder whose ``table.json`` exists is finished: refused unless ``force`` (then rebuilt from its
    models and cache). Any other folder continues where it stopped (:mod:`nonnormal.jobs`)."""
    from .evaluate import reference_rows
    from .files import json_text, write_atomic
    from .report import (
        csv_text,
        html_image,
        html_list,
        html_page,
        html_pre,
        html_table,
        json_table,
        latex_table,
        markdown_table,
        plot_loss_curves,
        plot_sample_rows,
        provenance,
    )
    from .study import Plan, Study, trained_pair

    out = jobs.check(out, PRIMARY, force)  # a finished folder is refused before any work
    run_config = config_lib.read_toml(config_path) if config_path else {}
    base = config_lib.load(None, list(overrides), base=run_config)
    T = base["diffusion"]["T"]
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise NonnormalError(f"seeds must be a positive integer, got {seeds!r}")
    first = base["train"]["seed"]
    plan = Plan(
        pairs=[f"{q}/{p}" for q, p in pairs],
        T_train=[T],
        seeds=list(range(first, first + seeds)),
        T_sample=[],
        laws_sample=[],
        ode=False,
        n_samples=n_samples or 0,
        n_test=n_test or 0,
        rtol=rtol,
        sample_seed=sample_seed,
        columns=columns,
    )
    study = Study(
        out, plan.check(), run_config, overrides, progress=progress, log=log, n_jobs=n_jobs
    )  # n_samples 0: test size
    with jobs.hold(out, PRIMARY, force):  # one job per folder; a killed one continues from its cache
        t0 = time.perf_counter()
        result = study.run()
        table = _table(result, study)
        references = reference_rows(study.data, sample_seed, n_test)
        rows = table + references
        cols, unit_of = table_columns(), table_units()
        write_atomic(out / "table.csv", csv_text(rows, cols).encode())
        tex_cols = [c for c in cols if c not in ("diff", "diff_lo", "diff_hi")]
        tex_cols.insert(tex_cols.index("verdict"), "diff_ci")
        write_atomic(
            out / "table.tex",
            latex_table(
                [{**r, "diff_ci": diff_ci(r)} for r in rows],
                tex_cols,
                f"{study.data.name}: (q, p) pairs at T={T}",
                {**unit_of, "diff_ci": "diff [diff_lo, diff_hi] vs gaussian/gaussian"},
                keys=["q", "p"],
            ).encode(),
        )
        figure = out / ".figure1.tmp.png"
        plot_sample_rows(
            study.figure_rows(T, plan.seeds[0]),
            figure,
            f"{study.data.name}: ancestral samples (T={T}, law p), sample seed {sample_seed} shared by every row",
        )
        figure.replace(out / "figure1.png")
        from .divergences import divergence

        curves = {}
        step_loss = base["diffusion"]["loss"] == "step"
        for q, p in pairs:
            tq, tp = trained_pair(q, p)  # the logged loss is the trained pair's: drop its constant T K(0)
            const = T * divergence(tq, tp).k0 / math.log(2) if step_loss else 0.0
            metrics = study.model_dir(tq, tp, T, plan.seeds[0]) / "metrics.jsonl"
            curves[f"{q}/{p}"] = [(m["step"], m["loss_bpd"] - const) for m in _metrics(metrics)]
        curve_png = out / ".loss_curves.tmp.png"
        plot_loss_curves(curves, curve_png, f"{study.data.name}: training loss per pair (seed {plan.seeds[0]})")
        curve_png.replace(out / "loss_curves.png")
        notes = _notes(result, study, references, rtol, seeds, log)
        notes.append(f"Total time {time.perf_counter() - t0:.0f} s.")
        sections = [
            ("Table", html_table(rows, cols, unit_of)),
            ("Notes", html_list(notes)),
            ("Figure 1: samples", html_image(out / "figure1.png", "figure 1")),
            ("Loss curves", html_image(out / "loss_curves.png", "loss curves")),
            ("Config", html_pre(json_text(base))),
        ]
        meta = {**provenance(), "dataset": study.data.name, "pairs": plan.pairs, "seeds": plan.seeds, "T": T}
        write_atomic(out / "report.html", html_page(f"nonnormal compare: {study.data.name}", sections, meta).encode())
        write_atomic(
            out / "table.md",
            (markdown_table(rows, cols) + "\n" + "\n".join(f"- {n}" for n in notes) + "\n").encode(),
        )
        write_atomic(out / PRIMARY, json_table(rows, cols).encode())  # last: the job is finished
        return rows


def diff_ci(row: dict) -> str:
    """``diff [diff_lo, diff_hi]`` as text (the difference alone when exact, empty without one)."""
    from .report import cell

    if row.get("diff") is None:
        return ""
    if row.get("diff_lo") is None or row.get("diff_lo") == row.get("diff_hi"):
        return f"{row['diff']:+.4g}"
    return f"{row['diff']:+.4g} [{cell(row['diff_lo'])}, {cell(row['diff_hi'])}]"


def _table(result: dict, study) -> list[dict]:
    """One row per pair: mean and sd over seeds, the test-image SE, the seed-paired difference from gaussian/gaussian."""
    from . import stats
    from .metrics import table as metric_table
    from .study_findings import REFERENCE

    rows = result["rows"]
    by_pair: dict[str, list[dict]] = {}
    for r in rows:
        by_pair.setdefault(r["pair"], []).append(r)
    diffs = {}
    for c in result["comparisons"]:
        if c["kind"] == "pairs" and c["metric"] == "bpd_ode":
            diffs = {r["pair"]: r for r in c["rows"]}
    out = []
    for pair, members in by_pair.items():
        q, p = pair.split("/")
        mean, sd, n = stats.mean_sd([r["bpd_ode"] for r in members])
        row = {
            "q": q,
            "p": p,
            "seeds": n,
            "bpd_ode": mean,
            "bpd_ode_sd": sd if n > 1 else None,
            "bpd_ode_se": stats.image_se(np.array([r["bpd_ode_images"] for r in members])),
        }
        for m in [*(n for n in metric_table.names("images", headline=True) if n != "bpd_ode"), "train_seconds"]:
            vals = [r[m] for r in members if r.get(m) is not None]
            row[m] = float(np.mean(vals)) if vals else None
        d = diffs.get(pair)
        if pair == REFERENCE:
            row["verdict"] = "reference"
        elif d is not None:
            row.update(
                diff=d["diff"],
                diff_lo=d["lo"],
                diff_hi=d["hi"],
                verdict="exact (same weights)" if d.get("exact") else stats.words(d),
            )
        out.append(row)
    return out


def _notes(result: dict, study, references: list[dict], rtol: float, seeds: int, log) -> list[str]:
    from .evaluate import real_data_quality

    notes = [f"Reference rows on the same test images: {r['q']} {r['bpd_ode']:.3f} bits/dim." for r in references]
    comp = next((c for c in result["comparisons"] if c["kind"] == "pairs" and c["metric"] == "bpd_ode"), None)
    if comp is not None and comp["dof"] > 0:
        notes.append(
            f"diff: bpd_ode minus gaussian/gaussian's, paired by seed (seed s of every pair shares its "
            f"initialization, batches and noise); 95% t interval from the seed variance pooled over "
            f"{len(comp['rows'])} pairs ({comp['dof']} degrees of freedom, pooled sd {comp['pooled_sd']:.4f}); "
            f"{comp['comparisons']} comparisons were made. 'distinguishable' = the interval excludes 0."
        )
    elif seeds < 2:
        notes.append("One seed per pair: no interval on the differences between pairs (use --seeds 2 or more).")
    notes.append(
        "bpd_ode_se: the standard error over test images of the seed-averaged bits/dim; bpd_ode_sd: the "
        "spread over training seeds. Only the second says whether another training run could reverse a ranking."
    )
    notes.append(
        "bpd_ode: probability-flow ODE likelihood of dequantized test images (the continuous-limit model), "
        f"dopri5 at rtol = atol = {rtol:g}, the same images, dequantization noise and Hutchinson probes for "
        "every model; bpd_bound: the paper's discrete bound at T, which for mismatched pairs carries "
        "T*K(0)/ln 2 bits per dimension."
    )
    if any(r["weights_from"] != r["pair"] for r in result["rows"]):
        notes.append(
            "Every pair with a Gaussian p has K(u) = K(0) + u^2/2, so it trains on exactly the gradients of "
            "gaussian/gaussian: it reuses those weights, and its row differs only by the bound's constant."
        )
    if any(r.get("fd") is not None for r in result["rows"]):
        features, _ = study.features()
        real = real_data_quality(study.data, study.plan.n_samples, study.plan.sample_seed)
        notes.append(
            f"FD and KID in the features of a classifier with test accuracy {features.test_accuracy:.3f}; "
            f"as a scale, {real['n']} real training images against the test split score FD {real['fd']:.3g}, "
            f"KID {real['kid']:.3g}."
        )
        log(f"real training images vs test: FD {real['fd']:.3g}, KID {real['kid']:.3g}")
    from .metrics import table as metric_table

    look = [m for m in metric_table.metrics("images", headline=True, sampled=True) if "features" not in m.needs]
    notes.append("; ".join(f"{m.name}: {m.description}" for m in look) + ".")
    return notes


def _metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
