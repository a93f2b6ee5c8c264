"""Bits/dim of trained runs on test and training images, scored as the frontier's recipe check scores them.

The check (``nonnormal frontier``) compares one model with the same recipe at 4x the steps on the
first ``n_bound`` test images (probability-flow ODE, Hutchinson trace, rtol = atol = 1e-3, generator
seeded 12345). This script scores any runs the same way, on the test split and on the same number of
training images, so a learning curve shows whether more steps help, or overfit:

    for s in 1200 2400 4800 9600; do
      nonnormal train --config frontier.toml --steps $s --law gaussian --out runs/curve-$s
    done
    python benchmarks/recipe_curve.py runs/curve-*        # a markdown table, one row per run

where ``frontier.toml`` is the [data], [net], [diffusion] and [train] tables of the preset
frontier-digits (``nonnormal presets frontier-digits``).
"""

from __future__ import annotations

import argparse
import sys

import torch

from nonnormal import data as data_lib
from nonnormal.diffusion import Diffusion
from nonnormal.runs import load_run


def score(run: str, n: int, rtol: float) -> dict:
    model, cfg, state = load_run(run, torch.device("cpu"))
    diffusion = Diffusion.from_config(cfg["diffusion"])
    data = data_lib.load(cfg["data"]["dataset"], seed=cfg["data"]["split_seed"])
    row = {"run": run, "steps": state["step"]}
    for split in ("test", "train"):
        g = torch.Generator().manual_seed(12345)  # the frontier's images, dequantization and probes
        x = data.unit(split, None)[:n]
        bpd, _ = diffusion.bits_per_dim(model, x, data.levels, generator=g, trace="hutchinson", rtol=rtol, atol=rtol)
        row[f"bpd_{split}"] = float(bpd.mean())
        row[f"se_{split}"] = float(bpd.std() / len(bpd) ** 0.5)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="run folders")
    ap.add_argument("--n", type=int, default=128, help="images per split (the frontier's n_bound)")
    ap.add_argument("--rtol", type=float, default=1e-3, help="ODE tolerance (the frontier's study.rtol)")
    a = ap.parse_args(argv)
    rows = sorted((score(r, a.n, a.rtol) for r in a.runs), key=lambda r: r["steps"])
    print(f"| run | steps | bits/dim, first {a.n} test images | bits/dim, first {a.n} training images |")
    print("|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['run']} | {r['steps']} | {r['bpd_test']:.3f} (se {r['se_test']:.3f}) | "
            f"{r['bpd_train']:.3f} (se {r['se_train']:.3f}) |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
