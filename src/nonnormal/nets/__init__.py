"""Noise networks ``eps_theta(x, t)`` and their registry. Networks know no increment law.

A network is a ``torch.nn.Module`` class whose constructor takes the example shape first and
then keyword options with defaults; ``forward(x, t)`` returns the predicted noise. The config's
``[net]`` section holds ``name`` and any of those options: the options and their defaults are
read from the constructor's signature, so the config never copies them.

Add your own with :func:`register` (from Python or a ``--plugin`` module)::

    from nonnormal import nets
    nets.register("tiny", TinyNet)          # TinyNet(shape, width=16)
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from torch import nn

from ..errors import NonnormalError

# name -> class, or "module:attr" for networks whose module is imported on first use
_NETS: dict[str, type | str] = {
    "unet": "nonnormal.nets.unet:UNet",
    "mlp": "nonnormal.nets.mlp:MLP",
    "diffusers-unet2d": "nonnormal.integrations.diffusers:DiffusersUNet",
}


def register(name: str, cls: type | str, *, overwrite: bool = False) -> None:
    """Add the network class ``cls`` (or a lazy ``"module:attr"`` path) under ``name``."""
    if not isinstance(name, str) or not name or ":" in name:
        raise NonnormalError(f"network name must be a non-empty string without ':', got {name!r}")
    if name in _NETS and not overwrite:
        raise NonnormalError(f"network {name!r} is already registered: pass overwrite=True to replace it")
    if not isinstance(cls, str) and not (inspect.isclass(cls) and issubclass(cls, nn.Module)):
        raise NonnormalError(f"network {name!r} must be a torch.nn.Module subclass, got {cls!r}")
    _NETS[name] = cls


def names() -> list[str]:
    return sorted(_NETS)


def get_class(name: str) -> type:
    """The class registered as ``name`` (importing a lazy entry on first use)."""
    if name not in _NETS:
        raise NonnormalError(f"unknown network {name!r}: choose one of {', '.join(names())}")
    entry = _NETS[name]
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        try:
            entry = getattr(importlib.import_module(module), attr)
        except ImportError as err:
            raise NonnormalError(
                f"network {name!r} needs {err.name or module}, which is not installed: "
                f"pip install 'nonnormal[diffusers]' (or the package it names)"
            ) from None
        _NETS[name] = entry
    return entry


def options(name: str) -> dict[str, Any]:
    """The keyword options of network ``name`` and their defaults, from its constructor's signature.

    Tuples become lists (TOML arrays); options without a default are reported as ``None``.
    """
    cls = get_class(name)
    params = list(inspect.signature(cls.__init__).parameters.values())[2:]  # self, shape
    out: dict[str, Any] = {}
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        default = None if p.default is inspect.Parameter.empty else p.default
        out[p.name] = list(default) if isinstance(default, tuple) else default
    return out


def build(name: str, shape: tuple[int, ...], **opts) -> nn.Module:
    """The network ``name`` for examples of ``shape``, with its keyword ``opts``."""
    cls = get_class(name)
    opts = {k: tuple(v) if isinstance(v, list) else v for k, v in opts.items()}
    try:
        return cls(tuple(shape), **opts)
    except NonnormalError:
        raise
    except (TypeError, ValueError) as e:
        raise NonnormalError(f"bad option for network {name!r} on data of shape {tuple(shape)}: {e}") from None
