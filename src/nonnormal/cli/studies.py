"""Commands across laws: laws, kl, invariance, compare, study."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

from .. import jobs
from ..errors import NonnormalError
from ..files import json_text, write_atomic
from .common import check_tolerance, int_list, make_folder, out_dir, train_overrides

DEFAULT_COMPARE, DEFAULT_STUDY, QUICK_STUDY = "compare-digits", "study-digits", "study-quick"  # packaged presets


def cmd_laws(args) -> int:
    from .. import increments

    rows = []
    for name in increments.names():
        law = increments.get(name)
        rows.append(
            {
                "name": name,
                "spec": law.spec,
                "params": law.params,
                "variance": 1.0,
                "fourth_moment": law.fourth_moment,
                "has_density": law.has_density,
                "support": [law.support[0], law.support[1]],
            }
        )
    if args.json:
        print(json_text(rows, indent=2), end="")  # strict JSON: an unbounded support end is null
        return 0
    print(f"{'law':<12}{'parameters':<14}{'variance':>9}{'E z^4':>9}  density  support")
    for r in rows:
        params = ",".join(f"{k}={v:g}" for k, v in r["params"].items()) or "-"
        lo, hi = r["support"]
        support = "R" if math.isinf(lo) and math.isinf(hi) else f"[{lo:.3g}, {hi:.3g}]"
        print(
            f"{r['name']:<12}{params:<14}{r['variance']:>9.3g}{r['fourth_moment']:>9.4g}  {'yes' if r['has_density'] else 'no ':<7}  {support}"
        )
    print("parameters: name:key=value, e.g. student_t:nu=8 (nu > 4 needed for a finite fourth moment)")
    return 0


def cmd_presets(args) -> int:
    from .. import presets

    if args.name:
        print(presets.text(args.name), end="")
        return 0
    names = presets.names()
    width = max(len(n) for n in names)
    for name in names:
        print(f"{name:<{width}}  {presets.summary(name)}")
    print("use one with --config NAME; print it with nonnormal presets NAME (copy it to change it)")
    return 0


def cmd_kl(args) -> int:
    import torch

    from ..divergences import divergence

    try:
        us = [float(v) for v in args.u.split(",") if v.strip()]
    except ValueError:
        raise NonnormalError(f"--u must be comma-separated numbers, got {args.u!r}: e.g. 0,0.5,1,2") from None
    if not us or not all(math.isfinite(u) for u in us):
        raise NonnormalError(f"--u must be finite numbers, got {args.u!r}: e.g. 0,0.5,1,2")
    d = divergence(args.q, args.p)
    values = d(torch.tensor(us, dtype=torch.float64)).tolist()
    if args.json:
        print(
            json_text({"q": d.q.spec, "p": d.p.spec, "kind": d.kind, "k0": d.k0, "u": us, "K": values}, indent=2),
            end="",
        )
        return 0
    print(f"K(u) = KL(q(. - u) || p) per coordinate, q = {d.q.spec}, p = {d.p.spec} ({d.kind}); K(0) = {d.k0:.6f}")
    for u, k in zip(us, values):
        print(f"  u = {u:>8g}   K = {k:.6f}")
    return 0


def cmd_invariance(args) -> int:
    from .. import increments, schedules
    from ..invariance import invariance_study
    from ..report import plot_invariance

    laws = [increments.get(s) for s in args.laws.split(",") if s.strip()]
    steps = int_list(args.steps, "--steps")
    schedule = schedules.get(args.schedule)
    if args.paths < 16:
        raise NonnormalError(f"--paths must be at least 16, got {args.paths}")
    out = out_dir(args.out, "invariance", args.force, ["invariance.json", "invariance.png"])
    result = invariance_study(laws, steps, schedule, args.paths, args.seed, progress=not args.quiet)
    payload = {law: {str(T): w for T, w in row.items()} for law, row in result.items()}
    write_atomic(make_folder(out) / "invariance.json", json_text(payload, indent=2).encode())
    png = out / ".invariance.tmp.png"
    plot_invariance(result, png, f"Walks vs their Gaussian limit ({schedule.name} schedule, {args.paths:,} paths)")
    os.replace(png, out / "invariance.png")
    width = max(len(k) for k in result)
    print(f"W1 to the Gaussian limit ({schedule.spec}, {args.paths} paths, seed {args.seed})")
    print(f"{'law':<{width}}" + "".join(f"{'T=' + str(T):>10}" for T in steps))
    for law, row in result.items():
        print(f"{law:<{width}}" + "".join(f"{row[T]:>10.4f}" for T in steps))
    print(f"wrote {out / 'invariance.json'} and {out / 'invariance.png'}")
    return 0


def cmd_compare(args) -> int:
    from ..compare import OUTPUTS, compare
    from ..study import PAIRS, parse_pairs

    pairs = parse_pairs(args.pairs) if args.pairs else list(PAIRS)
    out = Path(args.out) if args.out else Path("runs") / f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
    t0 = time.time()
    check_tolerance(args.rtol)
    compare(
        out,
        pairs,
        args.config or DEFAULT_COMPARE,
        train_overrides(args),
        seeds=args.seeds,
        n_samples=args.n_samples,
        n_test=args.n_test,
        rtol=args.rtol,
        sample_seed=args.sample_seed,
        progress=not args.quiet,
        force=args.force,
        n_jobs=args.jobs,
    )
    print()
    print((out / "table.md").read_text())
    print(f"wrote {out}/: {', '.join(OUTPUTS)} ({time.time() - t0:.0f} s)")
    return 0


def cmd_study(args) -> int:
    if args.what == "bias":
        return _study_bias(args)
    from ..study import Study, load_plan, parse_pairs
    from ..study_report import write_study

    config = args.config or (QUICK_STUDY if args.quick else DEFAULT_STUDY)
    seeds = list(range(args.seeds)) if args.seeds else None
    plan, run_config = load_plan(
        config,
        {
            "seeds": seeds,
            "pairs": [f"{q}/{p}" for q, p in parse_pairs(args.pairs)] if args.pairs else None,
            "T_train": int_list(args.Ts, "--Ts") if args.Ts else None,
        },
    )
    out = Path(args.out) if args.out else Path("runs") / f"study-{time.strftime('%Y%m%d-%H%M%S')}"
    jobs.check(out, "study.json", args.force)  # a finished folder is refused before any work
    t0 = time.time()
    study = Study(out, plan, run_config, train_overrides(args), progress=not args.quiet, n_jobs=args.jobs)
    with jobs.hold(out, "study.json", args.force):  # one job per folder; a killed one continues from its cache
        result = study.run()
        figures = {T: study.figure_rows(T, plan.seeds[0]) for T in plan.T_train}
        files = write_study(out, result, figures, run_config)  # study.json last
    print()
    for line in result["findings"]:
        print(f"- {line}")
    print(f"wrote {out}/: {', '.join(files)} ({time.time() - t0:.0f} s)")
    return 0


def _study_bias(args) -> int:
    """The bias of non-L2 losses on exact-score mixtures: loss-optimal predictor vs conditional mean."""
    from ..bias import bias_study, plot_bias
    from ..report import latex_table, markdown_table, provenance
    from ..study import parse_pairs

    pairs = parse_pairs(args.pairs or "gaussian/gaussian,laplace/laplace,uniform/gaussian,uniform/laplace")
    Ts = int_list(args.Ts or "10,30,100,1000", "--Ts")
    n = args.n or 1000
    if n < 16:
        raise NonnormalError(f"--n must be at least 16 samples, got {n}")
    out = Path(args.out) if args.out else Path("runs") / f"bias-{time.strftime('%Y%m%d-%H%M%S')}"
    jobs.check(out, "bias.json", args.force)
    t0 = time.time()
    columns = ["q", "p", "T", "predictor", "sliced_w1", "energy", "occupancy_mse", "spread", "gap", "n"]
    with jobs.hold(out, "bias.json", args.force):  # one job per folder; a killed one continues from its cache
        rows = bias_study(
            pairs,
            Ts,
            n=n,
            seed=args.seed or 0,
            cache=out / "cache",
            progress=None
            if args.quiet
            else lambda r: print(
                f"  {r['q']}/{r['p']} T={r['T']} {r['predictor']}: sliced W1 {r['sliced_w1']:.4f}, gap {r['gap']:.4f}",
                flush=True,
            ),
        )
        write_atomic(out / "bias.md", markdown_table(rows, columns).encode())
        caption = "Loss-optimal predictor vs conditional mean on a Gaussian mixture with exact scores"
        write_atomic(out / "bias.tex", latex_table(rows, columns, caption, keys=["q", "p", "T", "predictor"]).encode())
        tmp = out / ".bias.tmp.png"
        plot_bias(
            rows, tmp, metric="spread"
        )  # sliced W1 at n = 1000 is mostly noise; the spread shows the pull to the modes
        os.replace(tmp, out / "bias.png")
        payload = {"provenance": provenance(), "rows": rows}
        write_atomic(out / "bias.json", json_text(payload).encode())  # last: the job is finished
    print(markdown_table(rows, columns))
    print(f"wrote {out}/: bias.json, bias.md, bias.tex, bias.png ({time.time() - t0:.0f} s)")
    return 0
