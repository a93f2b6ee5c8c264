"""nonnormal and 🤗 diffusers, both ways (``pip install 'nonnormal[diffusers]'``).

- :class:`NonNormalScheduler`: a drop-in for ``DDPMScheduler`` (same config keys, plus ``law``,
  ``rule``, ``schedule``) whose step noise comes from any increment law. With ``law="gaussian"``
  and ``rule="posterior"`` it *is* DDPM, draw for draw; other laws are coupled to it through the
  generator: their increments are ``law.icdf(Phi(z))`` of the very normal draws ``z`` DDPM uses.
- :class:`DiffusersUNet`: ``UNet2DModel`` as a nonnormal network (``net.name = "diffusers-unet2d"``),
  so ``nonnormal train`` trains diffusers' UNet.
- :func:`load_pretrained`: a local diffusers pipeline (or UNet) folder as ``(eps_model, diffusion,
  shape)``, with the model's own DDPM noise levels as nonnormal's ``ddpm-linear`` schedule.
- :func:`export_run`: a trained run as a ``DDPMPipeline`` folder with a :class:`NonNormalScheduler`
  (our own networks wrapped as :class:`NonNormalNet`), loadable by ``DiffusionPipeline.from_pretrained``.

Time: :mod:`.timesteps` holds the one map ``t = (k + 1) / N`` between diffusers' integer timesteps
``k`` and nonnormal's times ``t``. Layout: :mod:`.scheduler`, :mod:`.nets` (``DiffusersUNet``,
``NonNormalNet``), :mod:`.pretrained`, :mod:`.export`; everything public is importable from here.
"""

from __future__ import annotations

try:
    import diffusers  # noqa: F401
except ImportError as _err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "nonnormal.integrations.diffusers needs diffusers: pip install 'nonnormal[diffusers]'", name="diffusers"
    ) from _err

# ModelMixin and SchedulerMixin must be attributes of this module: DiffusionPipeline.from_pretrained
# finds the loading method of a component from another library by looking them up in its module
from diffusers.models.modeling_utils import ModelMixin  # noqa: E402,F401
from diffusers.schedulers.scheduling_utils import SchedulerMixin  # noqa: E402,F401

from .common import EXPORT_FORMAT, EXPORT_INFO  # noqa: E402,F401
from .export import export_run  # noqa: E402
from .nets import DiffusersUNet, NonNormalNet  # noqa: E402
from .pretrained import (  # noqa: E402,F401
    PREDICTION_TYPES,
    PretrainedEps,
    default_diffusion_config,
    evaluate_pretrained,
    load_pretrained,
    make_diffusion,
    pretrained_as_run,
    pretrained_folder,
)
from .scheduler import NonNormalScheduler, coupled_increments  # noqa: E402
from .timesteps import t_to_timestep, timestep_to_t  # noqa: E402

# save_pretrained records a component as (its class's __module__, its class name) in model_index.json, and
# from_pretrained looks that class and ModelMixin/SchedulerMixin up in that module: the classes an export
# holds keep this package's path (the one recorded before the split, so older exports load too)
for _cls in (NonNormalScheduler, NonNormalNet):
    _cls.__module__ = __name__
del _cls

__all__ = [
    "NonNormalScheduler",
    "DiffusersUNet",
    "NonNormalNet",
    "load_pretrained",
    "export_run",
    "evaluate_pretrained",
    "timestep_to_t",
    "t_to_timestep",
    "coupled_increments",
]
