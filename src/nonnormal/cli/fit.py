"""``nonnormal fit``: the reverse kernel fitted per step on a run's held-out data (issue 18, section 3)."""

from __future__ import annotations

from pathlib import Path

from ..errors import NonnormalError


def add_parser(sub, *, count, seed, text) -> None:
    """Register ``fit`` on the command's subparsers (``count``/``seed``/``text``: the CLI's flag types)."""
    from ..schedules import MAX_STEPS

    p = sub.add_parser("fit", help="fit the reverse kernel per step (variance and shape) on held-out data")
    p.add_argument("run", nargs="?", help="run folder (or give --pretrained)")
    p.add_argument(
        "--pretrained", type=text, default=None, metavar="DIR", help="a local diffusers pipeline folder instead"
    )
    p.add_argument("--dataset", type=text, default=None, help="held-out data for --pretrained (its test split)")
    p.add_argument("--T", type=count(1, MAX_STEPS), default=None, help="steps of the grid (default: the run's T)")
    p.add_argument("--spacing", type=text, default=None, help="uniform, log-snr, quadratic, ddpm (default: the run's)")
    p.add_argument("--family", type=text, default="gennorm", help="gennorm (default), student_t or gaussian")
    p.add_argument("--n", type=count(2, 10_000_000), default=512, help="held-out examples per step")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--no-bound", action="store_true", help="skip the whole bound before/after (bits/dim)")
    p.add_argument("--device", type=text, default="auto")
    p.add_argument("--force", action="store_true", help="overwrite the kernel of this grid and family fitted before")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(handler=cmd_fit)


def _load(args, device):
    """``(model, cfg, state, data, folder)`` of a run or of ``--pretrained`` with ``--dataset``."""
    from .. import data as data_lib
    from ..runs import load_data, load_run

    if bool(args.run) == bool(args.pretrained):
        raise NonnormalError(
            "give a run folder or --pretrained DIR (a local diffusers pipeline folder)"
            + (", not both" if args.run else "")
        )
    if args.run:
        if args.dataset:
            raise NonnormalError("--dataset goes with --pretrained: a run fits on its own test split")
        model, cfg, state = load_run(args.run, device)
        return model, cfg, state, load_data(cfg), Path(args.run)
    if not args.dataset:
        raise NonnormalError("fit --pretrained needs --dataset: the held-out data, e.g. cifar10:path=DIR")
    try:
        from ..integrations import diffusers
    except ImportError:
        raise NonnormalError(
            "this needs diffusers, which is not installed: pip install 'nonnormal[diffusers]'"
        ) from None
    model, cfg, state = diffusers.pretrained_as_run(args.pretrained, device)
    data = data_lib.load(args.dataset)
    if tuple(data.shape) != tuple(state["shape"]):
        raise NonnormalError(
            f"the model makes examples of shape {tuple(state['shape'])}, but {data.name} has {tuple(data.shape)}: "
            "give the dataset the model was trained on"
        )
    return model, cfg, state, data, Path(state["folder"])


def cmd_fit(args) -> int:
    import torch

    from ..data import dequantize
    from ..diffusion import Diffusion
    from ..kernels import check_family, fit_kernel, fixed_laws, kernel_files, kernel_path, save_kernel, step_loss
    from ..kernels.plot import plot_kernel
    from ..likelihood import bound_bits_per_dim
    from ..train import pick_device

    check_family(args.family)
    device = pick_device(args.device)
    model, cfg, state, data, folder = _load(args, device)
    classes = int(cfg.get("net", {}).get("num_classes") or 0)
    if classes and not cfg.get("train", {}).get("label_dropout"):
        raise NonnormalError(
            f"this run's network is class-conditional (net.num_classes = {classes}) and was trained without label "
            "dropout: its unconditional (null-label) model, which fit uses, is untrained; "
            "retrain with train.label_dropout = 0.1"
        )
    overrides = {k: v for k, v in (("T", args.T), ("spacing", args.spacing)) if v is not None}
    diffusion = Diffusion.from_config({**cfg["diffusion"], **overrides})
    path = kernel_path(folder, diffusion.T, diffusion.spacing, args.family)
    try:  # this family's kernel of the grid, under its name or the older one (by grid only)
        before = kernel_files(folder, diffusion.T, diffusion.spacing).get(args.family)
    except NonnormalError:  # an unreadable file of the older name: refitting writes the new name beside it
        before = path if path.exists() else None
    if before is not None and not args.force:
        raise NonnormalError(f"{before} already exists: pass --force to refit it")
    dtype = next((p.dtype for p in model.parameters()), torch.float32) if hasattr(model, "parameters") else None
    x = data.unit("test").to(device, dtype or torch.float32)
    dequantized = bool(data.levels) and bool(cfg.get("data", {}).get("dequantize", False))
    # a model trained on dequantized data is fitted on dequantized held-out data, as its bound scores it
    held_out = dequantize(x, data.levels, torch.Generator(device).manual_seed(args.seed)) if dequantized else x
    kernel = fit_kernel(
        diffusion,
        model,
        held_out,
        family=args.family,
        n=args.n,
        generator=torch.Generator(device).manual_seed(args.seed),
        progress=not args.quiet,
        data_range=1.0 if data.levels else None,
    )
    if data.levels and not args.no_bound:
        xb, bound = x[: args.n], {}
        for label, law in [(law.spec, law) for law in fixed_laws(diffusion)] + [("fitted", kernel)]:
            loss = step_loss(diffusion, law)
            g = torch.Generator(device).manual_seed(args.seed)  # the same draws for every law: paired
            totals = [
                bound_bits_per_dim(model, xb[i : i + 256], data.levels, loss, generator=g, dequantized=dequantized)
                for i in range(0, xb.shape[0], 256)
            ]
            bound[label] = float(torch.cat([b["total"] for b in totals]).mean())
        kernel.bound = bound
    save_kernel(kernel, folder)
    plot = plot_kernel(kernel, path.with_suffix(".png"))
    print(_table(kernel))
    print(f"wrote {path} and {plot}")
    return 0


def _table(kernel) -> str:
    shape = {"gennorm": "beta", "student_t": "nu", "gaussian": ""}[kernel.family]
    lines = [
        f"kernel fitted per step ({kernel.family}, T = {kernel.T}, {kernel.spacing}, {kernel.rule}, n = {kernel.n}):",
        f"{'k':>4} {'t':>8} {'s^2':>9} {shape:>8} {'loglik':>9}   step term, nats/dim: fitted | "
        + " | ".join(k for k in kernel.terms if k != "fitted"),
    ]
    for k in range(kernel.first, kernel.T):
        sh = "" if kernel.shape[k] is None else f"{kernel.shape[k]:.3g}"
        terms = " | ".join(f"{v[k]:.4g}" for v in kernel.terms.values())
        lines.append(
            f"{k:>4} {kernel.t[k]:>8.4f} {kernel.scale[k] ** 2:>9.4g} {sh:>8} {kernel.loglik[k]:>9.4f}   {terms}"
        )
    diff = kernel.bound_diffusion_bits()
    lines.append(
        "bound's diffusion part on these residuals (bits/dim): " + ", ".join(f"{k} {v:.4f}" for k, v in diff.items())
    )
    if kernel.bound:
        lines.append("whole bound (bits/dim): " + ", ".join(f"{k} {v:.4f}" for k, v in kernel.bound.items()))
    return "\n".join(lines)
