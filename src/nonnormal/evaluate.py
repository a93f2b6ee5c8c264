"""Evaluation of a trained run, and the reference rows it is read against.

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


def evaluate_run(
    run,
    device="cpu",
    n_test: int | None = None,
    n_samples: int | None = None,
    T: int | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    batch: int = 500,
    seed: int = 0,
    quality: bool = True,
    progress: bool = False,
    *,
    sampler: str = "walk",
    ode_method: str = "dopri5",
    ode_steps: int | None = None,
    spacing: str | None = None,
    sampler_options: dict | None = None,
) -> dict:
    """Test-set bits/dim (probability-flow ODE and the discrete bound at T) and sample quality.

    Everything runs on the run's own :class:`~nonnormal.diffusion.Diffusion` (its schedule, laws,
    rule and spacing, from its config), with ``T`` and ``spacing`` overridden when given.
    ``bpd_ode``: ``-log2 p`` of dequantized test images under the continuous-limit model
    (Hutchinson trace; ``ode_method`` at ``rtol``/``atol``, or ``ode_steps`` fixed steps). ``bpd_bound``:
    the paper's bound for the run's (q, p) pair at ``T`` (default: the run's), on dequantized
    data with a continuous decoder when the run trained on dequantized data. It bounds ``-log2`` of
    the T-step walk model's density, a different model from the ODE's, so it is not a bound on
    ``bpd_ode``. Then every sample metric of the metrics table on ``n_samples`` samples (``sampler``: any
    of :func:`nonnormal.samplers.names`, with ``sampler_options`` such as ``steps`` or ``eta``; ``"walk"``:
    ancestral, law p, the run's rule; ``"ode"``: the probability-flow ODE with the ODE options): FD and
    KID against the test split in the feature space of the dataset's classifier
    (:mod:`nonnormal.metrics.features`), the style metrics; ``skipped`` says which were left out and why;
    ``sample_nfe``: the sampler's model calls per image.

    A class-conditional run (``net.num_classes``) is scored given the test images' labels (conditional
    bits/dim, see :func:`score_model`) and sampled with labels in the training split's class profile
    (:func:`nonnormal.conditioning.profile_labels`), so that its samples stand for the same data law
    as an unconditional run's (``class_tv_train`` then also counts samples that leave their class).
    """
    from . import ode, samplers
    from .conditioning import num_classes, profile_labels
    from .device import check_memory
    from .diffusion import Diffusion
    from .runs import load_data, load_run

    sampler_options = dict(sampler_options or {})
    own = {k: v for k, v in sampler_options.items() if k not in SAMPLE_RESULT_KEYS}  # the sampler's own (eta, ...)
    samplers.get(sampler, **own)  # an unknown sampler or option: one line, before any work
    ode_options = dict(zip(("method", "steps", "rtol", "atol"), ode.check_options(ode_method, ode_steps, rtol, atol)))
    model, cfg, state = load_run(run, device)
    if n_samples:
        check_memory(cfg, tuple(state["shape"]), "--n-samples", n_samples)
    data = load_data(cfg)
    d = cfg["diffusion"]
    diffusion = Diffusion.from_config({**d, **({"T": T} if T else {}), **({"spacing": spacing} if spacing else {})})
    if sampler_options.get("kernel") == "fitted":  # the walk's kernel fitted for this grid (`nonnormal fit`)
        from .kernels import load_kernel

        sampler_options["kernel"] = load_kernel(run, sampler_options.get("steps") or diffusion.T, diffusion.spacing)
        out_kernel = "fitted"
    else:
        out_kernel = None
    x = data.unit("test")
    if n_test is not None:
        x = x[:n_test]
    dtype = next(model.parameters()).dtype
    x = x.to(device, dtype)
    out: dict = {
        "q": d["q"],
        "p": d["p"],
        "dataset": data.name,
        "T": diffusion.T,
        "rule": d["rule"],
        "schedule": diffusion.schedule.spec,
        "spacing": diffusion.spacing,
        "sampler": sampler,
        "ode_method": ode_method,
        "ode_steps": ode_options["steps"],
        "step": state["step"],
        "train_seconds": state["train_seconds"],
        "n_test": x.shape[0],
    }
    if out_kernel:
        out["kernel"] = out_kernel

    classes, test_labels = num_classes(cfg), None
    if classes:  # a conditional run: its likelihood given the test labels, samples in the training profile
        test_labels = data.labels("test")[: x.shape[0]]
        weights = torch.bincount(data.labels("train"), minlength=classes)
        out["sample_classes"] = "the training split's class profile (conditional model, guidance 1)"

    def draw(n: int) -> torch.Tensor:
        shape = (n,) + tuple(x.shape[1:])
        options = ode_options if sampler == "ode" else (sampler_options or {})
        extra = {"class_labels": profile_labels(n, weights).to(device)} if classes else None
        result = diffusion.sample_result(
            model,
            shape,
            sampler=sampler,
            seed=seed,
            device=device,
            dtype=dtype,
            progress=progress,
            extra_args=extra,
            **options,
        )
        out["sample_nfe"] = result.nfe
        return result.x

    out.update(
        score_model(
            model,
            diffusion,
            data,
            x,
            draw,
            dequantized=cfg["data"]["dequantize"],
            ode_options=ode_options,
            n_samples=n_samples,
            batch=batch,
            seed=seed,
            quality=quality,
            progress=progress,
            device=device,
            class_labels=test_labels,
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
    says why.
    """
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
            f = features_lib.features_for(data, progress=progress)
            return f, f(data.unit("test"))

        def classifier():
            f = inputs.features()[0]
            if getattr(f, "model", None) is None:
                raise table.Skipped("the feature map has no classifier head to give the samples' classes")
            return lambda images: classes_lib.classify(f, images)

        def labels():
            return data.labels("train").numpy(), data.labels("test").numpy()

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
