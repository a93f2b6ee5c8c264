"""Distances between samples and laws, and the invariance experiment.

- :func:`energy_distance`: the (squared) energy distance between two sample sets, a proper
  metric on laws: ``2 E|X - Y| - E|X - X'| - E|Y - Y'|`` (V-statistic).
- :func:`wasserstein1_to_gaussian`: the exact 1-Wasserstein distance between the empirical law
  of 1-D samples and ``N(mean, std^2)``.
- :func:`invariance_study`: the invariance theorem made visible: W1 between a forward walk's
  terminal samples and the exact Gaussian marginal, per law and number of steps.
"""

from __future__ import annotations

import math
import time

import torch
from tqdm.auto import tqdm

from . import increments
from .errors import NonnormalError
from .walk import StructuredRandomWalk

SAMPLERS = ("walk", "ode")  # ancestral walk of law p, or the probability-flow ODE


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Squared energy distance between samples ``x`` (n, d) and ``y`` (m, d); 0 iff same law."""
    x, y = x.double().reshape(x.shape[0], -1), y.double().reshape(y.shape[0], -1)
    return float(2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean())


def wasserstein1_to_gaussian(samples: torch.Tensor, mean: float = 0.0, std: float = 1.0) -> float:
    """Exact ``W1`` between the empirical law of ``samples`` (1-D) and ``N(mean, std^2)``.

    With sorted standardized samples ``c_i``, ``W1 = std * sum_i int_{Q(i-1/n)}^{Q(i/n)} |c_i - x| phi(x) dx``,
    each integral in closed form through ``G(x) = c Phi(x) + phi(x)``.
    """
    c = ((samples.double().flatten() - mean) / std).sort().values
    n = c.numel()
    edges = torch.special.ndtri(torch.arange(n + 1, dtype=torch.float64, device=c.device) / n)
    lo, hi = edges[:-1], edges[1:]
    phi = lambda x: torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)  # noqa: E731
    G = lambda x: c * torch.special.ndtr(x) + phi(x)  # noqa: E731  (antiderivative of (c - x) phi(x))
    mid = c.clamp(lo, hi)
    total = (G(mid) - G(lo)) - (G(hi) - G(mid))
    return float(std * total.sum())


def invariance_study(laws=("laplace", "uniform", "rademacher"), steps=(4, 16, 64, 256), schedule="vdm",
                     paths: int = 200_000, seed: int = 0, progress: bool = False) -> dict[str, dict[int, float]]:
    """``{law: {T: W1}}``: forward walks from fixed data against their exact Gaussian marginal.

    The walk starts from 16 fixed data values in [-1, 1] (``paths`` walks in all) and takes the
    exact VP transition per step; its terminal law has Theorem 3.1's mean and variance for
    every increment law, and is Gaussian for Gaussian increments. ``gaussian`` is always
    added as the reference: its W1 is pure sampling noise.
    """
    laws = [increments.get(law) for law in laws]
    if not laws:
        raise NonnormalError("no laws given: name at least one, e.g. --laws laplace,uniform")
    for T in steps:
        if isinstance(T, bool) or not isinstance(T, int) or T <= 0:
            raise NonnormalError(f"step counts must be positive integers, got {T!r}: use e.g. --steps 4,16,64,256")
    if paths < 16:
        raise NonnormalError(f"need at least 16 paths, got {paths}")
    if "gaussian" not in [law.spec for law in laws]:
        laws = [increments.get("gaussian")] + laws
    x0 = torch.linspace(-1, 1, 16, dtype=torch.float64).repeat(paths // 16)
    result: dict[str, dict[int, float]] = {}
    jobs = [(law, T) for law in laws for T in steps]
    for law, T in tqdm(jobs, desc="invariance", disable=not progress):
        walk = StructuredRandomWalk(schedule, T, law)
        generator = torch.Generator().manual_seed(seed)
        xT = walk.simulate(x0, generator)
        m, v = walk.moments()
        z = (xT - m[-1] * x0) / v[-1].sqrt()
        result.setdefault(law.spec, {})[T] = float(v[-1].sqrt()) * wasserstein1_to_gaussian(z)
    return result


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
    from . import quality

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
        yield x[i:i + size]


def evaluate_run(run, device="cpu", n_test: int | None = None, n_samples: int | None = None, T: int | None = None,
                 rtol: float = 1e-5, atol: float = 1e-5, batch: int = 500, seed: int = 0, quality: bool = True,
                 progress: bool = False, *, sampler: str = "walk", ode_method: str = "dopri5",
                 ode_steps: int | None = None, spacing: str | None = None) -> dict:
    """Test-set bits/dim (probability-flow ODE and the discrete bound at T) and sample quality.

    Everything runs on the run's own :class:`~nonnormal.diffusion.Diffusion` (its schedule, laws,
    rule and spacing, from its config), with ``T`` and ``spacing`` overridden when given.
    ``bpd_ode``: ``-log2 p`` of dequantized test images under the continuous-limit model
    (Hutchinson trace; ``ode_method`` at ``rtol``/``atol``, or ``ode_steps`` fixed steps). ``bpd_bound``:
    the paper's bound for the run's (q, p) pair at ``T`` (default: the run's), on dequantized
    data with a continuous decoder when the run trained on dequantized data. It bounds ``-log2`` of
    the T-step walk model's density, a different model from the ODE's, so it is not a bound on
    ``bpd_ode``. ``fd``/``kid``: Fréchet distance and KID of ``n_samples`` samples (``sampler="walk"``:
    ancestral, law p, the run's rule; ``"ode"``: the probability-flow ODE) against the test split,
    in the feature space of the dataset's classifier (:mod:`nonnormal.quality`).
    """
    from . import ode
    from . import quality as quality_lib
    from .diffusion import Diffusion
    from .runs import load_data, load_run

    if sampler not in SAMPLERS:
        raise NonnormalError(f"unknown sampler {sampler!r}: choose one of {', '.join(SAMPLERS)}")
    ode_options = dict(zip(("method", "steps", "rtol", "atol"), ode.check_options(ode_method, ode_steps, rtol, atol)))
    model, cfg, state = load_run(run, device)
    data = load_data(cfg)
    d = cfg["diffusion"]
    diffusion = Diffusion.from_config({**d, **({"T": T} if T else {}), **({"spacing": spacing} if spacing else {})})
    x = data.unit("test")
    if n_test is not None:
        x = x[:n_test]
    dtype = next(model.parameters()).dtype
    x = x.to(device, dtype)
    g = torch.Generator(device).manual_seed(seed)
    out: dict = {"q": d["q"], "p": d["p"], "dataset": data.name, "T": diffusion.T, "rule": d["rule"],
                 "schedule": diffusion.schedule.spec, "spacing": diffusion.spacing, "sampler": sampler,
                 "ode_method": ode_method, "ode_steps": ode_options["steps"], "step": state["step"],
                 "train_seconds": state["train_seconds"], "n_test": x.shape[0]}

    def draw(n: int) -> torch.Tensor:
        shape = (n,) + tuple(x.shape[1:])
        if sampler == "ode":
            return diffusion.ode_sample(model, shape, seed=seed, device=device, dtype=dtype, **ode_options)
        return diffusion.sample(model, shape, seed=seed, device=device, dtype=dtype, progress=progress)

    if data.levels is None:  # continuous data (toy2d): the ODE's NLL in nats/dim and the energy distance
        logp, nfe = diffusion.log_likelihood(model, x, generator=g, **ode_options)
        nll = -logp.cpu() / x[0].numel()
        out.update(nll_ode=float(nll.mean()), nll_ode_se=_se(nll), ode_nfe=nfe,
                   energy_distance=energy_distance(draw(n_samples or x.shape[0]).cpu(), x.cpu()))
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
        for k, v in diffusion.bound_bits_per_dim(model, xb, data.levels, generator=g,
                                                 dequantized=cfg["data"]["dequantize"]).items():
            parts.setdefault(k, []).append(v.cpu())
    total = torch.cat(parts["total"])
    out.update(bpd_bound=float(total.mean()), bpd_bound_se=_se(total),
               bound_parts={k: float(torch.cat(v).mean()) for k, v in parts.items() if k != "total"},
               bound_seconds=time.perf_counter() - t0)
    if quality and data.labels("train") is not None:
        from .data import levels_to_unit, unit_to_levels

        t0 = time.perf_counter()
        features = quality_lib.features_for(data, progress=progress)
        n = n_samples or x.shape[0]
        xs = levels_to_unit(unit_to_levels(draw(n).cpu(), data.levels), data.levels).float()  # onto the levels
        real, fake = features(data.unit("test")), features(xs)
        kid, kid_std = quality_lib.kernel_distance(real, fake, seed=seed)
        out.update(fd=quality_lib.frechet_distance(real, fake), kid=kid, kid_std=kid_std, n_samples=n,
                   classifier_accuracy=features.test_accuracy, quality_seconds=time.perf_counter() - t0)
    return out
