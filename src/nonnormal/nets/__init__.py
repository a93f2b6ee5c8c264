"""Noise networks ``eps_theta(x, t)`` and their registry. Networks know no increment law.

A network is a ``torch.nn.Module`` class whose constructor takes the example shape first and
then keyword options with defaults; ``forward(x, t)`` returns the predicted noise. A network with a
``num_classes`` option (``unet``, ``mlp``, ``diffusers-unet2d``) is class-conditional when it is > 0:
``forward(x, t, class_labels=y)``, with ``y = num_classes`` or None the null label (see
:mod:`nonnormal.conditioning`); with 0 it is unconditional and refuses labels. The config's
``[net]`` section holds ``name`` and any of those options: the options and their defaults are
read from the constructor's signature, so the config never copies them.

Add your own with :func:`register` (from Python or a ``--plugin`` module)::

    from nonnormal import nets

    @nets.register("tiny")
    class TinyNet(nn.Module):               # TinyNet(shape, width=16)
        ...

The built-in networks register themselves where they are defined (``unet``, ``mlp``);
``diffusers-unet2d`` is registered here by path, so that diffusers loads only when it is used.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from torch import nn

from ..errors import NonnormalError
from ..registry import Registry

NETS: Registry[nn.Module] = Registry("network")  # name -> class, or "module:attr" imported on first use


def register(name: str, cls: type | str | None = None, *, overwrite: bool = False, builtin: bool = False):
    """Add the network class ``cls`` (or a lazy ``"module:attr"`` path) under ``name``.

    Without ``cls`` it is a decorator (``@nets.register("tiny")`` above the class). The class is a
    ``torch.nn.Module`` whose constructor takes the example shape first, then keyword options
    with defaults, and whose ``forward(x, t)`` returns a tensor of ``x``'s shape.
    """
    if cls is None:

        def decorate(obj):
            register(name, obj, overwrite=overwrite, builtin=builtin)
            return obj

        return decorate
    if not isinstance(cls, str) and not (inspect.isclass(cls) and issubclass(cls, nn.Module)):
        raise NonnormalError(f"network {name!r} must be a torch.nn.Module subclass, got {cls!r}")
    NETS.register(name, cls, overwrite=overwrite, builtin=builtin)
    return cls


def names(*, builtin: bool | None = None) -> list[str]:
    """Registered network names: all, or only the built-in (``builtin=True``) or added (``False``) ones."""
    return NETS.names(builtin=builtin)


def get_class(name: str) -> type:
    """The class registered as ``name`` (importing a lazy entry on first use)."""
    entry = NETS.entry(name)
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        try:
            entry = getattr(importlib.import_module(module), attr)
        except ImportError as err:
            raise NonnormalError(
                f"network {name!r} needs {err.name or module}, which is not installed: "
                f"pip install 'nonnormal[diffusers]' (or the package it names)"
            ) from None
        NETS.replace_entry(name, entry)
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


register("diffusers-unet2d", "nonnormal.integrations.diffusers:DiffusersUNet", builtin=True)
for _module in ("unet", "mlp"):  # the built-in networks register themselves on import
    importlib.import_module(f"{__name__}.{_module}")
