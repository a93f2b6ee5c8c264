"""The ``nonnormal`` command: parses, validates, calls the library. No math lives here."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

from .runs import write_atomic
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
    from .invariance import invariance_study
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
    if getattr(args, "tensorboard", False):
        out.append("train.tensorboard=true")
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
    if args.resume and not args.config:  # the run's own config (if it has one yet), then the flags
        from .runs import saved_config

        base = saved_config(out)
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

    from .data import levels_to_unit, unit_to_levels
    from .diffusion import Diffusion
    from .report import save_grid
    from .runs import load_run
    from .train import pick_device

    device = pick_device(args.device)
    if _source(args) == "pretrained":  # a diffusers folder, seen as a run (see integrations.diffusers)
        model, cfg, state = _diffusers().pretrained_as_run(args.pretrained, device)
    else:
        model, cfg, state = load_run(args.run, device)
    if args.n <= 0:
        raise NonnormalError(f"--n must be positive, got {args.n}")
    options = _sampler_options(args)
    overrides = {k: v for k, v in (("T", args.T), ("spacing", args.spacing), ("rule", args.rule)) if v is not None}
    diffusion = Diffusion.from_config({**cfg["diffusion"], **overrides})  # the run's schedule, laws, rule, grid
    info = {"sampler": args.sampler, "schedule": diffusion.schedule.spec, "spacing": diffusion.spacing}
    if args.sampler == "walk":
        law = diffusion.walk(args.law, T=1).law  # checks the law before any work
        info.update(law=law.spec, rule=diffusion.rule, T=diffusion.T)
        stem = f"samples-{law.spec}-T{diffusion.T}-seed{args.seed}"
    else:
        info.update({k: v for k, v in (("ode_method", options["method"]), ("ode_steps", options["steps"])) if v})
        stem = f"samples-ode-{options['method']}{options['steps'] or ''}-seed{args.seed}"
    out = _out_dir(args.out or str(Path(state.get("folder") or args.run) / stem), "", args.force,
                   ["samples.png", "samples.npz"])
    shape = (args.n,) + tuple(state["shape"])
    if args.sampler == "walk":
        x = diffusion.sample(model, shape, seed=args.seed, law=law, device=device, progress=not args.quiet)
    else:
        x = diffusion.ode_sample(model, shape, seed=args.seed, device=device, **options)
    x = x.cpu()
    arrays = {"samples": x.numpy()}
    if state["levels"]:
        levels = unit_to_levels(x, state["levels"])
        arrays["levels"] = levels.numpy().astype(np.uint8 if state["levels"] <= 256 else np.int32)
        x = levels_to_unit(levels, state["levels"])
    buf = __import__("io").BytesIO()
    np.savez(buf, seed=args.seed, **info, **arrays)
    write_atomic(out / "samples.npz", buf.getvalue())
    if len(shape) == 4:
        tmp = out / ".samples.tmp.png"
        save_grid(x, tmp, nrow=int(math.ceil(math.sqrt(args.n))))
        os.replace(tmp, out / "samples.png")
        print(f"wrote {out / 'samples.png'} and {out / 'samples.npz'}")
    else:
        print(f"wrote {out / 'samples.npz'}")
    return 0


def _sampler_options(args) -> dict:
    """``--sampler`` checked with its flags; for the ODE, its solver options ``{method, steps, rtol, atol}``.
    Walk flags (--law, --rule, --T) do not go with the ODE, nor ODE flags (--ode-method, --ode-steps) with the walk."""
    from . import ode
    from .evaluate import SAMPLERS

    if args.sampler not in SAMPLERS:
        raise NonnormalError(f"unknown --sampler {args.sampler!r}: choose one of {', '.join(SAMPLERS)}")
    _check_tolerance(args.rtol)
    ode_flags = [f for f, v in (("--ode-method", args.ode_method), ("--ode-steps", args.ode_steps)) if v is not None]
    walk_flags = [f for f, v in (("--law", args.law), ("--rule", args.rule), ("--T", args.T)) if v is not None]
    if args.sampler == "walk" and ode_flags:
        raise NonnormalError(f"{ode_flags[0]} goes with --sampler ode (the walk takes --T, --law, --rule, --spacing)")
    if args.sampler == "ode" and walk_flags:
        raise NonnormalError(f"{walk_flags[0]} goes with --sampler walk: the probability-flow ODE has no increment "
                             "law, reverse rule or T (give --ode-method and --ode-steps)")
    if args.sampler == "walk":
        return {}
    return dict(zip(("method", "steps", "rtol", "atol"),
                    ode.check_options(args.ode_method or "dopri5", args.ode_steps, args.rtol, args.rtol)))


def cmd_eval(args) -> int:
    from .evaluate import evaluate_run
    from .train import pick_device

    if _source(args) == "pretrained":
        return _eval_pretrained(args)
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
                          seed=args.seed, quality=not args.no_quality, progress=not args.quiet, sampler=args.sampler,
                          ode_method=args.ode_method or "dopri5", ode_steps=args.ode_steps, spacing=args.spacing)
    text = json.dumps(result, indent=1)
    print(text)
    write_atomic(path, (text + "\n").encode())
    print(f"wrote {path}")
    return 0


def _diffusers():
    """nonnormal.integrations.diffusers, or a one-line error naming the extra."""
    try:
        from .integrations import diffusers
    except ImportError:
        raise NonnormalError("this needs diffusers, which is not installed: pip install 'nonnormal[diffusers]'") from None
    return diffusers


def _source(args) -> str:
    """``run`` or ``pretrained``: exactly one of a run folder and ``--pretrained DIR``."""
    if bool(args.run) == bool(getattr(args, "pretrained", None)):
        raise NonnormalError("give a run folder or --pretrained DIR (a local diffusers pipeline folder)"
                             + (", not both" if args.run else ""))
    return "run" if args.run else "pretrained"


def _eval_pretrained(args) -> int:
    from .train import pick_device

    if not args.dataset:
        raise NonnormalError("eval --pretrained needs --dataset: the test data to score the model on, e.g. cifar10:path=DIR")
    path = Path(args.out) if args.out else Path("runs") / f"pretrained-{Path(args.pretrained).resolve().name}" / "eval.json"
    if path.is_dir():
        raise NonnormalError(f"--out {path} is a folder: give a JSON file name")
    if path.exists() and not args.force:
        raise NonnormalError(f"{path} already exists: pass --force to overwrite it or give --out")
    _check_positive(args, "n_test", "n_samples", "T")
    _check_tolerance(args.rtol)
    result = _diffusers().evaluate_pretrained(args.pretrained, args.dataset, pick_device(args.device), args.n_test,
                                              args.n_samples, args.T, args.rtol, args.rtol, seed=args.seed,
                                              quality=not args.no_quality, progress=not args.quiet)
    text = json.dumps(result, indent=1)
    print(text)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, (text + "\n").encode())
    print(f"wrote {path}")
    return 0


def cmd_export(args) -> int:
    out = _diffusers().export_run(args.run, args.diffusers, force=args.force)
    print(f"wrote a diffusers pipeline folder {out}: DiffusionPipeline.from_pretrained({str(out)!r}) loads it "
          f"(nonnormal sample --pretrained {out} samples it as the run)")
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
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its newest checkpoint (from step 0 if it has none yet)")
    p.add_argument("--tensorboard", action="store_true", help="also log metrics to OUT/tensorboard")
    p.set_defaults(handler=cmd_train)

    def sampler_options(p, what):
        p.add_argument("--sampler", default="walk", help=f"walk (ancestral, law p) or ode (probability flow) for {what}")
        p.add_argument("--spacing", default=None, help="time grid: uniform, log-snr, quadratic, ddpm (default: the run's)")
        p.add_argument("--ode-method", default=None, help="ODE method: dopri5 (adaptive, default), heun, euler, rk4, ...")
        p.add_argument("--ode-steps", type=int, default=None, help="steps of a fixed-step ODE method (default 100)")
        p.add_argument("--rtol", type=float, default=1e-5, help="ODE tolerance of an adaptive method (rtol = atol)")

    p = sub.add_parser("sample", help="sample from a trained run: a PNG grid and an .npz")
    p.add_argument("run", nargs="?", help="run folder (or give --pretrained)")
    p.add_argument("--pretrained", default=None, metavar="DIR",
                   help="a local diffusers pipeline or UNet folder instead of a run (needs the diffusers extra)")
    p.add_argument("--n", type=int, default=64, help="number of samples")
    p.add_argument("--T", type=int, default=None, help="steps (default: the run's T)")
    p.add_argument("--rule", default=None, help="posterior or euler (default: the run's)")
    p.add_argument("--law", default=None, help="increment law of the reverse walk (default: the run's p)")
    p.add_argument("--seed", type=int, default=0, help="one seed couples every law: same prior, same uniforms")
    sampler_options(p, "the samples")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None, help="output folder (default RUN/samples-<law>-T<T>-seed<seed>)")
    p.add_argument("--force", action="store_true", help="overwrite earlier samples in --out")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(handler=cmd_sample)

    p = sub.add_parser("eval", help="test-set bits/dim (ODE and bound) and sample quality (FD, KID) of a run")
    p.add_argument("run", nargs="?", help="run folder (or give --pretrained)")
    p.add_argument("--pretrained", default=None, metavar="DIR",
                   help="a local diffusers pipeline or UNet folder instead of a run (needs --dataset)")
    p.add_argument("--dataset", default=None, help="test data for --pretrained, e.g. cifar10:path=DIR")
    p.add_argument("--n-test", type=int, default=None, help="first N test images (default all)")
    p.add_argument("--n-samples", type=int, default=None, help="samples for FD/KID (default: test-set size)")
    p.add_argument("--T", type=int, default=None, help="steps for the bound and the samples (default: the run's T)")
    p.add_argument("--seed", type=int, default=0)
    sampler_options(p, "FD/KID's samples (the ODE options also set bpd_ode's solver)")
    p.add_argument("--no-quality", action="store_true", help="skip sampling and FD/KID")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None, help="JSON file (default RUN/eval.json)")
    p.add_argument("--force", action="store_true", help="overwrite an earlier eval.json")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(handler=cmd_eval)

    p = sub.add_parser("export", help="write a trained run as a diffusers pipeline folder")
    p.add_argument("run", help="run folder")
    p.add_argument("--diffusers", required=True, metavar="OUT", help="the pipeline folder to write")
    p.add_argument("--force", action="store_true", help="replace a non-empty OUT")
    p.set_defaults(handler=cmd_export)

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
    except NonnormalError as err:  # exit_code: 75 for a training stopped by a signal (continue with --resume)
        code = getattr(err, "exit_code", 2)
        print(f"nonnormal: {'error: ' if code == 2 else ''}{err}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        print("nonnormal: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
