"""The ``nonnormal`` command: parses, validates, calls the library. No math lives here."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

from .checkpoint import write_atomic
from .errors import NonnormalError


def _int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise NonnormalError(f"{what} must be comma-separated integers, got {text!r}: e.g. 4,16,64,256") from None
    bad = [v for v in values if v <= 0]
    if not values or bad:
        raise NonnormalError(f"{what} must be positive integers, got {text!r}: e.g. 4,16,64,256")
    return values


def _check_positive(args, *names: str) -> None:
    """Optional integer flags (None = not given) must be positive when given."""
    for name in names:
        v = getattr(args, name)
        if v is not None and v <= 0:
            raise NonnormalError(f"--{name.replace('_', '-')} must be positive, got {v}")


def _check_tolerance(rtol: float, what: str = "--rtol") -> float:
    if not (math.isfinite(rtol) and rtol > 0):
        raise NonnormalError(f"{what} must be a finite positive number, got {rtol}: e.g. 1e-5")
    return rtol


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
    write_atomic(out / "invariance.json", (json.dumps(payload, indent=2) + "\n").encode())
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


def _train_overrides(args) -> list[str]:
    """The shortcut flags of train/compare as ``section.key=value`` overrides (after --set)."""
    out = list(args.set or [])
    pairs = [("dataset", "data.dataset", True), ("schedule", "diffusion.schedule", True), ("T", "diffusion.T", False),
             ("steps", "train.steps", False), ("batch", "train.batch", False), ("device", "train.device", True),
             ("seed", "train.seed", False)]
    for attr, key, quote in pairs:
        value = getattr(args, attr, None)
        if value is not None:
            out.append(f"{key}={json.dumps(value) if quote else value}")
    if getattr(args, "bf16", False):
        out.append("train.bf16=true")
    return out


def cmd_train(args) -> int:
    from . import config as config_lib, increments
    from .divergences import check_pair
    from .train import train

    overrides = _train_overrides(args)
    q, p = args.q or args.law, args.p or args.law
    if args.law and (args.q or args.p):
        raise NonnormalError("give either --law (for both walks) or --q/--p, not both")
    overrides += [f"diffusion.q={json.dumps(q)}"] if q else []
    overrides += [f"diffusion.p={json.dumps(p)}"] if p else []
    if not args.out and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise NonnormalError("under torchrun, give --out: every process must write to the same run folder")
    out = Path(args.out) if args.out else Path("runs") / f"train-{time.strftime('%Y%m%d-%H%M%S')}"
    if out.exists() and not out.is_dir():
        raise NonnormalError(f"--out {str(out)!r} is a file: give a folder")
    base = None
    if args.resume:
        if not out.is_dir():
            raise NonnormalError(f"--resume needs an existing run folder, and {out} does not exist")
        if not args.config:  # the run's own config, then the flags
            from .checkpoint import load as load_checkpoint
            from .train import CHECKPOINT

            base = load_checkpoint(out / CHECKPOINT)[1]["config"]
    cfg = config_lib.load(args.config, overrides, base=base)
    check_pair(increments.get(cfg["diffusion"]["q"]), increments.get(cfg["diffusion"]["p"]))
    try:
        state = train(cfg, out, resume=args.resume, progress=not args.quiet)
    finally:
        import torch.distributed

        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    print(f"trained {state['step']} steps in {state['train_seconds']:.0f} s: {out}")
    return 0


def cmd_sample(args) -> int:
    import numpy as np

    from . import increments, walk
    from .data import levels_to_unit, unit_to_levels
    from .report import save_grid
    from .samplers import sample
    from .train import load_run, pick_device

    device = pick_device(args.device)
    model, cfg, state = load_run(args.run, device)
    d = cfg["diffusion"]
    law = increments.get(args.law or d["p"])
    rule = walk.check_rule(args.rule or d["rule"])
    T = d["T"] if args.T is None else args.T
    if T <= 0 or args.n <= 0:
        raise NonnormalError(f"--T and --n must be positive, got T={T}, n={args.n}")
    default = Path(args.run) / f"samples-{law.spec}-T{T}-seed{args.seed}"
    out = _out_dir(args.out or str(default), "", args.force, ["samples.png", "samples.npz"])
    shape = tuple(state["shape"])
    x = sample(model, (args.n,) + shape, d["schedule"], T, law, rule, args.seed, device, progress=not args.quiet).cpu()
    arrays = {"samples": x.numpy()}
    if state["levels"]:
        levels = unit_to_levels(x, state["levels"])
        arrays["levels"] = levels.numpy().astype(np.uint8 if state["levels"] <= 256 else np.int32)
        x = levels_to_unit(levels, state["levels"])
    buf = __import__("io").BytesIO()
    np.savez(buf, law=law.spec, rule=rule, T=T, seed=args.seed, **arrays)
    write_atomic(out / "samples.npz", buf.getvalue())
    if len(shape) == 3:
        tmp = out / ".samples.tmp.png"
        save_grid(x, tmp, nrow=int(math.ceil(math.sqrt(args.n))))
        os.replace(tmp, out / "samples.png")
        print(f"wrote {out / 'samples.png'} and {out / 'samples.npz'}")
    else:
        print(f"wrote {out / 'samples.npz'}")
    return 0


def cmd_eval(args) -> int:
    from .evaluate import evaluate_run
    from .train import pick_device

    if not Path(args.run).is_dir():
        raise NonnormalError(f"run folder {args.run} not found: give the --out folder of a `nonnormal train` run")
    path = Path(args.out) if args.out else Path(args.run) / "eval.json"
    if path.is_dir():
        raise NonnormalError(f"--out {path} is a folder: give a JSON file name")
    if not path.parent.is_dir():
        raise NonnormalError(f"the folder of --out {path} does not exist: create it or give another --out")
    if path.exists() and not args.force:
        raise NonnormalError(f"{path} already exists: pass --force to overwrite it or give --out")
    _check_positive(args, "n_test", "n_samples", "T")
    _check_tolerance(args.rtol)
    result = evaluate_run(args.run, pick_device(args.device), args.n_test, args.n_samples, args.T, args.rtol, args.rtol,
                          seed=args.seed, quality=not args.no_quality, progress=not args.quiet)
    text = json.dumps(result, indent=1)
    print(text)
    write_atomic(path, (text + "\n").encode())
    print(f"wrote {path}")
    return 0


def cmd_compare(args) -> int:
    from .compare import OUTPUTS, PAIRS, compare, parse_pairs

    pairs = parse_pairs(args.pairs) if args.pairs else list(PAIRS)
    out = Path(args.out) if args.out else Path("runs") / f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
    if out.exists() and not out.is_dir():
        raise NonnormalError(f"--out {str(out)!r} is a file: give a folder")
    clash = [f for f in OUTPUTS if (out / f).exists()]
    if clash and not args.force:
        raise NonnormalError(f"{out / clash[0]} already exists: pass --force to rebuild the table or choose another --out")
    config = args.config or _default_compare_config()
    t0 = time.time()
    _check_positive(args, "n_test", "n_samples", "seeds")
    _check_tolerance(args.rtol)
    compare(out, pairs, config, _train_overrides(args), seeds=args.seeds, n_samples=args.n_samples,
            n_test=args.n_test, rtol=args.rtol, sample_seed=args.sample_seed, progress=not args.quiet)
    print()
    print((out / "table.md").read_text())
    print(f"wrote {out}/: {', '.join(OUTPUTS)} ({time.time() - t0:.0f} s)")
    return 0


def cmd_study(args) -> int:
    if args.what == "bias":
        return _study_bias(args)
    from .report import write_study
    from .study import Study, load_plan

    config = args.config or (str(_repo_config("study-quick.toml") or "") if args.quick else _repo_config("study-digits.toml"))
    if args.quick and not config:
        raise NonnormalError("--quick needs configs/study-quick.toml: run from the repository or give --config")
    if not config:
        raise NonnormalError("give --config (e.g. configs/study-digits.toml) or --quick")
    seeds = list(range(args.seeds)) if args.seeds else None
    if args.seeds is not None and args.seeds <= 0:
        raise NonnormalError(f"--seeds must be positive, got {args.seeds}")
    plan, run_config = load_plan(config, {"seeds": seeds})
    out = Path(args.out) if args.out else Path("runs") / f"study-{time.strftime('%Y%m%d-%H%M%S')}"
    if out.exists() and not out.is_dir():
        raise NonnormalError(f"--out {str(out)!r} is a file: give a folder")
    if (out / "study.json").exists() and not args.force:
        raise NonnormalError(f"{out / 'study.json'} already exists: pass --force to rebuild it or choose another --out")
    t0 = time.time()
    study = Study(out, plan, run_config, _train_overrides(args), progress=not args.quiet)
    out.mkdir(parents=True, exist_ok=True)
    result = study.run()
    figures = {T: study.figure_rows(T, plan.seeds[0]) for T in plan.T_train}
    files = write_study(out, result, figures, run_config)
    print()
    for line in result["findings"]:
        print(f"- {line}")
    print(f"wrote {out}/: {', '.join(files)} ({time.time() - t0:.0f} s)")
    return 0


def _study_bias(args) -> int:
    raise NonnormalError("nonnormal study bias is not wired yet")


def _repo_config(name: str) -> str | None:
    path = Path("configs") / name
    return str(path) if path.is_file() else None


def _default_compare_config() -> str | None:
    """configs/compare-digits.toml when run from the repository, else the built-in defaults."""
    path = Path("configs") / "compare-digits.toml"
    return str(path) if path.is_file() else None


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (what is wrong, and where to look) and exit 2."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog="nonnormal", description="Non-normal diffusion models.")
    parser.add_argument("--version", action="version", version=f"nonnormal {__version__}")
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE_OR_FILE",
                        help="import a module (or .py file) that registers laws, schedules or networks; repeatable; "
                             "runs record it, so later commands on the run load it again")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("laws", help="list the increment laws")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(handler=cmd_laws)

    p = sub.add_parser("kl", help="the per-step divergence K(u) of a (q, p) pair of laws")
    p.add_argument("q", help="law of the data walk's steps, e.g. uniform")
    p.add_argument("p", help="law of the model walk's steps, e.g. laplace")
    p.add_argument("--u", default="0,0.5,1,2,4", help="comma-separated standardized shifts u")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=cmd_kl)

    p = sub.add_parser("invariance", help="forward walks with non-normal increments against their Gaussian limit")
    p.add_argument("--laws", default="laplace,uniform,rademacher", help="comma-separated laws (gaussian is always added)")
    p.add_argument("--steps", default="4,16,64,256", help="comma-separated step counts T")
    p.add_argument("--schedule", default="vdm", help="noise schedule: vdm, cosine, ddpm-linear, brownian")
    p.add_argument("--paths", type=int, default=200_000, help="number of simulated walks")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="output folder (default runs/invariance-<timestamp>)")
    p.add_argument("--force", action="store_true", help="overwrite results already in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=cmd_invariance)

    def run_options(p, steps_help):
        p.add_argument("--config", default=None, help="TOML config (see configs/); flags below override it")
        p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config key (repeatable)")
        p.add_argument("--dataset", default=None, help="dataset spec, e.g. digits, mnist5k, cifar10:path=FILE")
        p.add_argument("--schedule", default=None, help="noise schedule: vdm, cosine, ddpm-linear, brownian")
        p.add_argument("--T", type=int, default=None, help="number of steps of the walk")
        p.add_argument("--steps", type=int, default=None, help=steps_help)
        p.add_argument("--batch", type=int, default=None, help="global batch size")
        p.add_argument("--seed", type=int, default=None, help="training seed")
        p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N")
        p.add_argument("--bf16", action="store_true", help="bf16 autocast")
        p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("train", help="train a model (launch with torchrun for several processes)")
    run_options(p, "optimizer steps")
    p.add_argument("--law", default=None, help="increment law of both walks")
    p.add_argument("--q", default=None, help="increment law of the data walk")
    p.add_argument("--p", default=None, help="increment law of the model walk")
    p.add_argument("--out", default=None, help="run folder (default runs/train-<timestamp>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser("sample", help="sample from a trained run: a PNG grid and an .npz")
    p.add_argument("run", help="run folder")
    p.add_argument("--n", type=int, default=64, help="number of samples")
    p.add_argument("--T", type=int, default=None, help="steps (default: the run's T)")
    p.add_argument("--rule", default=None, help="posterior or euler (default: the run's)")
    p.add_argument("--law", default=None, help="increment law of the reverse walk (default: the run's p)")
    p.add_argument("--seed", type=int, default=0, help="one seed couples every law: same prior, same uniforms")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None, help="output folder (default RUN/samples-<law>-T<T>-seed<seed>)")
    p.add_argument("--force", action="store_true", help="overwrite earlier samples in --out")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(handler=cmd_sample)

    p = sub.add_parser("eval", help="test-set bits/dim (ODE and bound) and sample quality (FD, KID) of a run")
    p.add_argument("run", help="run folder")
    p.add_argument("--n-test", type=int, default=None, help="first N test images (default all)")
    p.add_argument("--n-samples", type=int, default=None, help="samples for FD/KID (default: test-set size)")
    p.add_argument("--T", type=int, default=None, help="steps for the bound and the samples (default: the run's T)")
    p.add_argument("--rtol", type=float, default=1e-5, help="ODE tolerance (rtol = atol)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-quality", action="store_true", help="skip sampling and FD/KID")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None, help="JSON file (default RUN/eval.json)")
    p.add_argument("--force", action="store_true", help="overwrite an earlier eval.json")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(handler=cmd_eval)

    p = sub.add_parser("compare", help="the main job: train, evaluate and compare (q, p) pairs side by side")
    run_options(p, "optimizer steps per pair")
    p.add_argument("--pairs", default=None, help="comma-separated q/p pairs (default: the paper's four + logistic, student_t)")
    p.add_argument("--seeds", type=int, default=2, help="training seeds per pair (seed, seed+1, ...): 2 or more give intervals")
    p.add_argument("--n-samples", type=int, default=None, help="samples per pair for FD/KID (default: test-set size)")
    p.add_argument("--n-test", type=int, default=None, help="first N test images for bits/dim (default all)")
    p.add_argument("--rtol", type=float, default=1e-3, help="ODE tolerance for bits/dim (rtol = atol; eval uses 1e-5)")
    p.add_argument("--sample-seed", type=int, default=0, help="seed of the samples (shared by every pair)")
    p.add_argument("--out", default=None, help="output folder (default runs/compare-<timestamp>); an unfinished one resumes")
    p.add_argument("--force", action="store_true", help="rebuild the table in a finished --out")
    p.set_defaults(handler=cmd_compare)

    p = sub.add_parser("study", help="what the law changes: pairs x training T x seeds, sampled with several laws and T")
    p.add_argument("what", nargs="?", default="grid", choices=("grid", "bias"),
                   help="grid (default): train and measure the grid of a study config; bias: the bias of non-L2 "
                        "losses on exact-score mixtures")
    run_options(p, "optimizer steps per model")
    p.add_argument("--quick", action="store_true", help="the whole pipeline at a tiny size (configs/study-quick.toml)")
    p.add_argument("--seeds", type=int, default=None, help="train seeds 0..N-1 (overrides the config's study.seeds)")
    p.add_argument("--out", default=None, help="output folder (default runs/study-<timestamp>); an unfinished one resumes")
    p.add_argument("--force", action="store_true", help="rebuild the outputs in a finished --out")
    p.set_defaults(handler=cmd_study)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from . import plugins

        plugins.load_entry_points()
        plugins.REQUESTED[:] = plugins.load(args.plugin)
        return args.handler(args)
    except NonnormalError as err:
        print(f"nonnormal: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nonnormal: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
