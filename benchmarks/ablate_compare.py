"""Ablation of the `nonnormal compare` recipe (preset compare-digits) on digits.

Each variant trains gaussian/gaussian at T = 100 with the given overrides, for each seed, and is
scored like compare scores it (test bits/dim by the probability-flow ODE, dopri5 at rtol 1e-3, the
same images, dequantization noise and probes for every variant). Writes benchmarks/ablation.json
and benchmarks/ABLATION.md (the table, the machine, the command).

    python benchmarks/ablate_compare.py                      # every variant, seeds 0 and 1
    python benchmarks/ablate_compare.py --variants base,lr4e-3 --seeds 0
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from nonnormal import config
from nonnormal import data as data_lib
from nonnormal.diffusion import Diffusion
from nonnormal.runs import load_run
from nonnormal.train import train

HERE = Path(__file__).parent
CONFIG = "compare-digits"  # the packaged preset
VARIANTS = {
    "base": [],
    "steps900": ["train.steps=900"],
    "lr4e-3": ["train.lr=4e-3"],
    "lr1e-3": ["train.lr=1e-3"],
    "ema0.999": ["train.ema=0.999"],
    "ema0.98": ["train.ema=0.98"],
    "width32": ["net.width=32"],
    "width16": ["net.width=16"],
    "batch64": ["train.batch=64"],
    "attn4": ["net.attn_resolutions=[4]"],
    "nodecay": ['train.decay="none"'],
}


def score(run: Path, x: torch.Tensor, levels: int, rtol: float) -> float:
    model, cfg, _ = load_run(run, "cpu")
    g = torch.Generator().manual_seed(12345)
    bpd, _ = Diffusion.from_config(cfg["diffusion"]).bits_per_dim(
        model, x, levels, generator=g, trace="hutchinson", rtol=rtol, atol=rtol
    )
    return float(bpd.mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--rtol", type=float, default=1e-3)
    args = ap.parse_args()
    names = [v for v in args.variants.split(",") if v]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    base = config.load(CONFIG)
    data = data_lib.load(base["data"]["dataset"], seed=base["data"]["split_seed"])
    x = data.unit("test")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            for seed in seeds:
                cfg = config.load(CONFIG, VARIANTS[name] + [f"train.seed={seed}", 'train.device="cpu"'])
                run = Path(tmp) / f"{name}-{seed}"
                t0 = time.perf_counter()
                state = train(cfg, run, progress=False)
                bpd = score(run, x, data.levels, args.rtol)
                rows.append(
                    {
                        "variant": name,
                        "overrides": VARIANTS[name],
                        "seed": seed,
                        "bpd_ode": bpd,
                        "train_seconds": state["train_seconds"],
                        "wall_seconds": time.perf_counter() - t0,
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    summary = []
    for name in names:
        vals = [r for r in rows if r["variant"] == name]
        mean = sum(r["bpd_ode"] for r in vals) / len(vals)
        summary.append(
            {
                "variant": name,
                "overrides": " ".join(VARIANTS[name]) or "(preset compare-digits)",
                "bpd_ode": mean,
                "per_seed": [round(r["bpd_ode"], 4) for r in vals],
                "train_seconds": sum(r["train_seconds"] for r in vals) / len(vals),
            }
        )
    meta = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "torch": torch.__version__,
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "test_images": int(x.shape[0]),
        "rtol": args.rtol,
    }
    (HERE / "ablation.json").write_text(json.dumps({"meta": meta, "rows": rows, "summary": summary}, indent=1) + "\n")
    lines = [
        "# Ablation of the compare recipe (gaussian/gaussian, digits, T = 100)",
        "",
        f"`python benchmarks/{meta['command']}` on {meta['machine']}, torch {meta['torch']}, {meta['date']}; "
        f"bits/dim by the probability-flow ODE on the {meta['test_images']} test images (rtol {args.rtol:g}), "
        "mean over seeds.",
        "",
        "| variant | overrides | bpd_ode | per seed | train s |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {s['variant']} | {s['overrides']} | {s['bpd_ode']:.4f} | {s['per_seed']} | {s['train_seconds']:.0f} |"
        for s in summary
    ]
    (HERE / "ABLATION.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
