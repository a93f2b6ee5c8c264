"""Named factories with parameters: ``get("student_t", nu=5)`` or ``get("student_t:nu=5")``.

Increment laws, noise schedules, networks and datasets are all looked up by name in a
:class:`Registry`; this is the one place that keeps such a table, parses a spec string and
reports an unknown name with the list of known ones.
"""

from __future__ import annotations

import math
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
    """A table of named factories of one kind (``what`` names the kind in error messages).

    Every extension point (increment laws, schedules, networks, datasets) keeps one. An entry is
    added where its class or function is defined, with :meth:`register` as a decorator::

        LAWS = Registry("increment law")

        @LAWS.register("laplace", builtin=True)
        class Laplace(IncrementLaw): ...

    ``builtin`` entries ship with nonnormal: they are never replaced or removed, and
    :meth:`names` can list them apart from what plugins added.
    """

    def __init__(self, what: str):
        self.what = what
        self._factories: dict[str, Any] = {}
        self._builtin: set[str] = set()

    def register(self, name: str, factory: Any = None, *, overwrite: bool = False, builtin: bool = False):
        """Add ``factory`` under ``name``; without ``factory``, a decorator that adds what it decorates."""
        if factory is None:

            def decorate(obj):
                self.register(name, obj, overwrite=overwrite, builtin=builtin)
                return obj

            return decorate
        if not builtin:
            self.check_name(name, overwrite=overwrite)
        self._factories[name] = factory
        if builtin:
            self._builtin.add(name)
        return factory

    def check_name(self, name: str, *, overwrite: bool = False) -> None:
        """Refuse, in one line, a name that cannot be registered (malformed, built-in, or taken)."""
        if not isinstance(name, str) or not name.strip() or ":" in name or "=" in name:
            raise NonnormalError(f"bad {self.what} name {name!r}: use letters, digits, '-' and '_' (no ':' or '=')")
        if name in self._builtin:
            raise NonnormalError(
                f"{self.what} {name!r} is already registered as a built-in one and cannot be replaced: "
                "register yours under another name"
            )
        if name in self._factories and not overwrite:
            raise NonnormalError(f"{self.what} {name!r} is already registered: pass overwrite=True to replace it")

    def unregister(self, name: str) -> None:
        """Remove a registered entry (not a built-in one); unknown names are ignored."""
        if name in self._builtin:
            raise NonnormalError(f"{name!r} is a built-in {self.what} and cannot be removed")
        self._factories.pop(name, None)

    def names(self, *, builtin: bool | None = None) -> list[str]:
        """The registered names, sorted: all (default), only the built-in ones, or only the added ones."""
        return sorted(n for n in self._factories if builtin is None or (n in self._builtin) == builtin)

    def is_builtin(self, name: str) -> bool:
        return name in self._builtin

    def __contains__(self, name: object) -> bool:
        return name in self._factories

    def entry(self, name: str) -> Any:
        """What is registered under ``name``, or a one-line refusal listing the known names."""
        if name not in self._factories:
            raise NonnormalError(f"unknown {self.what} {name!r}: choose one of {', '.join(self.names())}")
        return self._factories[name]

    def replace_entry(self, name: str, factory: Any) -> None:
        """Swap an entry in place (a lazy ``"module:attr"`` entry for what it names, once imported)."""
        self.entry(name)
        self._factories[name] = factory

    def get(self, spec: str, **params: Any) -> T:
        """Build the entry named by ``spec`` (``"name:key=value"``) with its parameters (and ``params``)."""
        name, parsed = parse_spec(spec)
        parsed.update(params)
        factory = self.entry(name)
        try:
            return factory(**parsed)
        except NonnormalError:
            raise
        except (TypeError, ValueError, ArithmeticError) as err:  # a factory's own complaint, on one line
            shown = ", ".join(f"{k}={v!r}" for k, v in parsed.items())
            raise NonnormalError(f"bad parameters for {self.what} {name!r} ({shown}): {err}") from None
