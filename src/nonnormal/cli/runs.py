"""Commands on one run: train, sample, eval, export (a run folder or a pretrained diffusers folder)."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from ..errors import NonnormalError
from ..files import json_text, write_atomic
from .common import check_positive, check_tolerance, make_folder, out_dir, train_overrides


def cmd_train(args) -> int:
    from .. import config as config_lib
    from .. import increments
    from ..divergences import check_pair
    from ..train import train

    overrides = train_overrides(args)
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
        from ..runs import saved_config

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
    import torch

    from ..data import levels_to_unit, unit_to_levels
    from ..device import pick_device
    from ..diffusion import Diffusion
    from ..report import save_grid
    from ..runs import load_run

    device = pick_device(args.device)
    if _source(args) == "pretrained":  # a diffusers folder, seen as a run (see integrations.diffusers)
        model, cfg, state = _diffusers().pretrained_as_run(args.pretrained, device)
    else:
        model, cfg, state = load_run(args.run, device)
    if args.n <= 0:
        raise NonnormalError(f"--n must be positive, got {args.n}")
    model, labels, class_info = _class_model(args, model, cfg)
    options = _sampler_options(args)
    overrides = {k: v for k, v in (("T", args.T), ("spacing", args.spacing), ("rule", args.rule)) if v is not None}
    diffusion = Diffusion.from_config({**cfg["diffusion"], **overrides})  # the run's schedule, laws, rule, grid
    info = {"sampler": args.sampler, "schedule": diffusion.schedule.spec, "spacing": diffusion.spacing}
    if args.sampler == "ode":
        info.update({k: v for k, v in (("ode_method", options["method"]), ("ode_steps", options["steps"])) if v})
        stem = f"samples-ode-{options['method']}{options['steps'] or ''}-seed{args.seed}"
    else:
        from .. import samplers

        steps = options.get("steps") or diffusion.T
        info.update(T=steps)
        law = diffusion.walk(args.law, T=1).law if samplers.is_stochastic(args.sampler) else None  # checked early
        if args.kernel is not None:  # a file, or fitted for this grid in the folder `nonnormal fit` wrote to
            from ..kernels import find_kernel, read_kernel

            path = args.kernel
            if args.kernel == "fitted":
                source = args.run or f"--pretrained {args.pretrained} --dataset DATA"
                path = find_kernel(state.get("folder") or args.run, steps, diffusion.spacing, source=source)
            options["kernel"] = read_kernel(path)
            info.update(law="fitted", kernel_file=str(path), kernel_family=options["kernel"].family)
        elif law is not None:
            info.update(law=law.spec)
            options["law"] = law
        if args.sampler == "walk":
            info.update(rule=diffusion.rule)
            stem = f"samples-{info['law']}-T{steps}-seed{args.seed}"
        else:
            eta = f"-eta{options['eta']:g}" if "eta" in options else ""
            stem = f"samples-{args.sampler}{eta}{'-' + law.spec if law else ''}-N{steps}-seed{args.seed}"
            info.update({k: v for k, v in options.items() if k == "eta"})
    if labels is not None:
        stem += f"-class{'list' if ',' in args.class_spec else args.class_spec}-w{class_info['guidance']:g}"
        info.update(class_info)
    out = out_dir(
        args.out or str(Path(state.get("folder") or args.run) / stem), "", args.force, ["samples.png", "samples.npz"]
    )
    shape = (args.n,) + tuple(state["shape"])
    from ..device import check_memory

    check_memory(cfg, shape[1:], "--n", args.n)
    extra_args = None if labels is None else {"class_labels": labels.to(device)}
    result = diffusion.sample_result(
        model,
        shape,
        sampler=args.sampler,
        seed=args.seed,
        device=device,
        progress=not args.quiet,
        extra_args=extra_args,
        **options,
    )
    x, info["nfe"] = result
    print(f"sampled {args.n} images with {args.sampler} in {result.nfe} model calls per image (NFE)")
    x = x.cpu()
    arrays = {"samples": x.numpy()}
    if labels is not None:
        arrays["class_labels"] = labels.numpy()
    if state["levels"]:
        levels = unit_to_levels(x, state["levels"])
        arrays["levels"] = levels.numpy().astype(np.uint8 if state["levels"] <= 256 else np.int32)
        x = levels_to_unit(levels, state["levels"])
    buf = __import__("io").BytesIO()
    np.savez(buf, seed=args.seed, **info, **arrays)
    write_atomic(make_folder(out) / "samples.npz", buf.getvalue())
    if len(shape) == 4:
        tmp = out / ".samples.tmp.png"
        if labels is not None:  # the grid ordered by class (the .npz keeps the drawing order)
            x = x[torch.argsort(labels, stable=True)]
        save_grid(x, tmp, nrow=int(math.ceil(math.sqrt(args.n))))
        os.replace(tmp, out / "samples.png")
        print(f"wrote {out / 'samples.png'} and {out / 'samples.npz'}")
    elif shape[1:] == (2,):  # 2-D data: the samples over the test points
        from ..report import plot_scatter
        from ..runs import load_data

        tmp = out / ".samples.tmp.png"
        reference = load_data(cfg).unit("test") if args.run else None
        plot_scatter(
            {"samples": x, **({"test data": reference} if reference is not None else {})},
            tmp,
            f"{info.get('law', 'ODE')} samples, seed {args.seed}",
        )
        os.replace(tmp, out / "samples.png")
        print(f"wrote {out / 'samples.png'} and {out / 'samples.npz'}")
    else:
        print(f"wrote {out / 'samples.npz'}")
    return 0


def _class_model(args, model, cfg):
    """``(model, labels, info)`` for ``--class``/``--guidance``: the guided model and the class of each
    image (None without --class), checked with one-line errors."""
    from ..conditioning import check_guidance, guided, num_classes, sample_labels

    if args.class_spec is None:
        if args.guidance is not None:
            raise NonnormalError(
                "--guidance needs --class: give the class to guide towards (e.g. --class 3 --guidance 2)"
            )
        if "net" in cfg and num_classes(cfg):
            if not cfg.get("train", {}).get("label_dropout"):  # its null row never saw a gradient
                raise NonnormalError(
                    "this run is class-conditional and was trained without label dropout, so it has no unconditional "
                    "model: give --class C, a list or all"
                )
            print("class-conditional run without --class: sampling its unconditional (null-label) model")
        return model, None, {}
    w = 1.0 if args.guidance is None else check_guidance(args.guidance)
    classes = num_classes(cfg) if "net" in cfg else 0
    if not classes and "net" not in cfg:
        raise NonnormalError("--class goes with a class-conditional run folder; a --pretrained model takes none")
    labels = sample_labels(args.class_spec, args.n, classes)
    return guided(model, w), labels, {"guidance": w, "num_classes": classes}


def _sampler_options(args) -> dict:
    """``--sampler`` checked with its flags: the keyword options of :meth:`Diffusion.sample_result`
    (``steps``, the sampler's own such as ``eta``; for the ODE ``{method, steps, rtol, atol}``). Each
    flag goes with the samplers that use it: --ode-method/--ode-steps with ode, --rule with walk,
    --eta with ddim, --law with a stochastic sampler (walk, ddim, sde-dpmsolver++), --steps with all but ode."""
    from .. import ode, samplers

    if args.sampler not in samplers.names():
        raise NonnormalError(f"unknown --sampler {args.sampler!r}: choose one of {', '.join(samplers.names())}")
    check_tolerance(args.rtol)
    law, rule, T, eta, steps, kernel = (getattr(args, k, None) for k in ("law", "rule", "T", "eta", "steps", "kernel"))
    ode_flags = [f for f, v in (("--ode-method", args.ode_method), ("--ode-steps", args.ode_steps)) if v is not None]
    if args.sampler == "ode":
        flags = (("--law", law), ("--rule", rule), ("--eta", eta), ("--steps", steps), ("--kernel", kernel))
        flags += (("--T", T),) if "law" in vars(args) else ()  # sample's --T is the walk's; eval's sets the bound's
        grid_flags = [f for f, v in flags if v is not None]
        if grid_flags:
            raise NonnormalError(
                f"{grid_flags[0]} goes with --sampler walk (or another grid sampler), not ode: the probability-flow "
                "ODE has no increment law or kernel, reverse rule, eta or grid steps (give --ode-method and --ode-steps)"
            )
        method, ode_steps, rtol, atol = ode.check_options(
            args.ode_method or "dopri5", args.ode_steps, args.rtol, args.rtol
        )
        return {"method": method, "steps": ode_steps, "rtol": rtol, "atol": atol}
    if ode_flags and "law" in vars(args):  # (eval's ODE flags also set bpd_ode's solver: allowed with any sampler)
        raise NonnormalError(f"{ode_flags[0]} goes with --sampler ode (the {args.sampler} sampler takes --steps)")
    fn = samplers.get(args.sampler)
    if rule is not None and args.sampler != "walk":
        raise NonnormalError(f"--rule goes with --sampler walk, not {args.sampler}")
    if law is not None and not samplers.is_stochastic(fn):
        raise NonnormalError(f"--law goes with a stochastic sampler: {args.sampler} is deterministic (no increments)")
    if kernel is not None:
        if args.sampler != "walk":
            raise NonnormalError(
                f"--kernel {args.kernel} goes with --sampler walk (it is fitted for the walk's steps), not {args.sampler}"
            )
        if law is not None:
            raise NonnormalError(f"give either --law or --kernel {args.kernel}: the kernel is the law of every step")
        if args.kernel != "fitted" and Path(args.kernel).is_dir():
            raise NonnormalError(
                f"--kernel {args.kernel} is a folder: give one kernel file in it (T<N>-<spacing>-<family>.json, "
                "written by `nonnormal fit`) or fitted"
            )
        if args.kernel != "fitted" and not Path(args.kernel).is_file():
            raise NonnormalError(
                f"--kernel {args.kernel}: no such file: give fitted (the kernel fitted for the grid) or a file "
                "that `nonnormal fit` wrote (RUN/kernels/T<N>-<spacing>-<family>.json)"
            )
    if eta is not None and "eta" not in samplers.options(fn):
        raise NonnormalError(f"--eta goes with --sampler ddim, not {args.sampler}")
    if steps is not None and T is not None and "law" in vars(args) and steps != T:
        raise NonnormalError(f"give the number of steps once: --steps {steps} or --T {T}")
    options: dict = {}
    if eta is not None:
        options["eta"] = samplers.check_unit("--eta", eta)
    if steps is not None:
        options["steps"] = steps
    return options


def _eval_options(args):
    """eval's flags as one :class:`~nonnormal.evaluate.EvalOptions`, for a run and for --pretrained alike
    (an unknown sampler is left to its own one-line refusal)."""
    from .. import samplers
    from ..evaluate import EvalOptions

    check_positive(args, "T")  # --n-test, --n-samples: bounded by the parser
    check_tolerance(args.rtol)
    options = {}
    if args.sampler in samplers.names():
        options = _sampler_options(args)
        if args.kernel:
            options["kernel"] = args.kernel  # "fitted": resolved on the model's folder and the sampling grid
    return EvalOptions(
        n_test=args.n_test,
        n_samples=args.n_samples,
        T=args.T,
        spacing=args.spacing,
        sampler=args.sampler,
        sampler_options={} if args.sampler == "ode" else options,
        ode_method=args.ode_method or "dopri5",
        ode_steps=args.ode_steps,
        rtol=args.rtol,
        atol=args.rtol,
        seed=args.seed,
        quality=not args.no_quality,
        progress=not args.quiet,
    )


def cmd_eval(args) -> int:
    from ..device import pick_device
    from ..evaluate import evaluate_run

    if _source(args) == "pretrained":
        return _eval_pretrained(args)
    if not Path(args.run).is_dir():
        raise NonnormalError(f"run folder {args.run} not found: give the --out folder of a `nonnormal train` run")
    path = Path(args.out) if args.out else Path(args.run) / "eval.json"
    _check_eval_out(path, args, parent=True)
    result = evaluate_run(args.run, pick_device(args.device), _eval_options(args))
    _write_eval(path, result)
    return 0


def _check_eval_out(path: Path, args, parent: bool) -> None:
    """eval's JSON file: a file name, not clobbered without --force (a stale eval.json of the run is)."""
    if path.is_dir():
        raise NonnormalError(f"--out {path} is a folder: give a JSON file name")
    if path.exists() and not path.is_file():
        raise NonnormalError(f"--out {path} exists and is not a regular file: give a JSON file name")
    if parent and not path.parent.is_dir():
        raise NonnormalError(f"the folder of --out {path} does not exist: create it or give another --out")
    if path.exists() and not args.force and not _stale_eval(path, args):
        raise NonnormalError(f"{path} already exists: pass --force to overwrite it or give --out")


def _stale_eval(path: Path, args) -> bool:
    """Whether ``path`` is the run's own eval.json of an older step than its newest checkpoint (after a
    ``train --resume``): it is then replaced without --force, and a line says so."""
    from ..runs import newest_step

    if args.out or not args.run:
        return False
    try:
        old = json.loads(path.read_text()).get("step")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return False
    step = newest_step(args.run)
    if not isinstance(old, int) or isinstance(old, bool) or step is None or old >= step:
        return False
    print(f"nonnormal: {path} holds the result of step {old}; the run is at step {step}: replacing it")
    return True


def _write_eval(path: Path, result: dict) -> None:
    """eval.json (strict JSON), printed; then one line per reason for the metrics that were skipped."""
    text = json_text(result)
    print(text, end="")
    write_atomic(path, text.encode())
    by_reason: dict[str, list[str]] = {}
    for name, why in result.get("skipped", {}).items():
        by_reason.setdefault(why, []).append(name)
    for why, names in by_reason.items():
        print(f"skipped {', '.join(names)}: {why}")
    print(f"wrote {path}")


def _diffusers():
    """nonnormal.integrations.diffusers, or a one-line error naming the extra."""
    try:
        from ..integrations import diffusers
    except ImportError:
        raise NonnormalError(
            "this needs diffusers, which is not installed: pip install 'nonnormal[diffusers]'"
        ) from None
    return diffusers


def _source(args) -> str:
    """``run`` or ``pretrained``: exactly one of a run folder and ``--pretrained DIR``."""
    if bool(args.run) == bool(getattr(args, "pretrained", None)):
        raise NonnormalError(
            "give a run folder or --pretrained DIR (a local diffusers pipeline folder)"
            + (", not both" if args.run else "")
        )
    return "run" if args.run else "pretrained"


def _eval_pretrained(args) -> int:
    from ..device import pick_device

    if not args.dataset:
        raise NonnormalError(
            "eval --pretrained needs --dataset: the test data to score the model on, e.g. cifar10:path=DIR"
        )
    diffusers = _diffusers()
    path = Path(args.out) if args.out else diffusers.pretrained_folder(args.pretrained) / "eval.json"
    _check_eval_out(path, args, parent=False)
    options = _eval_options(args)
    result = diffusers.evaluate_pretrained(args.pretrained, args.dataset, pick_device(args.device), options)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_eval(path, result)
    return 0


def cmd_export(args) -> int:
    out = _diffusers().export_run(args.run, args.diffusers, force=args.force)
    print(
        f"wrote a diffusers pipeline folder {out}: after `import nonnormal.integrations.diffusers`, "
        f"DiffusionPipeline.from_pretrained({str(out)!r}) loads it (see {out / 'README.md'}; "
        f"nonnormal sample --pretrained {out} samples it as the run)"
    )
    return 0
