"""Class conditioning: the checks of a conditional run, and classifier-free guidance.

A class-conditional network is built with ``net.num_classes = C`` and called as
``eps_model(x, t, class_labels=y)``, ``y`` int64 of shape (batch,) in ``0..C-1``; the label ``C``
(or ``class_labels=None`` for the whole batch) is the null label: the unconditional model that
classifier-free guidance (Ho & Salimans, 2022) needs. Training learns it by replacing each label
with the null one with probability ``train.label_dropout`` (0.1 is typical; :class:`nonnormal.train.Batches`). Samplers and the
likelihood pass the condition through as ``extra_args={"class_labels": y}``; :func:`guided` turns a
conditional model into the guided one, ``eps_uncond + w (eps_cond - eps_uncond)``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch

from .consistency import model_schedule
from .errors import NonnormalError


def num_classes(cfg: dict) -> int:
    """The class count of a run's network (``net.num_classes``; 0: unconditional)."""
    return int(cfg["net"].get("num_classes") or 0)


def check_classes(cfg: dict, data) -> int:
    """The run's class count (0: unconditional), checked against its dataset with one-line errors.

    A conditional network needs a labelled dataset with exactly ``net.num_classes`` classes;
    ``train.label_dropout`` needs a conditional network.
    """
    k, p = num_classes(cfg), cfg["train"].get("label_dropout", 0.0)
    if not k:
        if p:
            raise NonnormalError(
                f"train.label_dropout={p} drops class labels, but the network is unconditional "
                "(net.num_classes = 0): set net.num_classes to the dataset's class count, or label_dropout = 0"
            )
        return 0
    if data.labels("train") is None or not data.num_classes:
        raise NonnormalError(
            f"net.num_classes={k} asks for a class-conditional model, but dataset {data.name!r} has no labels: "
            "give a labelled dataset (digits, mnist5k, cifar10, a folder of class sub-folders) or net.num_classes = 0"
        )
    if k != data.num_classes:
        raise NonnormalError(
            f"net.num_classes={k}, but dataset {data.name!r} has {data.num_classes} classes: "
            f"set net.num_classes = {data.num_classes}"
        )
    return k


def guided(model: Callable, scale: float) -> Callable:
    """The classifier-free guided noise model of a class-conditional ``model``.

    ``guided(model, w)(x, t, class_labels=y)`` is ``eps(x, t, null) + w (eps(x, t, y) - eps(x, t, null))``:
    ``w = 0`` is the unconditional model, ``w = 1`` the conditional one (both exactly: computed as
    ``torch.lerp``, which returns either end exactly), ``w > 1`` pushes samples towards their class.
    Without ``class_labels`` it is the unconditional model. Other keyword arguments pass through.
    """
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise NonnormalError(
            f"the guidance scale must be a finite number (0: unconditional, 1: conditional), got {scale!r}"
        )
    w = float(scale)

    def eps(x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None, **extra) -> torch.Tensor:
        if class_labels is None:
            return model(x, t, **extra)
        if w == 1:
            return model(x, t, class_labels=class_labels, **extra)
        uncond = model(x, t, class_labels=None, **extra)
        if w == 0:
            return uncond
        return torch.lerp(uncond, model(x, t, class_labels=class_labels, **extra), w)

    eps.scale = w
    own = model_schedule(model)
    if own is not None:  # the model's noise levels: a Diffusion still checks them (nonnormal.consistency)
        eps.schedule = own
    return eps


def class_prior(prior, num_classes: int | None = None) -> torch.Tensor:
    """``prior`` (class probabilities, or counts) checked and normalised: float64 ``(C,)`` summing to 1."""
    pi = torch.as_tensor(prior, dtype=torch.float64).cpu()
    if pi.ndim != 1 or pi.numel() < 1 or not bool(torch.isfinite(pi).all()) or bool((pi < 0).any()) or pi.sum() <= 0:
        raise NonnormalError(
            "the class prior must be a 1-D list of non-negative finite weights with a positive sum "
            f"(e.g. the training split's class shares), got {prior!r}"
        )
    if num_classes is not None and pi.numel() != num_classes:
        raise NonnormalError(f"the class prior has {pi.numel()} weights for {num_classes} classes: give one per class")
    return pi / pi.sum()


def marginal_log_likelihood(diffusion, eps_model: Callable, x: torch.Tensor, class_weights, **options):
    """``log p(x) = logsumexp_c (log pi_c + log p(x | c))`` in nats per example, and the total NFE.

    ``class_weights``: the class prior ``pi_c`` (probabilities, or counts: normalised) (e.g. the training split's shares,
    :func:`nonnormal.metrics.classes.class_profile`); ``eps_model`` a class-conditional model. Each
    ``log p(x | c)`` is :meth:`nonnormal.Diffusion.log_likelihood` with ``class_labels = c`` for the
    whole batch: one probability-flow ODE per class, so it costs C times the conditional likelihood
    (the NFE returned is the sum). ``options`` go to every solve (``trace``, ``rtol``, ...); ``prior``,
    the log-density of the state at t = 1 (default ``log N(0, I)``), is called as ``prior(z, class_labels)``
    (a class's own law at t = 1, as the exact mixture's ``marginal_log_prob``); a ``generator`` is re-seeded per class from one draw, so every class sees the same
    Hutchinson probes (their differences are then paired, as classes are compared).
    """
    from .results import LogLikelihood

    if "extra_args" in options:
        raise NonnormalError("the marginal likelihood sets class_labels itself: give no extra_args")
    pi = class_prior(class_weights)
    generator, end_prior = options.pop("generator", None), options.pop("prior", None)
    seed = None if generator is None else int(torch.randint(0, 2**62, (1,), generator=generator))
    per_class, nfe = [], 0
    for c in range(pi.numel()):
        if seed is not None:
            options["generator"] = torch.Generator(generator.device).manual_seed(seed)
        labels = torch.full((x.shape[0],), c, dtype=torch.int64, device=x.device)
        if end_prior is not None:
            options["prior"] = functools.partial(end_prior, class_labels=labels)
        logp, n = diffusion.log_likelihood(eps_model, x, extra_args={"class_labels": labels}, **options)
        per_class.append(logp.double() + math.log(pi[c]) if pi[c] > 0 else torch.full_like(logp.double(), -math.inf))
        nfe += n
    return LogLikelihood(torch.logsumexp(torch.stack(per_class), 0).to(x.dtype), nfe)


MAX_GUIDANCE = 100.0  # far above what classifier-free guidance uses (1 to ~10); beyond it eps overflows to nan


def check_guidance(scale, where: str = "the guidance scale") -> float:
    """A guidance scale for sampling: a finite number in [0, MAX_GUIDANCE] (0: unconditional, 1: conditional)."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale < 0:
        raise NonnormalError(
            f"{where} must be a finite number >= 0 (0: unconditional, 1: conditional, 2: stronger), got {scale!r}"
        )
    if scale > MAX_GUIDANCE:
        raise NonnormalError(
            f"{where} {scale!r} is over {MAX_GUIDANCE:g}: the guided eps leaves any sane range (guidance uses 1 to "
            "about 10); lower it"
        )
    return float(scale)


def sample_labels(spec, n: int, classes: int) -> torch.Tensor:
    """The class of each of ``n`` samples, int64 ``(n,)``, from ``spec``: a class (``3``), one class per
    sample (``"0,1,2,..."``, exactly ``n`` of them) or ``"all"`` (the classes in turn: 0, 1, ..., C-1, 0, ...).

    ``classes``: the model's class count (0: unconditional, which takes no class)."""
    if not classes:
        raise NonnormalError(
            f"a class ({spec}) needs a class-conditional run (net.num_classes > 0), and this one is unconditional: "
            "leave out the class (and the guidance)"
        )
    text = str(spec).strip()
    if text == "all":
        return torch.arange(n, dtype=torch.int64) % classes
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise NonnormalError(
            f"the class must be an integer, a comma-separated list of {n} integers (one per sample) or 'all', "
            f"got {spec!r}"
        ) from None
    bad = [v for v in values if not 0 <= v < classes]
    if bad:
        raise NonnormalError(f"class {bad[0]} is out of range: this run has classes 0..{classes - 1}")
    if len(values) == 1:
        values = values * n
    if len(values) != n:
        raise NonnormalError(f"{len(values)} classes for {n} samples: give one class per sample, one class, or 'all'")
    return torch.tensor(values, dtype=torch.int64)


def profile_labels(n: int, weights) -> torch.Tensor:
    """``n`` labels with the class shares of ``weights`` (e.g. the training split's counts), sorted by
    class: label i is the class whose cumulative share first exceeds ``(i + 1/2) / n`` (deterministic;
    each class gets its share of ``n`` to within one sample)."""
    pi = class_prior(weights)
    edges = torch.cumsum(pi, 0)
    edges[-1] = 1.0
    u = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    return torch.searchsorted(edges, u, right=True).clamp(max=pi.numel() - 1).to(torch.int64)
