"""The main job: train one model per (q, p) pair with the same seed and budget, evaluate each,
and put them side by side (the paper's Table 2 and Figure 1, plus two reference rows).

Everything lands in one folder: ``<q>-<p>/`` per pair (a run folder with ``eval.json``),
``table.md``/``table.csv``/``table.json``, ``figure1.png``, ``loss_curves.png`` and
``report.html``. Pairs whose run and evaluation are complete are skipped on a second call
with the same folder, so an interrupted comparison picks up where it stopped.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from pathlib import Path

from . import config as config_lib
from .checkpoint import write_atomic
from .errors import NonnormalError

PAIRS = (("gaussian", "gaussian"), ("laplace", "laplace"), ("uniform", "gaussian"), ("uniform", "laplace"),
         ("logistic", "logistic"), ("student_t", "student_t"))
COLUMNS = ["q", "p", "bpd_ode", "bpd_ode_se", "bpd_bound", "fd", "kid", "train_seconds"]
OUTPUTS = ["table.md", "table.csv", "table.json", "figure1.png", "loss_curves.png", "report.html"]


def parse_pairs(text: str) -> list[tuple[str, str]]:
    """``"gaussian/gaussian,uniform/laplace"``: each pair checked (laws exist, finite KL)."""
    from . import increments
    from .divergences import check_pair

    pairs = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        q, sep, p = item.partition("/")
        if not sep or not q or not p:
            raise NonnormalError(f"bad pair {item!r}: write q/p, e.g. uniform/laplace")
        check_pair(increments.get(q), increments.get(p))
        pairs.append((q, p))
    if not pairs:
        raise NonnormalError("no pairs given: write e.g. --pairs gaussian/gaussian,laplace/laplace")
    return pairs


def _run_config(config_path, overrides, q: str, p: str) -> dict:
    return config_lib.load(config_path, list(overrides) + [f'diffusion.q="{q}"', f'diffusion.p="{p}"'])


def compare(out: str | Path, pairs=PAIRS, config_path=None, overrides=(), device: str | None = None,
            n_samples: int | None = None, n_test: int | None = None, rtol: float = 1e-3, atol: float = 1e-3, columns: int = 12, seed: int = 0,
            progress: bool = True, log=print) -> list[dict]:
    """Train and evaluate each pair into ``out``; write the table, figures and report; return the rows."""
    from .divergences import divergence
    from .evaluate import evaluate_run, real_data_quality, reference_rows
    from .report import html_report, plot_loss_curves, plot_sample_rows
    from .samplers import sample
    from .train import CHECKPOINT, load_data, load_run, pick_device, train

    out = Path(out)
    overrides = list(overrides) + ([f'train.device="{device}"'] if device else [])
    configs = {(q, p): _run_config(config_path, overrides, q, p) for q, p in pairs}  # validate all before any work
    for q, p in pairs:
        divergence(q, p)
    data = load_data(configs[pairs[0]])
    if data.levels is None or not data.is_image:
        raise NonnormalError(f"compare needs discrete image data (bits/dim, sample grids); {data.name} is not: "
                             "use nonnormal train and eval for low-dimensional data")
    out.mkdir(parents=True, exist_ok=True)
    rows, curves, figure_rows = [], {}, {}
    t_start = time.perf_counter()
    for i, (q, p) in enumerate(pairs, 1):
        cfg, run = configs[(q, p)], out / f"{q}-{p}"
        done = run / "eval.json"
        label = f"{q}/{p}"
        device_name = pick_device(cfg["train"]["device"])
        settings = {"config": {**cfg, "data": {**cfg["data"], "dataset": data.name}}, "n_test": n_test,
                    "n_samples": n_samples, "rtol": rtol, "atol": atol, "seed": seed}
        if done.exists() and json.loads(done.read_text()).get("settings") != json.loads(json.dumps(settings)):
            log(f"[{i}/{len(pairs)}] {label}: {done} came from other settings; training on and evaluating again")
            done = None
        if done is None or not done.exists():
            done = run / "eval.json"
            resume = (run / CHECKPOINT).exists()
            log(f"[{i}/{len(pairs)}] {label}: {'resuming' if resume else 'training'} "
                f"({cfg['train']['steps']} steps, T={cfg['diffusion']['T']}, {cfg['data']['dataset']})")
            train(cfg, run, resume=resume, progress=progress)
            log(f"[{i}/{len(pairs)}] {label}: evaluating")
            row = evaluate_run(run, device_name, n_test=n_test, n_samples=n_samples, rtol=rtol, atol=atol, seed=seed, progress=progress)
            row["settings"] = settings
            write_atomic(done, (json.dumps(row, indent=1) + "\n").encode())
        else:
            log(f"[{i}/{len(pairs)}] {label}: already done, reusing {done}")
        row = json.loads(done.read_text())
        rows.append(row)
        log(f"    bpd_ode {row['bpd_ode']:.3f} ± {row['bpd_ode_se']:.3f}, bound {row['bpd_bound']:.3f}, "
            f"FD {row.get('fd', float('nan')):.3g}, KID {row.get('kid', float('nan')):.3g}, "
            f"trained {row['train_seconds']:.0f} s")
        model, rcfg, _ = load_run(run, device_name)
        d = rcfg["diffusion"]
        figure_rows[label] = sample(model, (columns,) + tuple(data.shape), d["schedule"], d["T"], d["p"], d["rule"],
                                    seed=seed, device=device_name).cpu()
        const = d["T"] * divergence(q, p).k0 / math.log(2) if d["loss"] == "step" else 0.0
        curves[label] = [(m["step"], m["loss_bpd"] - const) for m in _metrics(run / "metrics.jsonl")]
    references = reference_rows(data, seed, n_test)
    table = rows + references
    _write_tables(out, table)
    dataset, T = data.name, configs[pairs[0]]["diffusion"]["T"]
    plot_sample_rows(figure_rows, out / "figure1.png",
                     f"{dataset}: ancestral samples (T={T}, law p), seed {seed} shared by every row")
    plot_loss_curves(curves, out / "loss_curves.png", f"{dataset}: training loss per pair")
    below = [r for r in rows if r["bpd_ode"] < references[1]["bpd_ode"]]
    notes = [f"Reference rows on the same test split: {r['q']} {r['bpd_ode']:.3f} bits/dim" for r in references]
    accuracy = {r["classifier_accuracy"] for r in rows if "classifier_accuracy" in r}
    if accuracy:
        real = real_data_quality(data, n_samples, seed)
        notes.append(f"Scale for FD and KID: {real['n']} real training images against the test split score "
                     f"FD {real['fd']:.3g}, KID {real['kid']:.3g}.")
        log(f"real training images vs test: FD {real['fd']:.3g}, KID {real['kid']:.3g}")
    notes += [f"{len(below)} of {len(rows)} pairs beat the per-pixel categorical row.",
              f"FD and KID: in the feature space of a classifier with test accuracy "
              f"{', '.join(f'{a:.3f}' for a in sorted(accuracy)) or 'n/a'}, samples against the test split.",
              "bpd_ode: probability-flow ODE likelihood of dequantized test data (the continuous-limit model), "
              f"dopri5 at rtol = atol = {rtol:g}; bpd_bound: the paper's discrete bound at T, which for mismatched "
              "pairs carries T*K(0)/ln 2 bits per dimension.",
              "Every pair with a Gaussian p has K(u) = K(0) + u^2/2, so it trains exactly like gaussian/gaussian "
              "with the same seed: its row differs only by the bound's constant (and its curve hides under it).",
              f"Total time {time.perf_counter() - t_start:.0f} s."]
    page = html_report(f"nonnormal compare: {dataset}", f"Each pair trained with the same seed and budget "
                       f"({configs[pairs[0]]['train']['steps']} steps, T={T}).", table, COLUMNS,
                       {"Figure 1: samples": out / "figure1.png", "Loss curves": out / "loss_curves.png"}, notes)
    write_atomic(out / "report.html", page.encode())
    return table


def _metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))


def _write_tables(out: Path, table: list[dict]) -> None:
    slim = [{c: r.get(c) for c in COLUMNS} for r in table]
    write_atomic(out / "table.json", (json.dumps(slim, indent=1) + "\n").encode())
    buf = io.StringIO()
    writer = csv.DictWriter(buf, COLUMNS)
    writer.writeheader()
    writer.writerows(slim)
    write_atomic(out / "table.csv", buf.getvalue().encode())
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_fmt(r[c]) for c in COLUMNS) + " |" for r in slim]
    write_atomic(out / "table.md", ("\n".join(lines) + "\n").encode())
