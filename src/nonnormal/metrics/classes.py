"""Which samples, not only how good: class profiles, rare classes, and improved precision and recall.

FD and KID say how far samples are from the data; these say which classes come out and how
much of the data's manifold the samples cover. Pure functions of labels and feature arrays
(numpy or torch, computed in float64); :func:`classify` labels images with the dataset's own
feature classifier (:mod:`.features`), as FD uses its features.

- :func:`class_profile`, :func:`class_tv`: the share of each class, and the total variation
  distance between two profiles (samples against the training split's, or the test split's).
- :func:`rare_classes`, :func:`class_share`: the classes with the fewest training examples, and
  the share of samples that fall in a set of classes.
- :func:`precision_recall` (Kynkaanniemi et al., 2019, "Improved precision and recall metric for
  assessing generative models"): each set's manifold is the union of balls around its points with
  radius the distance to the point's k-th nearest neighbour in its own set (k = 3). Precision: the
  share of generated points inside the real manifold; recall: the share of real points inside the
  generated one. :func:`per_class_recall` restricts recall to the real points of each class.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from ..errors import NonnormalError

K_NEAREST = 3  # the paper's k: the k-th nearest neighbour sets each point's radius
_CHUNK = 1024  # query rows per distance block (a block is CHUNK x N float64)


def _labels(labels, num_classes: int, what: str = "labels") -> np.ndarray:
    y = np.asarray(torch.as_tensor(labels).cpu())
    if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer)):
        raise NonnormalError(f"{what} must be a 1-D array of integer class labels, got {y.dtype} {y.shape}")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise NonnormalError(
            f"{what} must lie in 0..{num_classes - 1}, got {y.min()}..{y.max()}: pass the right num_classes"
        )
    return y


def class_profile(labels, num_classes: int) -> np.ndarray:
    """The share of each class among ``labels`` (fractions summing to 1), shape ``(num_classes,)``."""
    y = _labels(labels, num_classes)
    if y.size == 0:
        raise NonnormalError("no labels to count: give at least one")
    return np.bincount(y, minlength=num_classes) / y.size


def class_tv(labels, reference_labels, num_classes: int) -> float:
    """Total variation distance between the class profiles of ``labels`` and ``reference_labels``.

    Unit: a fraction in [0, 1], the share of samples that would have to change class to match the
    reference's profile; lower is better (0: the same shares). Against the training split's labels
    it asks whether a model reproduces the profile it was trained on (long-tailed or not); against
    the test split's, whether it matches the balanced one.
    """
    return float(0.5 * np.abs(class_profile(labels, num_classes) - class_profile(reference_labels, num_classes)).sum())


def rare_classes(train_labels, num_classes: int, n: int) -> list[int]:
    """The ``n`` classes with the fewest training examples, rarest first (ties: the lower class first)."""
    if not 0 < n <= num_classes:
        raise NonnormalError(f"the number of rare classes must lie in 1..{num_classes}, got {n}")
    counts = np.bincount(_labels(train_labels, num_classes, "train_labels"), minlength=num_classes)
    return [int(c) for c in np.argsort(counts, kind="stable")[:n]]


def class_share(labels, classes, num_classes: int) -> float:
    """The share of ``labels`` that fall in ``classes`` (e.g. :func:`rare_classes`).

    Unit: a fraction in [0, 1]; its direction is set by the reference: compare it with the
    training split's share (a model that reproduces its data) and the test split's (balanced).
    """
    return float(class_profile(labels, num_classes)[list(classes)].sum())


@torch.no_grad()
def classify(features, x_unit: torch.Tensor, batch_size: int = 512) -> np.ndarray:
    """The class the feature classifier (a :class:`~nonnormal.metrics.features.Features`) gives each
    image of ``x_unit`` ``(N, C, H, W)`` in [-1, 1]: int64 ``(N,)``."""
    x_unit = torch.as_tensor(x_unit)
    if x_unit.ndim != 4 or tuple(x_unit.shape[1:]) != tuple(features.shape) or not x_unit.is_floating_point():
        raise NonnormalError(
            f"images must be floats in [-1, 1] of shape (N, {', '.join(map(str, features.shape))}), "
            f"got {x_unit.dtype} {tuple(x_unit.shape)}"
        )
    model = features.model.eval()
    device = next(model.parameters()).device
    out = [
        model(x_unit[i : i + batch_size].to(device, torch.float32)).argmax(1).cpu()
        for i in range(0, x_unit.shape[0], batch_size)
    ]
    return torch.cat(out).numpy().astype(np.int64) if out else np.zeros(0, np.int64)


# ---- improved precision and recall ---------------------------------------------------------------


class PrecisionRecall(NamedTuple):
    precision: float  # share of generated points inside the real manifold, in [0, 1]; higher is better
    recall: float  # share of real points inside the generated manifold, in [0, 1]; higher is better


def classifier_of(features):
    """The ``classifier`` input of the metrics table from a ``features()`` callable (returning the feature
    map and the real features): the map's classifier head, or :class:`Skipped` when it has none."""
    from .table import Skipped

    def classifier():
        f = features()[0]
        if getattr(f, "model", None) is None:
            raise Skipped("the feature map has no classifier head to give the samples' classes")
        return lambda images: classify(f, images)

    return classifier


def _points(x, what: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x).detach().cpu().double()
    if t.ndim != 2 or not bool(torch.isfinite(t).all()):
        raise NonnormalError(f"{what} must be a finite 2-D array (points, features), got shape {tuple(t.shape)}")
    return t


def knn_radii(points, k: int = K_NEAREST) -> np.ndarray:
    """Each point's distance to its ``k``-th nearest other point of the same set, ``(N,)``."""
    x = _points(points, "points")
    if not 0 < k < x.shape[0]:
        raise NonnormalError(f"k-nearest-neighbour radii need more than k = {k} points, got {x.shape[0]}")
    radii = [torch.cdist(x[i : i + _CHUNK], x).kthvalue(k + 1, dim=1).values for i in range(0, x.shape[0], _CHUNK)]
    return torch.cat(radii).numpy()  # (the (k+1)-th smallest distance: the point itself is the first, at 0)


def _inside(queries: torch.Tensor, points: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
    """Whether each query lies in some ball ``|q - p_i| <= r_i``, ``(Q,)`` bool."""
    hits = [
        (torch.cdist(queries[i : i + _CHUNK], points) <= radii[None]).any(1) for i in range(0, queries.shape[0], _CHUNK)
    ]
    return torch.cat(hits) if hits else torch.zeros(0, dtype=torch.bool)


def _pair(real, fake) -> tuple[torch.Tensor, torch.Tensor]:
    r, f = _points(real, "real features"), _points(fake, "generated features")
    if r.shape[1] != f.shape[1]:
        raise NonnormalError(f"real and generated features differ in width: {r.shape[1]} and {f.shape[1]}")
    return r, f


def precision_recall(real, fake, k: int = K_NEAREST) -> PrecisionRecall:
    """Improved precision and recall of generated features ``fake`` against ``real`` (both ``(N, F)``).

    Unit: two fractions in [0, 1]; higher is better for both. Precision is the share of samples
    that look real (quality), recall the share of the data the samples cover (diversity): a model
    that drops half of the data's modes keeps precision 1 and has recall about 0.5.
    """
    r, f = _pair(real, fake)
    r_radii, f_radii = torch.from_numpy(knn_radii(r, k)), torch.from_numpy(knn_radii(f, k))
    precision = float(_inside(f, r, r_radii).double().mean())
    recall = float(_inside(r, f, f_radii).double().mean())
    return PrecisionRecall(precision, recall)


def per_class_recall(real, real_labels, fake, num_classes: int, k: int = K_NEAREST) -> np.ndarray:
    """Recall restricted to each class: the share of the real points of class c inside the generated
    manifold, ``(num_classes,)`` (NaN for a class with no real points).

    Unit: fractions in [0, 1]; higher is better. The generated manifold is the whole sample's (the
    samples need no labels), so a rare class scores low when no sample lands near its real points.
    """
    r, f = _pair(real, fake)
    y = _labels(real_labels, num_classes, "real_labels")
    if y.shape[0] != r.shape[0]:
        raise NonnormalError(f"real_labels has {y.shape[0]} labels for {r.shape[0]} real points: give one per point")
    covered = _inside(r, f, torch.from_numpy(knn_radii(f, k))).numpy()
    return np.array([covered[y == c].mean() if (y == c).any() else np.nan for c in range(num_classes)])


def rare_class_recall(real, real_labels, fake, classes, num_classes: int, k: int = K_NEAREST) -> float:
    """Recall over the real points of ``classes`` together (e.g. :func:`rare_classes`): their share
    inside the generated manifold. Unit: a fraction in [0, 1]; higher is better."""
    y = _labels(real_labels, num_classes, "real_labels")
    mask = np.isin(y, list(classes))
    if not mask.any():
        raise NonnormalError(f"no real points of classes {list(classes)}: give real features that hold them")
    r, f = _pair(real, fake)
    return float(_inside(r[torch.from_numpy(mask)], f, torch.from_numpy(knn_radii(f, k))).double().mean())


# ---- the metrics table's entry (nonnormal.metrics.table imports this module) ----------------------------


def _precision_recall(inputs) -> dict:
    from .table import Skipped

    real, fake = inputs.features()[1], inputs.fake_features()
    if min(len(real), len(fake)) <= K_NEAREST:
        raise Skipped(f"improved precision and recall need more than k = {K_NEAREST} real and sampled images")
    p = precision_recall(real, fake)
    return {"precision": p.precision, "recall": p.recall}


RARE_FRACTION = 0.3  # the rare classes: the rarest 30% of the classes (3 of 10), by training count
BALANCED_RATIO = 2.0  # a training split whose largest/smallest class count is at most this has none


def table_rare_classes(train_labels, num_classes: int) -> list[int]:
    """The rare classes of the metrics table: the rarest ``RARE_FRACTION`` of the classes (at least one)
    by training count; raises the table's ``Skipped`` when the training split is balanced
    (largest/smallest class count at most ``BALANCED_RATIO``)."""
    from .table import Skipped

    counts = np.bincount(_labels(train_labels, num_classes, "train_labels"), minlength=num_classes)
    ratio = counts.max() / max(counts.min(), 1)
    if ratio <= BALANCED_RATIO:
        raise Skipped(
            f"the training classes are balanced (largest/smallest count {ratio:.2f} <= {BALANCED_RATIO:g}): "
            "no rare classes"
        )
    return rare_classes(train_labels, num_classes, max(1, round(RARE_FRACTION * num_classes)))


def _class_tv(inputs) -> dict:
    k, fake = inputs.num_classes, _labels(inputs.sample_classes, inputs.num_classes, "sample classes")
    return {
        "class_tv_train": class_tv(fake, inputs.train_labels, k),
        "class_tv_test": class_tv(fake, inputs.test_labels, k),
    }


def _rare_share(inputs) -> dict:
    k = inputs.num_classes
    rare = table_rare_classes(inputs.train_labels, k)
    return {
        "rare_share": class_share(_labels(inputs.sample_classes, k, "sample classes"), rare, k),
        "rare_share_train": class_share(inputs.train_labels, rare, k),
    }


def _rare_recall(inputs) -> float:
    from .table import Skipped

    k = inputs.num_classes
    rare = table_rare_classes(inputs.train_labels, k)
    real, fake = inputs.features()[1], inputs.fake_features()
    if len(fake) <= K_NEAREST:
        raise Skipped(f"recall needs more than k = {K_NEAREST} sampled images")
    return rare_class_recall(real, inputs.test_labels, fake, rare, k)


def _register() -> None:
    from .table import Metric, register

    register(
        Metric(
            "class_tv_train",
            _class_tv,
            "total variation (share of samples)",
            "lower",
            ("samples", "levels", "classifier", "labels"),
            "total variation between the class histogram of the samples (by the dataset's classifier) and the "
            "training split's class profile (class_tv_test: the test split's)",
            extras=("class_tv_test",),
        )
    )
    register(
        Metric(
            "rare_share",
            _rare_share,
            "share of samples",
            None,
            ("samples", "levels", "classifier", "labels"),
            f"share of samples the classifier puts in the rare classes (the rarest {RARE_FRACTION:.0%} by training "
            "count; skipped on balanced data); rare_share_train: their share of the training split, the "
            "profile a model reproduces",
            extras=("rare_share_train",),
            extra_units=("share of training images",),
        )
    )
    register(
        Metric(
            "rare_recall",
            _rare_recall,
            "share of rare-class test images",
            "higher",
            ("samples", "levels", "features", "labels"),
            "improved recall (k = 3) of the test images of the rare classes: their share inside the samples' "
            "k-NN manifold in the classifier's features (skipped on balanced data)",
        )
    )

    register(
        Metric(
            "precision",
            _precision_recall,
            "share of samples",
            "higher",
            ("samples", "levels", "features"),
            "improved precision (Kynkaanniemi et al. 2019, k = 3): share of samples inside the test images' "
            "k-NN manifold in the classifier's features; recall: share of test images inside the samples'",
            extras=("recall",),
            extra_units=("share of test images",),
        )
    )


_register()
