"""What the parts share: plugin loading (the scheduler, the wrapped network and pretrained folders name
plugins) and the marker file an export writes and ``load_pretrained`` reads.

An export copies a run's plugin files into its folder and names them by paths relative to the folder of
the file that names them (``../plugins/my_laws.py`` in ``scheduler/scheduler_config.json``), so the folder
can move: the ``from_pretrained`` of the scheduler and the network resolve them with :func:`plugin_folder`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

EXPORT_INFO = "nonnormal.json"  # written by export_run beside model_index.json: the run's config
EXPORT_FORMAT = "nonnormal-diffusers-export-1"
PLUGIN_DIR = "plugins"  # where an export keeps copies of its run's plugin files

_FOLDER: ContextVar[Path | None] = ContextVar("nonnormal_plugin_folder", default=None)
_FOUND: dict[str, str] = {}  # a relative plugin path -> the file it was loaded from (a config rebuilt later names it)


@contextmanager
def plugin_folder(folder) -> Iterator[None]:
    """Resolve relative plugin paths against ``folder`` while loading from it."""
    token = _FOLDER.set(Path(folder))
    try:
        yield
    finally:
        _FOLDER.reset(token)


def is_plugin_file(spec: str) -> bool:
    """Whether a plugin spec names a ``.py`` file (else it is a module name)."""
    return spec.endswith(".py") or "/" in spec or "\\" in spec


def load_plugins(plugins, folder=None) -> None:
    """Import ``plugins``; a relative file path is taken from ``folder`` (default: :func:`plugin_folder`'s)."""
    if not plugins:
        return
    from ... import plugins as plugins_lib

    base = Path(folder) if folder is not None else _FOLDER.get()
    specs = []
    for spec in plugins:
        if is_plugin_file(spec) and not Path(spec).is_absolute():
            if base is not None:
                _FOUND[spec] = str(base / spec)
            # from_config of a loaded scheduler's config has no folder: the file it was loaded from
            spec = _FOUND.get(spec, spec)
        specs.append(spec)
    plugins_lib.load(specs)
