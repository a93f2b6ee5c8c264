"""Evaluation of a trained run, and the reference rows it is read against.

- :class:`EvalOptions`: what to evaluate and how (the sampler among it), shared with ``evaluate_pretrained``;
- :func:`evaluate_run`: test-set bits/dim (probability-flow ODE and the paper's bound) and sample
  quality of a run, on its own :class:`~nonnormal.diffusion.Diffusion`;
- :func:`score_model`: the engine under it (and under ``evaluate_pretrained``): the likelihood
  passes over the test images, then every sample metric of :mod:`nonnormal.metrics.table`, with
  what was skipped and why;
- :func:`reference_rows`: two simple models' bits/dim on the same test split;
- :func:`real_data_quality`: FD/KID of real training images, the floor a model can reach.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .errors import NonnormalError
from .stats import image_se

# keywords of Diffusion.sample_result that are not a sampler's own options (steps, the law or kernel, the grid)
SAMPLE_RESULT_KEYS = ("steps", "law", "kernel", "T", "rule", "spacing")


def reference_rows(dataset, seed: int = 0, n_test: int | None = None) -> list[dict]:
    """Bits/dim of two simple models on the test split, to show where diffusion stands.

    - ``gaussian-full-cov``: a full-covariance Gaussian fitted (maximum likelihood) to the
      uniformly dequantized training data, scored on dequantized test data (+ ``log2(L/2)``).
    - ``per-pixel-categorical``: independent categoricals per value over the L levels, fitted
      to the training counts with add-one smoothing; an exact discrete likelihood.

    ``n_test``: score the first n test images only (as ``evaluate_run`` does).
    """
    from .data import dequantize

    L = dataset.levels
    if L is None:
        raise NonnormalError(f"reference rows need discrete data, and {dataset.name} is continuous")
    g = torch.Generator().manual_seed(seed)
    train = dequantize(dataset.unit("train").double().flatten(1), L, g)
    test = dequantize(dataset.unit("test")[:n_test].double().flatten(1), L, g)
    n, D = train.shape
    mean = train.mean(0)
    cov = (train - mean).T @ (train - mean) / n
    logp = torch.distributions.MultivariateNormal(mean, covariance_matrix=cov).log_prob(test)
    bpd = -logp / (D * math.log(2)) + math.log2(L / 2)
    rows = [{"q": "gaussian-full-cov", "p": "", "bpd_ode": float(bpd.mean()), "bpd_ode_se": image_se(bpd)}]
    counts = torch.zeros(D, L, dtype=torch.float64)
    counts.scatter_add_(1, dataset.tensor("train").flatten(1).long().T, torch.ones(D, n, dtype=torch.float64))
    logq = torch.log2((counts + 1) / (n + L))  # (D, L)
    x = dataset.tensor("test", n_test).flatten(1).long()
    bits = -logq.gather(1, x.T).T.mean(1)  # per example, bits/dim
    rows.append({"q": "per-pixel-categorical", "p": "", "bpd_ode": float(bits.mean()), "bpd_ode_se": image_se(bits)})
    return rows


def real_data_quality(dataset, n: int | None = None, seed: int = 0) -> dict:
    """FD and KID of ``n`` real training images against the test split: the floor a model can reach."""
    from .metrics import features as quality

    features = quality.features_for(dataset)
    real = features(dataset.unit("test"))
    n = n or real.shape[0]
    pick = torch.randperm(len(dataset.train), generator=torch.Generator().manual_seed(seed))[:n]
    train = features(dataset.unit("train")[pick])
    kid, _ = quality.kernel_distance(real, train, seed=seed)
    return {"fd": quality.frechet_distance(real, train), "kid": kid, "n": n}


def _batches(x: torch.Tensor, size: int):
    for i in range(0, x.shape[0], size):
        yield x[i : i + size]


@dataclass(frozen=True)
class EvalOptions:
    """What to evaluate and how: the one set of options of :func:`evaluate_run` and of
    ``nonnormal.integrations.diffusers.evaluate_pretrained`` (``nonnormal eval RUN`` and ``eval --pretrained``
    build it the same way), so that a flag reaches both.

    - ``n_test``: score the first n test images (default all); ``n_samples``: samples for the sample
      metrics (default as many as test images); ``quality``: draw samples and score them at all.
    - ``T``, ``spacing``: the grid of the bound, and the samplers' default grid (default the model's).
    - ``sampler``: a name of :func:`nonnormal.samplers.names`; ``sampler_options``: the keywords of
      :meth:`~nonnormal.diffusion.Diffusion.sample_result` for it (``steps``, ``eta``, ``law``, ...) and
      ``kernel``: ``"fitted"`` (the kernel ``nonnormal fit`` saved for the sampling grid in the run's
      folder, see :func:`nonnormal.kernels.find_kernel`), a kernel file's path or a kernel object.
    - ``ode_method``, ``ode_steps``, ``rtol``, ``atol``: the probability-flow ODE of ``bpd_ode`` (and of
      the ``ode`` sampler).
    - ``batch``: test images per likelihood batch; ``seed``: dequantization, probes and samples.
    """

    n_test: int | None = None
    n_samples: int | None = None
    T: int | None = None
    spacing: str | None = None
    sampler: str = "walk"
    sampler_options: dict = field(default_factory=dict)
    ode_method: str = "dopri5"
    ode_steps: int | None = None
    rtol: float = 1e-5
    atol: float = 1e-5
    batch: int = 500
    seed: int = 0
    quality: bool = True
    progress: bool = False

    def ode_options(self) -> dict:
        """``{method, steps, rtol, atol}`` of the probability-flow ODE, checked (one-line errors)."""
        from . import ode

        checked = ode.check_options(self.ode_method, self.ode_steps, self.rtol, self.atol)
        return dict(zip(("method", "steps", "rtol", "atol"), checked))

    def check(self) -> None:
        """The sampler, its own options (``eta``, ...) and the ODE options: a one-line error before any work."""
        from . import samplers

        if self.sampler == "ode" and self.sampler_options:
            raise NonnormalError(
                f"the ode sampler takes no sampler_options ({', '.join(self.sampler_options)}): its options are "
                "ode_method, ode_steps, rtol and atol"
            )
        own = {k: v for k, v in self.sampler_options.items() if k not in SAMPLE_RESULT_KEYS}
        samplers.get(self.sampler, **own)
        self.ode_options()

    def sampling(self, diffusion, folder, source: str | None = None) -> tuple[dict, dict]:
        """``(keywords, info)``: the keywords of ``diffusion.sample_result`` that draw the samples (a kernel
        ``"fitted"`` or path read: ``"fitted"`` from ``folder``'s kernels of the sampling grid, a missing one
        naming ``nonnormal fit SOURCE``), and what eval.json records of them."""
        if self.sampler == "ode":
            return self.ode_options(), {}
        kw = dict(self.sampler_options)
        info = {"sampler_options": {k: v for k, v in kw.items() if k != "kernel" and isinstance(v, (int, float, str))}}
        kernel = kw.get("kernel")
        if isinstance(kernel, (str, Path)):
            from .kernels import find_kernel, read_kernel

            steps = kw.get("steps") or diffusion.T
            path = find_kernel(folder, steps, diffusion.spacing, source=source) if kernel == "fitted" else Path(kernel)
            kw["kernel"] = read_kernel(path)
            kw["kernel"].check_grid(diffusion, steps, diffusion.spacing, kw.get("rule"))  # before any work
            info.update(kernel="fitted", kernel_file=str(path), kernel_family=kw["kernel"].family)
        elif kernel is not None:
            info.update(kernel=getattr(kernel, "family", type(kernel).__name__))
        return kw, info

    def draw(self, model, diffusion, shape, keywords: dict, out: dict, *, device, dtype, extra_args=None):
        """``draw(n)``: n samples of ``shape`` with this sampler and ``keywords`` (from :meth:`sampling`);
        ``out["sample_nfe"]``: its model calls per image. ``extra_args(n)``: the model's extra arguments."""

        def draw(n: int) -> torch.Tensor:
            result = diffusion.sample_result(
                model,
                (n,) + tuple(shape),
                sampler=self.sampler,
                seed=self.seed,
                device=device,
                dtype=dtype,
                progress=self.progress,
                extra_args=extra_args(n) if extra_args else None,
                **keywords,
            )
            out["sample_nfe"] = result.nfe
            return result.x

        return draw


def evaluate_run(run, device="cpu", options: EvalOptions | None = None, **fields) -> dict:
    """Test-set bits/dim (probability-flow ODE and the discrete bound at T) and sample quality.

    ``options`` (:class:`EvalOptions`; ``fields`` replace its fields, e.g. ``n_test=100``). Everything
    runs on the run's own :class:`~nonnormal.diffusion.Diffusion` (its schedule, laws, rule and spacing,
    from its config), with ``T`` and ``spacing`` overridden when given. ``bpd_ode``: ``-log2 p`` of
    dequantized test images under the continuous-limit model (Hutchinson trace; ``ode_method`` at
    ``rtol``/``atol``, or ``ode_steps`` fixed steps). ``bpd_bound``: the paper's bound for the run's (q, p)
    pair at ``T`` (default: the run's), on dequantized data with a continuous decoder when the run trained
    on dequantized data. It bounds ``-log2`` of the T-step walk model's density, a different model from
    the ODE's, so it is not a bound on ``bpd_ode``. Then every sample metric of the metrics table on
    ``n_samples`` samples drawn by ``sampler`` (``"walk"``: ancestral, law p or the kernel, the run's rule;
    ``"ode"``: the probability-flow ODE with the ODE options): FD and KID against the test split in the
    feature space of the dataset's classifier (:mod:`nonnormal.metrics.features`), the style metrics;
    ``skipped`` says which were left out and why; ``sample_nfe``: the sampler's model calls per image.

    A class-conditional run (``net.num_classes``) is scored given the test images' labels (conditional
    bits/dim, see :func:`score_model`) and sampled with labels in the training split's class profile
    (:func:`nonnormal.conditioning.profile_labels`), so that its samples stand for the same data law
    as an unconditional run's (``class_tv_train`` then also counts samples that leave their class).
    """
    from .conditioning import num_classes, profile_labels
    from .device import check_memory
    from .diffusion import Diffusion
    from .runs import load_data, load_run

    o = replace(options or EvalOptions(), **fields)
    o.check()  # an unknown sampler or option: one line, before any work
    model, cfg, state = load_run(run, device)
    if o.n_samples:
        check_memory(cfg, tuple(state["shape"]), "--n-samples", o.n_samples)
    data = load_data(cfg)
    d = cfg["diffusion"]
    grid = {k: v for k, v in (("T", o.T), ("spacing", o.spacing)) if v}
    diffusion = Diffusion.from_config({**d, **grid})
    keywords, sample_info = o.sampling(diffusion, run)
    x = data.unit("test")
    if o.n_test is not None:
        x = x[: o.n_test]
    dtype = next(model.parameters()).dtype
    x = x.to(device, dtype)
    ode_options = o.ode_options()
    out: dict = {
        "q": d["q"],
        "p": d["p"],
        "dataset": data.name,
        "T": diffusion.T,
        "rule": d["rule"],
        "schedule": diffusion.schedule.spec,
        "spacing": diffusion.spacing,
        "sampler": o.sampler,
        "ode_method": ode_options["method"],
        "ode_steps": ode_options["steps"],
        "step": state["step"],
        "train_seconds": state["train_seconds"],
        "n_test": x.shape[0],
        **sample_info,
    }

    classes, test_labels, labels = num_classes(cfg), None, None
    if classes:  # a conditional run: its likelihood given the test labels, samples in the training profile
        test_labels = data.labels("test")[: x.shape[0]]
        weights = torch.bincount(data.labels("train"), minlength=classes)
        out["sample_classes"] = "the training split's class profile (conditional model, guidance 1)"

        def labels(n: int) -> dict:
            return {"class_labels": profile_labels(n, weights).to(device)}

    draw = o.draw(model, diffusion, x.shape[1:], keywords, out, device=device, dtype=dtype, extra_args=labels)
    out.update(
        score_model(
            model,
            diffusion,
            data,
            x,
            draw,
            dequantized=cfg["data"]["dequantize"],
            ode_options=ode_options,
            n_samples=o.n_samples,
            batch=o.batch,
            seed=o.seed,
            quality=o.quality,
            progress=o.progress,
            device=device,
            class_labels=test_labels,
            split_seed=cfg["data"]["split_seed"],
        )
    )
    return out


def score_model(
    model,
    diffusion,
    data,
    x: torch.Tensor,
    draw,
    *,
    dequantized: bool,
    ode_options: dict,
    n_samples: int | None = None,
    batch: int = 500,
    seed: int = 0,
    quality: bool = True,
    progress: bool = False,
    device="cpu",
    bound_diffusion=None,
    class_labels: torch.Tensor | None = None,
    split_seed: int = 0,
) -> dict:
    """The likelihoods of test images ``x`` (on the model's device and dtype) and every sample metric of the
    metrics table on ``draw(n)`` samples: ``{bpd_ode, bpd_ode_se, ..., <metrics>, "skipped": {name: why}}``.

    Continuous data (no levels): ``nll_ode`` (nats/dim) and the point-cloud metrics. Discrete data:
    ``bpd_ode`` (``diffusion``'s probability-flow ODE with ``ode_options``), ``bpd_bound`` (the bound of
    ``bound_diffusion``, default ``diffusion``, on dequantized data when ``dequantized``), then, with
    ``quality``, the image metrics on samples snapped to the data's levels. One generator seeded with
    ``seed`` draws the dequantization noise and the Hutchinson probes, in that order.

    ``class_labels`` (the test images' classes, for a class-conditional model): ``bpd_ode`` and
    ``bpd_bound`` are then class-conditional, ``-log2 p(x | y)``; the marginal over classes
    (:func:`nonnormal.conditioning.marginal_log_likelihood`, one ODE per class) is skipped, and ``skipped``
    says why. The feature classifier of a long-tailed dataset is its balanced base's
    (:func:`nonnormal.data.balanced`, loaded with ``split_seed``, the data's split seed).
    """
    from .data import balanced
    from .metrics import table

    g = torch.Generator(device).manual_seed(seed)
    out: dict = {}
    if data.levels is None:  # continuous data (toy2d): the ODE's NLL in nats/dim and the point-cloud metrics
        logp, nfe = diffusion.log_likelihood(model, x, generator=g, **ode_options)
        nll = -logp.cpu() / x[0].numel()
        inputs = table.MetricInputs(draw(n_samples or x.shape[0]).cpu(), None, x.cpu(), seed=seed)
        values, skipped = table.compute(inputs, "points")
        out.update(nll_ode=float(nll.mean()), nll_ode_se=image_se(nll), ode_nfe=nfe, **values, skipped=skipped)
        return out
    t0 = time.perf_counter()
    bpd, nfe = [], 0
    ys = [None] * len(range(0, x.shape[0], batch)) if class_labels is None else list(_batches(class_labels, batch))
    conditioned = [None if y is None else {"class_labels": y.to(x.device)} for y in ys]
    pairs = list(zip(_batches(x, batch), conditioned))
    for xb, extra in tqdm(pairs, desc="bits/dim (ODE)", disable=not progress, leave=False):
        b, n = diffusion.bits_per_dim(
            model, xb, data.levels, generator=g, trace="hutchinson", extra_args=extra, **ode_options
        )
        bpd.append(b)
        nfe += n
    bpd = torch.cat(bpd).cpu()
    out.update(bpd_ode=float(bpd.mean()), bpd_ode_se=image_se(bpd), ode_nfe=nfe, ode_seconds=time.perf_counter() - t0)
    t0 = time.perf_counter()
    parts: dict[str, list] = {}
    bound = bound_diffusion or diffusion
    for xb, extra in tqdm(pairs, desc="bound", disable=not progress, leave=False):
        bits = bound.bound_bits_per_dim(model, xb, data.levels, generator=g, dequantized=dequantized, extra_args=extra)
        for k, v in bits.items():
            parts.setdefault(k, []).append(v.cpu())
    total = torch.cat(parts["total"])
    out.update(
        bpd_bound=float(total.mean()),
        bpd_bound_se=image_se(total),
        bound_parts={k: float(torch.cat(v).mean()) for k, v in parts.items() if k != "total"},
        bound_seconds=time.perf_counter() - t0,
    )
    marginal = {}
    if class_labels is not None:
        out["likelihood"] = "class-conditional: -log2 p(x | y) with the test images' labels"
        marginal["bpd_ode_marginal"] = (
            f"the marginal over classes costs one ODE per class ({data.num_classes}x bpd_ode's time): "
            "nonnormal.conditioning.marginal_log_likelihood computes it"
        )
    if not quality:
        why = "sample quality was not asked for (--no-quality)"
        out["skipped"] = {**marginal, **{m.name: why for m in table.metrics("images", sampled=True)}}
        return out
    t0 = time.perf_counter()
    n = n_samples or x.shape[0]
    features = classifier = labels = None
    if data.labels("train") is not None:
        from .metrics import classes as classes_lib
        from .metrics import features as features_lib

        def features():
            f = features_lib.features_for(balanced(data, split_seed), progress=progress)  # a long tail: its base's
            return f, f(data.unit("test"))

        def labels():
            return data.labels("train").numpy(), data.labels("test").numpy()

        classifier = classes_lib.classifier_of(lambda: inputs.features())  # the inputs' (cached) features

    inputs = table.MetricInputs(
        table.snap(draw(n).cpu(), data.levels),
        data.levels,
        data.unit("test"),
        train_levels=lambda: data.tensor("train"),
        features=features,
        seed=seed,
        features_missing=f"{data.name} has no class labels, so there is no feature classifier to compute them in",
        classifier=classifier,
        labels=labels,
        num_classes=data.num_classes,
    )
    values, skipped = table.compute(inputs, "images")
    skipped = {**marginal, **skipped}
    out.update(values, n_samples=n)
    if features is not None:  # loaded (once) by FD and KID
        out["classifier_accuracy"] = inputs.features()[0].test_accuracy
    out.update(quality_seconds=time.perf_counter() - t0, skipped=skipped)
    return out
