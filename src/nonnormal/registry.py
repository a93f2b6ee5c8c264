"""Named factories with parameters: ``get("student_t", nu=5)`` or ``get("student_t:nu=5")``.

Increment laws and noise schedules are both looked up by name; this is the one place that
parses a spec string and reports an unknown name with the list of known ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from .errors import NonnormalError

T = TypeVar("T")


def parse_spec(spec: str) -> tuple[str, dict[str, float]]:
    """Split ``"name:key=value:key=value"`` into the name and float parameters."""
    name, *pairs = spec.strip().split(":")
    params: dict[str, float] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if key.strip() in params:
            raise NonnormalError(f"parameter {key.strip()!r} is given twice in {spec!r}: give it once")
        if not sep or not key:
            raise NonnormalError(f"bad parameter {pair!r} in {spec!r}: write name:key=value, e.g. student_t:nu=5")
        try:
            params[key.strip()] = float(value)
        except ValueError:
            raise NonnormalError(f"parameter {key!r} in {spec!r} must be a number, got {value!r}") from None
        if math.isnan(params[key.strip()]):
            raise NonnormalError(f"parameter {key!r} in {spec!r} must be a number, got {value!r}")
    return name.strip(), params


def bounded_parameter(owner: str, key: str, value, lo: float, hi: float, hint: str, closed: bool = False) -> float:
    """``value`` as a float in ``(lo, hi]`` (``[lo, hi]`` if ``closed``), or a one-line refusal with ``hint``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise NonnormalError(f"{owner} parameter {key} must be a number, got {value!r}") from None
    if not ((lo <= v if closed else lo < v) and v <= hi):
        raise NonnormalError(
            f"{owner} needs {lo:g} {'<=' if closed else '<'} {key} <= {hi:g} (got {key}={v:g}): {hint}"
        )
    return v


class Registry(Generic[T]):
    """A table of named factories of one kind (``what`` names the kind in error messages)."""

    def __init__(self, what: str):
        self.what = what
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, name: str, factory: Callable[..., T], *, overwrite: bool = False) -> None:
        if name in self._factories and not overwrite:
            raise NonnormalError(f"{self.what} {name!r} is already registered: pass overwrite=True to replace it")
        self._factories[name] = factory

    def names(self) -> list[str]:
        return sorted(self._factories)

    def get(self, spec: str, **params: Any) -> T:
        name, parsed = parse_spec(spec)
        parsed.update(params)
        if name not in self._factories:
            raise NonnormalError(f"unknown {self.what} {name!r}: choose one of {', '.join(self.names())}")
        try:
            return self._factories[name](**parsed)
        except NonnormalError:
            raise
        except (TypeError, ValueError, ArithmeticError) as err:  # a factory's own complaint, on one line
            shown = ", ".join(f"{k}={v!r}" for k, v in parsed.items())
            raise NonnormalError(f"bad parameters for {self.what} {name!r} ({shown}): {err}") from None
