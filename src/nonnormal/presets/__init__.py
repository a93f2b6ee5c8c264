"""Presets: the TOML configs shipped inside the package, so ``--config NAME`` works from any folder.

``nonnormal presets`` lists them, ``nonnormal presets NAME`` prints one (copy it to change it);
``--config NAME`` (with or without ``.toml``) names one wherever a config file is taken, a file of
that name in the working folder taking precedence. ``nonnormal compare`` without ``--config`` runs
``compare-digits``, ``nonnormal study`` runs ``study-digits`` and ``nonnormal study --quick``
runs ``study-quick``: the same job, and the same numbers, whatever the working folder.
"""

from __future__ import annotations

from importlib import resources

from ..errors import NonnormalError

SUFFIX = ".toml"


def _folder():
    return resources.files(__name__)


def names() -> list[str]:
    """The presets' names, sorted (``compare-digits``, ``digits``, ...)."""
    return sorted(p.name[: -len(SUFFIX)] for p in _folder().iterdir() if p.name.endswith(SUFFIX))


def find(name: str) -> str | None:
    """The preset's name if ``name`` (``digits`` or ``digits.toml``) names one, else None."""
    stem = name[: -len(SUFFIX)] if name.endswith(SUFFIX) else name
    return stem if stem in names() else None


def text(name: str) -> str:
    """The TOML text of preset ``name``; an unknown name is a one-line error listing the presets."""
    stem = find(name)
    if stem is None:
        raise NonnormalError(f"no preset named {name!r}: the presets are {', '.join(names())}")
    return _folder().joinpath(stem + SUFFIX).read_text(encoding="utf-8")


def summary(name: str) -> str:
    """The first line of the preset's leading comment (what it is for)."""
    for line in text(name).splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
        if line.strip():
            break
    return ""
