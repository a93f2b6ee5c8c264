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
