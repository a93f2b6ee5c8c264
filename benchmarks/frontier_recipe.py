"""How the frontier's verdict moves with training: the same settings on a seed's models at two step counts.

    python benchmarks/frontier_recipe.py BASE LONG [--seed 0]

BASE and LONG are frontier folders (their ``frontier.json``): BASE the preset's models, LONG the same
recipe with more steps, e.g. the recipe check's models scored by the frontier::

    nonnormal frontier --config frontier-digits --out runs/frontier               # BASE, check included
    mkdir -p runs/frontier-long && cp -r runs/frontier/check/models runs/frontier-long/
    nonnormal frontier --config frontier-digits --set train.steps=9600 --seeds 1 --no-check --out runs/frontier-long

(``train.steps`` = the preset's steps x its ``check_factor``.) docs/frontier-digits-w24-1200 and
docs/frontier-digits-long were made this way (LONG with ``--seeds 2``) from the preset as it was before
commit 1803129, a width-24 UNet with 1200 steps: ``git show bb34d0e:src/nonnormal/presets/frontier-digits.toml
> w24.toml``, then ``--config w24.toml`` and ``train.steps=4800``.

Prints a markdown table: per NFE target, each folder's best setting on that seed (lowest FD), its best
Gaussian setting, and their difference (one seed: no interval), then the recipe check of BASE.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nonnormal.frontier_report import is_gaussian, setting_of


def best(rows: list[dict], target: int, gaussian: bool) -> tuple[str, float] | None:
    pool = [
        r for r in rows if r["nfe_target"] == target and r.get("fd") is not None and (is_gaussian(r) or not gaussian)
    ]
    if not pool:
        return None
    r = min(pool, key=lambda r: (r["fd"], setting_of(r)))
    return setting_of(r), float(r["fd"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("base", type=Path)
    ap.add_argument("long", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    results = {}
    for name in ("base", "long"):
        path = getattr(args, name) / "frontier.json"
        if not path.is_file():
            sys.exit(f"error: {path} not found: give a finished frontier folder")
        d = json.loads(path.read_text())
        rows = [r for r in d["rows"] if r["seed"] == args.seed]
        if not rows:
            sys.exit(f"error: {path} has no rows of seed {args.seed}: give --seed one of its seeds")
        results[name] = (d, rows)
    steps = {k: d["config"]["train"]["steps"] for k, (d, _) in results.items()}
    print(
        f"| NFE | best, {steps['base']} steps | FD | best Gaussian | FD | diff "
        f"| best, {steps['long']} steps | FD | best Gaussian | FD | diff |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    targets = sorted({r["nfe_target"] for r in results["base"][1]} & {r["nfe_target"] for r in results["long"][1]})
    for target in targets:
        cells = [str(target)]
        for name in ("base", "long"):
            rows = results[name][1]
            (b, fb), g = best(rows, target, False), best(rows, target, True)
            cells += [b, f"{fb:.2f}"] + ([g[0], f"{g[1]:.2f}", f"{fb - g[1]:+.2f}"] if g else ["", "", ""])
        print("| " + " | ".join(cells) + " |")
    check = results["base"][0].get("check") or []
    if check:
        print()
        for c in check:
            print(
                f"- recipe check, {c['pair']} seed {c['seed']}: {c['bpd_ode']:.3f} bits/dim at {c['steps']} steps, "
                f"{c['bpd_ode_long']:.3f} at {c['steps_long']} (gap {c['gap']:.3f})"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
