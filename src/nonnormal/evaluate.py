"""Evaluation of a trained run, and the reference rows it is read against.

- :func:`evaluate_run`: test-set bits/dim (probability-flow ODE and the paper's bound) and sample
  quality of a run, on its own :class:`~nonnormal.diffusion.Diffusion`;
- :func:`reference_rows`: two simple models' bits/dim on the same test split;
- :func:`real_data_quality`: FD/KID of real training images, the floor a model can reach.
"""

from __future__ import annotations

import math
import time

import torch
from tqdm.auto import tqdm

from .errors import NonnormalError
from .metrics.distances import energy_distance, sliced_wasserstein


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
    rows = [{"q": "gaussian-full-cov", "p": "", "bpd_ode": float(bpd.mean()), "bpd_ode_se": _se(bpd)}]
    counts = torch.zeros(D, L, dtype=torch.float64)
    counts.scatter_add_(1, dataset.tensor("train").flatten(1).long().T, torch.ones(D, n, dtype=torch.float64))
    logq = torch.log2((counts + 1) / (n + L))  # (D, L)
    x = dataset.tensor("test", n_test).flatten(1).long()
    bits = -logq.gather(1, x.T).T.mean(1)  # per example, bits/dim
    rows.append({"q": "per-pixel-categorical", "p": "", "bpd_ode": float(bits.mean()), "bpd_ode_se": _se(bits)})
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


def _se(values: torch.Tensor) -> float:
    return float(values.std() / math.sqrt(values.numel())) if values.numel() > 1 else float("nan")


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
    ``bpd_ode``. ``fd``/``kid``: Fréchet distance and KID of ``n_samples`` samples (``sampler``: any of
    :func:`nonnormal.samplers.names`, with ``sampler_options`` such as ``steps`` or ``eta``; ``"walk"``:
    ancestral, law p, the run's rule; ``"ode"``: the probability-flow ODE with the ODE options) against
    the test split, in the feature space of the dataset's classifier (:mod:`nonnormal.metrics.features`);
    ``sample_nfe``: the sampler's model calls per image.
    """
    from . import ode, samplers
    from .diffusion import Diffusion
    from .metrics import features as quality_lib
    from .runs import load_data, load_run

    samplers.get(sampler, **(sampler_options or {}))  # an unknown sampler or option: one line, before any work
    ode_options = dict(zip(("method", "steps", "rtol", "atol"), ode.check_options(ode_method, ode_steps, rtol, atol)))
    model, cfg, state = load_run(run, device)
    if n_samples:
        from .device import check_memory

        check_memory(cfg, tuple(state["shape"]), "--n-samples", n_samples)
    data = load_data(cfg)
    d = cfg["diffusion"]
    diffusion = Diffusion.from_config({**d, **({"T": T} if T else {}), **({"spacing": spacing} if spacing else {})})
    x = data.unit("test")
    if n_test is not None:
        x = x[:n_test]
    dtype = next(model.parameters()).dtype
    x = x.to(device, dtype)
    g = torch.Generator(device).manual_seed(seed)
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

    def draw(n: int) -> torch.Tensor:
        shape = (n,) + tuple(x.shape[1:])
        options = ode_options if sampler == "ode" else (sampler_options or {})
        result = diffusion.sample_result(
            model, shape, sampler=sampler, seed=seed, device=device, dtype=dtype, progress=progress, **options
        )
        out["sample_nfe"] = result.nfe
        return result.x

    if data.levels is None:  # continuous data (toy2d): the ODE's NLL in nats/dim and two sample distances
        logp, nfe = diffusion.log_likelihood(model, x, generator=g, **ode_options)
        nll = -logp.cpu() / x[0].numel()
        xs = draw(n_samples or x.shape[0]).cpu()
        out.update(
            nll_ode=float(nll.mean()),
            nll_ode_se=_se(nll),
            ode_nfe=nfe,
            energy_distance=energy_distance(xs, x.cpu()),
            sliced_wasserstein=sliced_wasserstein(xs, x.cpu(), seed=seed),
        )
        return out
    t0 = time.perf_counter()
    bpd, nfe = [], 0
    for xb in tqdm(list(_batches(x, batch)), desc="bits/dim (ODE)", disable=not progress, leave=False):
        b, n = diffusion.bits_per_dim(model, xb, data.levels, generator=g, trace="hutchinson", **ode_options)
        bpd.append(b)
        nfe += n
    bpd = torch.cat(bpd).cpu()
    out.update(bpd_ode=float(bpd.mean()), bpd_ode_se=_se(bpd), ode_nfe=nfe, ode_seconds=time.perf_counter() - t0)
    t0 = time.perf_counter()
    parts: dict[str, list] = {}
    for xb in tqdm(list(_batches(x, batch)), desc="bound", disable=not progress, leave=False):
        for k, v in diffusion.bound_bits_per_dim(
            model, xb, data.levels, generator=g, dequantized=cfg["data"]["dequantize"]
        ).items():
            parts.setdefault(k, []).append(v.cpu())
    total = torch.cat(parts["total"])
    out.update(
        bpd_bound=float(total.mean()),
        bpd_bound_se=_se(total),
        bound_parts={k: float(torch.cat(v).mean()) for k, v in parts.items() if k != "total"},
        bound_seconds=time.perf_counter() - t0,
    )
    if quality and data.labels("train") is not None:
        from .data import levels_to_unit, unit_to_levels

        t0 = time.perf_counter()
        features = quality_lib.features_for(data, progress=progress)
        n = n_samples or x.shape[0]
        xs = levels_to_unit(unit_to_levels(draw(n).cpu(), data.levels), data.levels).float()  # onto the levels
        real, fake = features(data.unit("test")), features(xs)
        kid, kid_std = quality_lib.kernel_distance(real, fake, seed=seed)
        out.update(
            fd=quality_lib.frechet_distance(real, fake),
            kid=kid,
            kid_std=kid_std,
            n_samples=n,
            classifier_accuracy=features.test_accuracy,
            quality_seconds=time.perf_counter() - t0,
        )
    return out
