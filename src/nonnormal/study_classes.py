"""The study's class axis: conditional models beside unconditional ones, and the class metrics.

``[study] conditional = [false, true]`` trains each (pair, T_train, seed) twice: unconditional, and
class-conditional (``net.num_classes`` = the data's classes, ``train.label_dropout`` = the plan's
``label_dropout``, in its own model folder ``...-cond``). A conditional model is scored given the test
images' labels (``-log2 p(x | y)``, ODE and bound) and sampled with labels in the training split's class
profile (:func:`sample_labels`) at the plan's ``guidance``, so its samples stand for the same data law as
an unconditional model's. The class metrics (``class_tv_train``, ``rare_share``, ``rare_recall``,
``precision``, ``recall``) get the dataset's classifier and labels (:func:`metric_inputs`); on a
long-tailed dataset (``:imbalance=R``) the classifier is the one of its balanced base
(:func:`nonnormal.data.balanced`), since a classifier trained on the long tail itself (326 digits)
would misread the rare classes it is asked to count.
"""

from __future__ import annotations

import math
from dataclasses import asdict

import torch

from .errors import NonnormalError

KEYS = ("conditional", "label_dropout", "guidance")  # the plan's keys of the class axis


def has_axis(plan) -> bool:
    """Whether a plan holds conditional models (then rows, comparisons and pages carry ``conditional``)."""
    return any(plan.conditional)


def plan_dict(plan) -> dict:
    """The plan as written to ``study.json``: without the class axis's keys when it has no conditional model
    (an unconditional study's files are as they were before the axis existed)."""
    out = asdict(plan)
    if not has_axis(plan):
        for key in KEYS:
            out.pop(key)
    return out


def check(plan) -> None:
    """One-line errors for the class axis's keys of a :class:`nonnormal.study.Plan`."""
    v = plan.conditional
    if not isinstance(v, list) or not v or not all(isinstance(i, bool) for i in v) or len(set(v)) != len(v):
        raise NonnormalError(
            f"study.conditional must be a non-empty list of distinct booleans, e.g. [false, true], got {v!r}"
        )
    if not (math.isfinite(plan.label_dropout) and 0 <= plan.label_dropout < 1):
        raise NonnormalError(
            f"study.label_dropout must lie in [0, 1) (0.1 is typical; 0 leaves guidance no unconditional model), "
            f"got {plan.label_dropout}"
        )
    from .conditioning import check_guidance

    check_guidance(plan.guidance, "study.guidance")
    if has_axis(plan) and plan.guidance != 1 and not plan.label_dropout:
        raise NonnormalError(
            f"study.guidance = {plan.guidance} needs the unconditional model that label dropout trains: "
            "set study.label_dropout > 0 (e.g. 0.1) or study.guidance = 1"
        )


def overrides(data, plan) -> list[str]:
    """The config overrides that make a run config class-conditional for ``data``."""
    if data.labels("train") is None or not data.num_classes:
        raise NonnormalError(
            f"study.conditional = true needs a labelled dataset, and {data.name} has no class labels: "
            "use one with classes (digits, mnist5k, cifar10, digits:imbalance=100) or conditional = [false]"
        )
    return [f"net.num_classes={int(data.num_classes)}", f"train.label_dropout={plan.label_dropout!r}"]


def slug(cond: bool) -> str:
    """The suffix of a conditional model's folder and cache."""
    return "-cond" if cond else ""


def sample_labels(n: int, weights, seed: int, total: int) -> torch.Tensor:
    """The classes of the first ``n`` of ``total`` samples, int64 ``(n,)``: ``total`` labels in the class
    profile of ``weights`` (:func:`nonnormal.conditioning.profile_labels`: each class its share to within one
    sample), in an order shuffled by ``seed``. Label i depends on ``(weights, seed, total, i)`` only, so
    the first images of a Figure-1 row are the first metric samples, with the same classes."""
    from .conditioning import profile_labels

    total = max(int(total), int(n))
    order = torch.randperm(total, generator=torch.Generator().manual_seed(int(seed)))
    return profile_labels(total, weights)[order][:n]


def condition(model, data, plan, n: int):
    """``(guided model, extra_args)`` for ``n`` samples of a conditional model: the plan's guidance, and the
    classes of :func:`sample_labels` in ``data``'s training profile (seeded by the plan's sample seed)."""
    from .conditioning import guided

    weights = torch.bincount(data.labels("train"), minlength=data.num_classes)
    labels = sample_labels(n, weights, plan.sample_seed, plan.n_samples)
    return guided(model, plan.guidance), {"class_labels": labels}


def metric_inputs(study) -> dict:
    """The class keyword arguments of :class:`nonnormal.metrics.table.MetricInputs` for a study's samples:
    ``classifier``, ``labels`` and ``num_classes`` (empty on data without labels)."""
    from .metrics import classes as classes_lib

    data = study.data
    if data.labels("train") is None or not data.num_classes:
        return {}

    def labels():
        return data.labels("train").numpy(), study.test_labels().numpy()

    return {
        "classifier": classes_lib.classifier_of(study.features),
        "labels": labels,
        "num_classes": int(data.num_classes),
    }
