"""The ``nonnormal`` command: parses, validates, calls the library. No math lives here."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

from .errors import NonnormalError


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise NonnormalError(f"{what} must be comma-separated integers, got {text!r}: e.g. 4,16,64,256") from None
    bad = [v for v in values if v <= 0]
    if not values or bad:
        raise NonnormalError(f"{what} must be positive integers, got {text!r}: e.g. 4,16,64,256")
    return values


def _out_dir(out: str | None, stem: str, force: bool, files: list[str]) -> Path:
    path = Path(out) if out else Path("runs") / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    if path.exists() and not path.is_dir():
        raise NonnormalError(f"--out {str(path)!r} is a file: give a folder")
    clash = [f for f in files if (path / f).exists()]
    if clash and not force:
        raise NonnormalError(f"{path / clash[0]} already exists: pass --force to overwrite it or choose another --out")
    path.mkdir(parents=True, exist_ok=True)
    return path


def cmd_laws(args) -> int:
    from . import increments

    rows = []
    for name in increments.names():
        law = increments.get(name)
        rows.append({"name": name, "spec": law.spec, "params": law.params, "variance": 1.0,
                     "fourth_moment": law.fourth_moment, "has_density": law.has_density,
                     "support": [law.support[0], law.support[1]]})
    if args.json:
        print(json.dumps(rows, indent=2, default=lambda v: str(v)))
        return 0
    print(f"{'law':<12}{'parameters':<14}{'variance':>9}{'E z^4':>9}  density  support")
    for r in rows:
        params = ",".join(f"{k}={v:g}" for k, v in r["params"].items()) or "-"
        lo, hi = r["support"]
        support = "R" if math.isinf(lo) and math.isinf(hi) else f"[{lo:.3g}, {hi:.3g}]"
        print(f"{r['name']:<12}{params:<14}{r['variance']:>9.3g}{r['fourth_moment']:>9.4g}  {'yes' if r['has_density'] else 'no ':<7}  {support}")
    print("parameters: name:key=value, e.g. student_t:nu=8 (nu > 4 needed for a finite fourth moment)")
    return 0


def cmd_kl(args) -> int:
    import torch

    from .divergences import divergence

    try:
        us = [float(v) for v in args.u.split(",") if v.strip()]
    except ValueError:
        raise NonnormalError(f"--u must be comma-separated numbers, got {args.u!r}: e.g. 0,0.5,1,2") from None
    d = divergence(args.q, args.p)
    values = d(torch.tensor(us, dtype=torch.float64)).tolist()
    if args.json:
        print(json.dumps({"q": d.q.spec, "p": d.p.spec, "kind": d.kind, "k0": d.k0, "u": us, "K": values}, indent=2))
        return 0
    print(f"K(u) = KL(q(. - u) || p) per coordinate, q = {d.q.spec}, p = {d.p.spec} ({d.kind}); K(0) = {d.k0:.6f}")
    for u, k in zip(us, values):
        print(f"  u = {u:>8g}   K = {k:.6f}")
    return 0


def cmd_invariance(args) -> int:
    from . import increments, schedules
    from .evaluate import invariance_study
    from .report import plot_invariance

    laws = [increments.get(s) for s in args.laws.split(",") if s.strip()]
    steps = _int_list(args.steps, "--steps")
    schedule = schedules.get(args.schedule)
    if args.paths < 16:
        raise NonnormalError(f"--paths must be at least 16, got {args.paths}")
    out = _out_dir(args.out, "invariance", args.force, ["invariance.json", "invariance.png"])
    result = invariance_study(laws, steps, schedule, args.paths, args.seed, progress=not args.quiet)
    payload = {law: {str(T): w for T, w in row.items()} for law, row in result.items()}
    _write_atomic(out / "invariance.json", (json.dumps(payload, indent=2) + "\n").encode())
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nonnormal", description="Non-normal diffusion models.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("laws", help="list the increment laws")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=cmd_laws)

    p = sub.add_parser("kl", help="the per-step divergence K(u) of a (q, p) pair of laws")
    p.add_argument("q", help="law of the data walk's steps, e.g. uniform")
    p.add_argument("p", help="law of the model walk's steps, e.g. laplace")
    p.add_argument("--u", default="0,0.5,1,2,4", help="comma-separated standardized shifts u")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=cmd_kl)

    p = sub.add_parser("invariance", help="forward walks with non-normal increments against their Gaussian limit")
    p.add_argument("--laws", default="laplace,uniform,rademacher", help="comma-separated laws (gaussian is always added)")
    p.add_argument("--steps", default="4,16,64,256", help="comma-separated step counts T")
    p.add_argument("--schedule", default="vdm", help="noise schedule: vdm, cosine, ddpm-linear, brownian")
    p.add_argument("--paths", type=int, default=200_000, help="number of simulated walks")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="output folder (default runs/invariance-<timestamp>)")
    p.add_argument("--force", action="store_true", help="overwrite results already in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_invariance)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except NonnormalError as err:
        print(f"nonnormal: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nonnormal: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
