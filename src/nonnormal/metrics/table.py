"""The one table of metrics: every consumer (``nonnormal eval``, ``evaluate_pretrained``, the study's
rows, comparisons, findings and plots, compare's table, the report pages) reads it.

A :class:`Metric` is a name (the JSON key and table column), a function, a unit, a direction
(``"lower"`` or ``"higher"`` is better, or ``None`` for a descriptive number such as saturation),
what it needs and a one-line description. Adding a metric is one :func:`register` call::

    from nonnormal.metrics import table

    def _share_dark(inputs):                       # inputs: a MetricInputs
        return float((inputs.sample_levels == 0).double().mean())

    table.register(table.Metric(
        "dark_share", _share_dark, unit="share", direction=None, needs=("samples", "levels"),
        description="share of sample pixels at the lowest level"))

It then appears in ``eval.json``, in every study row (and its comparisons and tables) and, with
``headline=True``, in compare's table and the metrics-vs-T plot. Put the call in any module:

- a plugin file (``nonnormal --plugin my_metrics.py eval RUN``) registers when it is imported;
- a module inside the package (say ``nonnormal/metrics/classes.py``) is added to :data:`MODULES`,
  which the table imports on first use, so its entries register before anyone reads the table
  (the built-in entries live in :mod:`nonnormal.metrics.builtin`, the first of them).

The function takes one :class:`MetricInputs` and returns a float, ``None`` (no value), or a dict
holding ``name`` and the metric's ``extras`` (KID returns ``kid`` and ``kid_std``). It raises
:class:`Skipped` with a reason when the inputs cannot give a value (the reason lands in the
output's ``skipped`` table). What a metric ``needs`` is checked first, so a metric that needs
``"features"`` is skipped, with the reason, on data without class labels:

- ``samples``: the model's samples (``inputs.samples`` on [-1, 1], snapped to the data's levels,
  and ``inputs.sample_levels``); ``test``: the test images or points (``inputs.test``);
  ``train``: the training images as levels (``inputs.train_levels``); ``features``: the dataset's
  feature classifier (``inputs.features()`` -> ``(Features, real test features)``,
  ``inputs.fake_features()``); ``levels``: discrete data (``inputs.levels``); ``classifier``: the
  dataset's classifier (``inputs.sample_classes``, the class it gives each sample); ``labels``: the
  data's class labels (``inputs.train_labels``, ``inputs.test_labels`` of the test images that
  ``features()`` holds, ``inputs.num_classes``);
- ``model``: a likelihood, computed by the evaluation engine's own pass over the test images
  (``bpd_ode``, ``bpd_bound``, ``nll_ode``); these entries have no function.

``data`` says which data a metric applies to: ``"images"`` (discrete levels), ``"points"``
(continuous low-dimensional data, toy2d) or ``"any"``. Raise a metric's ``version`` when its
definition changes: cached study results of the old version are recomputed.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import NonnormalError
from ..registry import Registry

DIRECTIONS = ("lower", "higher", None)
NEEDS = ("samples", "test", "train", "features", "levels", "model", "classifier", "labels")
DATA = ("images", "points", "any")
# in-package modules that register metrics, imported on first use of the table (add yours here)
MODULES: tuple[str, ...] = ("nonnormal.metrics.builtin", "nonnormal.metrics.classes")


NO_CLASSIFIER = "no classifier was given"  # why a metric that needs the classifier is skipped without one
NO_LABELS = "the data has no class labels"  # ... and one that needs the labels


class Skipped(Exception):
    """Raised by a metric's function: no value for these inputs, and why (one line)."""


@dataclass(frozen=True)
class Metric:
    """One row of the table (see the module's docstring)."""

    name: str
    compute: Callable[[MetricInputs], Any] | None
    unit: str
    direction: str | None
    needs: tuple[str, ...]
    description: str
    extras: tuple[str, ...] = ()  # further keys the function returns beside ``name``
    extra_units: tuple[str, ...] = ()  # their units, in order (default: the metric's unit)
    data: str = "images"
    headline: bool = False  # in the narrow tables: compare's table, the metrics-vs-T plot, sample-law comparisons
    findings: bool = True  # a study says in words when two pairs differ distinguishably in it
    version: int = 1

    def __post_init__(self):
        if not self.name.isidentifier():
            raise NonnormalError(f"metric name {self.name!r} must be an identifier (it is a JSON key and a column)")
        if self.direction not in DIRECTIONS:
            raise NonnormalError(f"metric {self.name}: direction must be 'lower', 'higher' or None")
        bad = sorted(set(self.needs) - set(NEEDS))
        if bad:
            raise NonnormalError(f"metric {self.name}: unknown need {bad[0]!r}: choose from {', '.join(NEEDS)}")
        if self.data not in DATA:
            raise NonnormalError(f"metric {self.name}: data must be one of {', '.join(DATA)}")
        if (self.compute is None) != ("model" in self.needs):
            raise NonnormalError(f"metric {self.name}: give a function, unless it needs the model (a likelihood)")

    @property
    def keys(self) -> tuple[str, ...]:
        """Every output key: the name and the extras."""
        return (self.name, *self.extras)


TABLE: Registry[Metric] = Registry("metric")
_order: list[str] = []
_loaded = False


def register(metric: Metric, *, overwrite: bool = False, builtin: bool = False) -> Metric:
    """Add ``metric`` to the table (``overwrite=True`` replaces an added entry of the same name in place;
    ``builtin`` entries, those of :mod:`nonnormal.metrics.builtin`, can be neither replaced nor removed)."""
    if not isinstance(metric, Metric):
        raise NonnormalError(f"register takes a nonnormal.metrics.table.Metric, got {type(metric).__name__}")
    _load()  # the built-in entries first: they come first in every table
    TABLE.register(metric.name, metric, overwrite=overwrite, builtin=builtin)
    if metric.name not in _order:
        _order.append(metric.name)
    return metric


def unregister(name: str) -> None:
    """Take an added metric out of the table (built-in ones stay)."""
    TABLE.unregister(name)
    if name in _order:
        _order.remove(name)


def _load() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in MODULES:
            importlib.import_module(module)


def get(name: str) -> Metric:
    """The entry called ``name`` (an unknown name is a one-line error listing the known ones)."""
    _load()
    return TABLE.entry(name)


def metrics(data: str | None = None, *, headline: bool | None = None, sampled: bool | None = None) -> list[Metric]:
    """The entries in registration order: those for ``data`` ("images" or "points"; None: all), only
    headline ones (``headline=True``), only sample metrics (``sampled=True``) or only likelihoods (False)."""
    _load()
    out = [TABLE.entry(n) for n in _order if n in TABLE]  # registration order
    if data is not None:
        out = [m for m in out if m.data in (data, "any")]
    if headline is not None:
        out = [m for m in out if m.headline == headline]
    if sampled is not None:
        out = [m for m in out if (m.compute is not None) == sampled]
    return out


def names(data: str | None = None, **kw) -> list[str]:
    return [m.name for m in metrics(data, **kw)]


def units() -> dict[str, str]:
    """``{key: unit}`` for every metric and extra: the one set of units of every table and page."""
    out = {}
    for m in metrics():
        out[m.name] = m.unit
        for i, k in enumerate(m.extras):
            out[k] = m.extra_units[i] if i < len(m.extra_units) else m.unit
    return out


def describe() -> list[dict]:
    """The table as rows (name, unit, direction, needs, description): for docs and ``--help``."""
    return [
        {
            "name": m.name,
            "unit": m.unit,
            "better": m.direction or "neither",
            "needs": ", ".join(m.needs),
            "description": m.description,
        }
        for m in metrics()
    ]


class MetricInputs:
    """What sample metrics are computed from; the costly parts (training images, the feature
    classifier and its features) are loaded on first use and shared by every metric.

    ``samples``: ``(N, ...)`` floats; for images on [-1, 1], already on the data's levels (snap
    them once with :func:`snap`). ``levels``: the data's number of levels (None for continuous
    data). ``test``: the test images or points the samples are compared with. ``train_levels``:
    a function giving the training images as levels. ``features``: a function giving
    ``(Features, real test features)``. ``seed``: for metrics that draw (KID's subsets).
    ``features_missing``: why there is no feature classifier, when ``features`` is None.
    ``classifier``: a function giving ``classify(x) -> int64 (N,)`` (the class of each image);
    ``labels``: a function giving ``(train_labels, test_labels)``, int64 arrays of the training
    images and of the test images of ``features()``; ``num_classes``: their class count.
    """

    def __init__(
        self,
        samples: torch.Tensor,
        levels: int | None,
        test: torch.Tensor | None = None,
        *,
        train_levels: Callable[[], torch.Tensor] | None = None,
        features: Callable[[], tuple[Any, Any]] | None = None,
        seed: int = 0,
        features_missing: str = "no feature classifier was given",
        classifier: Callable[[], Callable[[torch.Tensor], Any]] | None = None,
        labels: Callable[[], tuple[Any, Any]] | None = None,
        num_classes: int | None = None,
    ):
        self.samples, self.levels, self.test, self.seed = samples, levels, test, seed
        self._train_levels, self._features, self.features_missing = train_levels, features, features_missing
        self._classifier, self._labels, self.num_classes = classifier, labels, num_classes
        self._cache: dict[str, Any] = {}

    def available(self, need: str) -> str | None:
        """None when ``need`` is at hand, else why not (one line)."""
        if need == "levels" and self.levels is None:
            return "the data is continuous (no levels)"
        if need == "test" and self.test is None:
            return "no test data was given"
        if need == "train" and self._train_levels is None:
            return "no training images were given"
        if need == "features" and self._features is None:
            return self.features_missing
        if need == "classifier" and self._classifier is None:
            return self.features_missing if self._features is None else NO_CLASSIFIER
        if need == "labels" and (self._labels is None or not self.num_classes):
            return NO_LABELS
        if need == "model":
            return "a likelihood comes from the evaluation engine, not from samples"
        return None

    def _once(self, key: str, make: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    @property
    def sample_levels(self) -> torch.Tensor:
        """The samples as integer levels ``0 .. levels-1``."""
        from ..data.levels import unit_to_levels

        return self._once("levels", lambda: unit_to_levels(self.samples, self.levels))

    @property
    def train_levels(self) -> torch.Tensor:
        return self._once("train", self._train_levels)

    def features(self):
        """``(Features, real test features)``."""
        return self._once("features", self._features)

    def fake_features(self):
        return self._once("fake", lambda: self.features()[0](self.samples))

    @property
    def sample_classes(self):
        """The class the classifier gives each sample, int64 ``(N,)``."""
        return self._once("classes", lambda: self._classifier()(self.samples))

    @property
    def train_labels(self):
        return self._once("labels", self._labels)[0]

    @property
    def test_labels(self):
        return self._once("labels", self._labels)[1]


def snap(x: torch.Tensor, levels: int) -> torch.Tensor:
    """Samples on [-1, 1] snapped onto the centres of the data's ``levels`` bins (float32): the one
    place samples meet the levels before they are scored or shown."""
    from ..data.levels import levels_to_unit, unit_to_levels

    return levels_to_unit(unit_to_levels(x.float(), levels), levels).float()


def compute(
    inputs: MetricInputs, data: str, only: Iterable[str] | None = None
) -> tuple[dict[str, Any], dict[str, str]]:
    """``(values, skipped)``: every sample metric for ``data`` ("images" or "points") on ``inputs``.

    ``values`` maps each metric's keys to numbers (``None`` where a metric gave none);
    ``skipped`` maps the name of each metric that gave no value to the reason.
    """
    values: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    wanted = None if only is None else set(only)
    for m in metrics(data, sampled=True):
        if wanted is not None and m.name not in wanted:
            continue
        reason = next((r for r in map(inputs.available, m.needs) if r), None)
        result: Any = None
        if reason is None:
            try:
                result = m.compute(inputs)
            except Skipped as why:
                reason = str(why)
        if not isinstance(result, dict):
            result = {m.name: result}
        for k in m.keys:
            values[k] = result.get(k)
            if values[k] is None and k != m.name and k not in skipped and reason is None:
                skipped[k] = str(result.get(f"{k}_skipped", "no value"))
        if reason is not None:
            skipped[m.name] = reason
    return values, skipped
