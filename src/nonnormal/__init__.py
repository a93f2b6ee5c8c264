"""Non-normal diffusion models: diffusion whose per-step increments come from a law of your choice.

The public API::

    from nonnormal import Diffusion
    d = Diffusion("vdm", T=100, q="laplace", p="laplace")
    loss = d.loss()                      # per-example step-KL loss for training
    x = d.sample(eps_model, (16, 1, 8, 8), seed=0)
    run = nonnormal.load("runs/digits-laplace")  # a trained run: .model, .diffusion, .x_test, .levels

Registries (add your own law, schedule, network or dataset; a ``--plugin`` module does the same for
the command line): :func:`nonnormal.increments.register`, :func:`nonnormal.schedules.register`,
:func:`nonnormal.nets.register`, :func:`nonnormal.data.register`, all usable as decorators and all
kept by :class:`nonnormal.registry.Registry`. Heavy modules load on first use, so ``import
nonnormal`` is light.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .errors import NonnormalError

try:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as _version

    __version__ = _version("nonnormal")
except PackageNotFoundError:  # pragma: no cover - not installed (a source checkout on sys.path)
    __version__ = "0+unknown"

if TYPE_CHECKING:
    from .diffusion import Diffusion
    from .loading import load

__all__ = [
    "Diffusion",
    "NonnormalError",
    "__version__",
    "increments",
    "schedules",
    "nets",
    "divergences",
    "plugins",
    "exact",
    "load_run",
    "load",
]

_LAZY = {"Diffusion": ("diffusion", "Diffusion"), "load_run": ("runs", "load_run"), "load": ("loading", "load")}
_MODULES = {
    "increments",
    "schedules",
    "nets",
    "divergences",
    "plugins",
    "exact",
    "walk",
    "losses",
    "samplers",
    "likelihood",
    "ode",
    "data",
    "runs",
    "train",
    "config",
    "kernels",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(import_module(f".{module}", __name__), attr)
    if name in _MODULES:
        return import_module(f".{name}", __name__)
    raise AttributeError(f"module 'nonnormal' has no attribute {name!r}")
