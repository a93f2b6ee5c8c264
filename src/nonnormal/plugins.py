"""Plugins: a user's own module that registers laws, schedules, networks, datasets or samplers before anything runs.

A plugin is a module name importable from the current folder or ``PYTHONPATH`` (``my_laws``) or
the path of a ``.py`` file (``./my_laws.py``). Importing it is all that happens: the module calls
``nonnormal.increments.register``, ``nonnormal.schedules.register``, ``nonnormal.nets.register``,
``nonnormal.data.register`` or ``nonnormal.samplers.register`` at import time (README, "Extending",
shows one of each). The command line takes ``--plugin`` (repeatable) and configs a top-level
``plugins = [...]``; every run records its plugins in ``config.toml``, so ``sample``, ``eval`` and
``compare`` of that run import them again without repeating ``--plugin``.

Installed packages can register through the ``nonnormal.plugins`` entry-point group (the entry
point names a module, or a function that is called with no arguments); the command line loads
them all at start (:func:`load_entry_points`).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path

from .errors import NonnormalError

ENTRY_POINT_GROUP = "nonnormal.plugins"
_LOADED: dict[str, str] = {}  # spec as given -> canonical spec (paths made absolute)
_FILES: dict[str, str] = {}  # sha256 of an imported plugin file -> its canonical spec (a copy is not re-imported)
_ENTRY_POINTS_LOADED = False
REQUESTED: list[str] = []  # the command line's --plugin modules: every config built in this process records them


def _canonical(spec: str) -> str:
    spec = spec.strip()
    if spec.endswith(".py") or "/" in spec or "\\" in spec:
        return str(Path(spec).expanduser().resolve())
    return spec


def _import_file(path: Path):
    if not path.is_file():
        raise NonnormalError(f"plugin file {path} not found: give an existing .py file or an importable module name")
    name = f"nonnormal_plugin_{path.stem}_{abs(hash(str(path))):x}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise NonnormalError(f"plugin {path} is not a Python file: give a .py file or a module name")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def load_one(spec: str) -> str:
    """Import the plugin ``spec`` once; return its canonical spec (what a run records)."""
    if not isinstance(spec, str) or not spec.strip():
        raise NonnormalError(f"a plugin is a module name or a .py path, got {spec!r}")
    canonical = _canonical(spec)
    if canonical in _LOADED.values():
        return canonical
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, "")  # as `python -m` does: modules in the current folder are found
    digest = None
    if canonical.endswith(".py") or Path(canonical).is_absolute():
        try:  # the same code at another path (an exported pipeline's copy) registers the same names
            digest = hashlib.sha256(Path(canonical).read_bytes()).hexdigest()
        except OSError:
            digest = None  # _import_file says what is wrong
        if digest in _FILES:
            _LOADED[spec] = canonical
            return canonical
    try:
        if canonical.endswith(".py") or Path(canonical).is_absolute():
            _import_file(Path(canonical))
        else:
            importlib.import_module(canonical)
    except NonnormalError:
        raise
    except SystemExit as err:
        raise NonnormalError(
            f"plugin {canonical!r} exited on import (SystemExit {err.code!r}): a plugin must only "
            "register laws, schedules, networks or datasets"
        ) from None
    except ModuleNotFoundError as err:
        if err.name and canonical.split(".")[0] == err.name.split(".")[0]:
            raise NonnormalError(
                f"plugin module {canonical!r} not found: install it, add its folder to PYTHONPATH, "
                f"or pass the path of its .py file"
            ) from None
        raise NonnormalError(f"plugin {canonical!r} failed to import: it needs the module {err.name!r}") from None
    except Exception as err:
        first = (str(err).splitlines() or [""])[0][:200]
        raise NonnormalError(
            f"plugin {canonical!r} failed on import ({type(err).__name__}: {first}): fix the plugin"
        ) from None
    _LOADED[spec] = canonical
    if digest is not None:
        _FILES[digest] = canonical
    return canonical


def load(specs) -> list[str]:
    """Import each plugin in ``specs`` (idempotent); return their canonical specs, in order."""
    out: list[str] = []
    for spec in specs or ():
        canonical = load_one(spec)
        if canonical not in out:
            out.append(canonical)
    return out


def load_entry_points() -> list[str]:
    """Load every installed ``nonnormal.plugins`` entry point once; return their names."""
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return []
    _ENTRY_POINTS_LOADED = True
    from importlib.metadata import entry_points

    names = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
            if callable(obj) and not isinstance(obj, type(sys)):
                obj()
        except NonnormalError:
            raise
        except Exception as err:
            first = (str(err).splitlines() or [""])[0][:200]
            raise NonnormalError(
                f"the installed plugin {ep.name!r} ({ep.value}) failed to load "
                f"({type(err).__name__}: {first}): update or uninstall it"
            ) from None
        names.append(ep.name)
    return names
