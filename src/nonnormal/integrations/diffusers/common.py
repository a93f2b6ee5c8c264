"""What the parts share: plugin loading (the scheduler, the wrapped network and pretrained folders name
plugins) and the marker file an export writes and ``load_pretrained`` reads."""

from __future__ import annotations

EXPORT_INFO = "nonnormal.json"  # written by export_run beside model_index.json: the run's config
EXPORT_FORMAT = "nonnormal-diffusers-export-1"


def _load_plugins(plugins) -> None:
    if plugins:
        from ... import plugins as plugins_lib

        plugins_lib.load(list(plugins))
