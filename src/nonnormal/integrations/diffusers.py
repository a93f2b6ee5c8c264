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

Time. diffusers numbers the noise levels of an N-step model with integers ``k = 0..N-1``
(``alphas_cumprod[k]``); nonnormal uses a continuous ``t`` in ``[t_min, 1]``. The one map between
them is ``t = (k + 1) / N`` (:func:`timestep_to_t`, inverse :func:`t_to_timestep`): with the
``ddpm-linear`` schedule ``alpha_t^2`` equals ``alphas_cumprod[k]`` exactly at those times, and
``k = -1`` (the clean image, DDPM's "previous timestep" of 0) is ``t = 0``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import increments, schedules
from ..errors import NonnormalError

try:
    import diffusers  # noqa: F401
except ImportError as _err:  # pragma: no cover - exercised only without the extra
    raise ImportError("nonnormal.integrations.diffusers needs diffusers: pip install 'nonnormal[diffusers]'",
                      name="diffusers") from _err

from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel  # noqa: E402
from diffusers.configuration_utils import ConfigMixin, register_to_config  # noqa: E402
# ModelMixin and SchedulerMixin must be attributes of this module: DiffusionPipeline.from_pretrained
# finds the loading method of a component from another library by looking them up in its module
from diffusers.models.modeling_utils import ModelMixin  # noqa: E402
from diffusers.schedulers.scheduling_utils import SchedulerMixin  # noqa: E402,F401
from diffusers.models.unets.unet_2d import UNet2DOutput  # noqa: E402
from diffusers.schedulers.scheduling_ddpm import DDPMSchedulerOutput  # noqa: E402
from diffusers.utils.torch_utils import randn_tensor  # noqa: E402

__all__ = ["NonNormalScheduler", "DiffusersUNet", "NonNormalNet", "load_pretrained", "export_run",
           "evaluate_pretrained", "timestep_to_t", "t_to_timestep", "coupled_increments"]

EXPORT_INFO = "nonnormal.json"  # written by export_run beside model_index.json: the run's config
EXPORT_FORMAT = "nonnormal-diffusers-export-1"
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


# ----- the one time map -----------------------------------------------------------------------
def timestep_to_t(timestep, num_train_timesteps: int):
    """nonnormal's time ``t = (k + 1) / N`` of diffusers' integer timestep ``k`` (``k = -1``: ``t = 0``)."""
    return (timestep + 1) / num_train_timesteps


def t_to_timestep(t, num_train_timesteps: int):
    """diffusers' (here fractional) timestep ``k = t N - 1`` of nonnormal's time ``t``; inverse of :func:`timestep_to_t`."""
    return t * num_train_timesteps - 1


# ----- coupled increments ---------------------------------------------------------------------
def coupled_increments(law, z: torch.Tensor) -> torch.Tensor:
    """The standardized increments of ``law`` as a function of standard normal draws ``z``.

    ``law.icdf(Phi(z))``: ``Phi(z)`` is uniform, so this is an exact draw of the law, and every law
    fed the same ``z`` is coupled (the nonnormal convention of one tensor of uniforms for all laws).
    The Gaussian law returns ``z`` itself, bit for bit. Symmetric laws are evaluated on the lower
    tail and mirrored, which keeps both tails accurate in float64.
    """
    law = increments.get(law)
    if law.spec == "gaussian":
        return z
    z64 = z.to(torch.float64)
    if law.symmetric:
        w = law.icdf(torch.special.ndtr(-z64.abs()).clamp(min=2.0**-60))
        out = torch.where(z64 > 0, -w, w)
    else:
        out = law.icdf(torch.special.ndtr(z64).clamp(2.0**-60, 1 - 2.0**-53))
    return out.to(z.dtype)


class _DiscreteLevels(schedules.Schedule):
    """A diffusers model's discrete noise levels as a continuous VP schedule (for the euler rule).

    As ``ddpm-linear``: ``c(t) = -log alpha_t^2`` is piecewise linear between the nodes
    ``c((k + 1) / N) = -log alphas_cumprod[k]`` and ``c(0) = 0``.
    """

    name = "diffusers-levels"

    def __init__(self, alphas_cumprod: torch.Tensor):
        ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64).cpu()
        self.steps = ac.numel()
        self._c = torch.cat([torch.zeros(1, dtype=torch.float64), -torch.log(ac)])
        self.t_min = 1.0 / self.steps

    @property
    def params(self):
        return {"steps": self.steps}

    def _c_and_slope(self, t):
        N, c = self.steps, self._c.to(t.device)
        i = (t * N + 1e-9).floor().clamp(0, N - 1).long()
        slope = (c[i + 1] - c[i]) * N
        return c[i] + slope * (t - i.to(t.dtype) / N), slope

    def gamma(self, t):
        return torch.log(torch.expm1(self._c_and_slope(t)[0]))

    def gamma_prime(self, t):
        c, slope = self._c_and_slope(t)
        return slope / -torch.expm1(-c)


def _load_plugins(plugins) -> None:
    if plugins:
        from .. import plugins as plugins_lib

        plugins_lib.load(list(plugins))


# ----- 1. the scheduler -----------------------------------------------------------------------
class NonNormalScheduler(DDPMScheduler):
    """``DDPMScheduler`` whose step noise has any increment law.

    Config: every key of ``DDPMScheduler`` plus

    - ``law``: an increment-law spec (``"laplace"``, ``"student_t:nu=6"``), default ``"gaussian"``;
    - ``rule``: ``"posterior"`` (DDPM's ancestral step, the noise law swapped) or ``"euler"`` (the
      paper's reverse walk located at the reverse-SDE drift, scaled ``g(t) sqrt(dt)``);
    - ``schedule``: optional nonnormal schedule spec (``"vdm"``): when set, the noise levels are
      ``alpha_t^2`` of that schedule at ``t = (k + 1) / N`` instead of the betas;
    - ``plugins``: optional list of nonnormal plugin modules to import (laws or schedules of your own).

    ``step`` draws ``z = randn_tensor(shape, generator)`` exactly where DDPM does and uses
    :func:`coupled_increments` of ``z``: the Gaussian posterior scheduler reproduces DDPM, and one
    generator seed couples every law. As in DDPM, the last step (to the clean image) adds no noise.
    ``add_noise`` is DDPM's: the forward marginal is Gaussian for every law (the invariance limit).
    """

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas=None, variance_type: str = "fixed_small",
                 clip_sample: bool = True, prediction_type: str = "epsilon", thresholding: bool = False,
                 dynamic_thresholding_ratio: float = 0.995, clip_sample_range: float = 1.0,
                 sample_max_value: float = 1.0, timestep_spacing: str = "leading", steps_offset: int = 0,
                 rescale_betas_zero_snr: bool = False, law: str = "gaussian", rule: str = "posterior",
                 schedule: str | None = None, plugins: list[str] | None = None):
        from ..walk import check_rule

        _load_plugins(plugins)
        self.law = increments.get(law)
        check_rule(rule)
        super().__init__(num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
                         beta_schedule=beta_schedule, trained_betas=trained_betas, variance_type=variance_type,
                         clip_sample=clip_sample, prediction_type=prediction_type, thresholding=thresholding,
                         dynamic_thresholding_ratio=dynamic_thresholding_ratio, clip_sample_range=clip_sample_range,
                         sample_max_value=sample_max_value, timestep_spacing=timestep_spacing,
                         steps_offset=steps_offset, rescale_betas_zero_snr=rescale_betas_zero_snr)
        if schedule is not None:
            s = schedules.get(schedule)
            ac = s.alpha(timestep_to_t(torch.arange(num_train_timesteps, dtype=torch.float64),
                                       num_train_timesteps)) ** 2
            # float64: 1 - alphas_cumprod loses most digits in float32 where the noise is small
            self.alphas_cumprod = ac
            self.alphas = ac / torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
            self.betas = 1.0 - self.alphas
            self.one = torch.tensor(1.0, dtype=torch.float64)
            self.continuous_schedule = s
        else:
            self.continuous_schedule = _DiscreteLevels(self.alphas_cumprod)

    def increments(self, z: torch.Tensor) -> torch.Tensor:
        """This scheduler's law's standardized increments for the normal draws ``z``."""
        return coupled_increments(self.law, z)

    def _euler_coefficients(self, t, prev_t) -> tuple[float, float, float]:
        """``(c_x, c_eps, c_z)`` of the euler rule from timestep ``t`` to ``prev_t`` (as nonnormal's walk)."""
        s, N = self.continuous_schedule, self.config.num_train_timesteps
        tau = torch.tensor(float(timestep_to_t(int(t), N)), dtype=torch.float64)
        dt = tau - float(timestep_to_t(int(prev_t), N))
        g = s.g(tau)
        return float(1 - s.f(tau) * dt), float(-g**2 * dt / s.sigma(tau)), float(g * dt.sqrt())

    def step(self, model_output: torch.Tensor, timestep: int, sample: torch.Tensor,
             generator: torch.Generator | None = None, return_dict: bool = True):
        """One reverse step from ``timestep``: DDPM's ``step`` with the noise of ``law`` (and ``rule``)."""
        t = timestep
        prev_t = self.previous_timestep(t)
        if model_output.shape[1] == sample.shape[1] * 2 and self.variance_type in ["learned", "learned_range"]:
            model_output, predicted_variance = torch.split(model_output, sample.shape[1], dim=1)
        else:
            predicted_variance = None

        # 1. alphas, betas (as DDPMScheduler.step, so that the Gaussian posterior case is DDPM exactly)
        alpha_prod_t = self.alphas_cumprod[t]
        alpha_prod_t_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.one
        beta_prod_t = 1 - alpha_prod_t
        beta_prod_t_prev = 1 - alpha_prod_t_prev
        current_alpha_t = alpha_prod_t / alpha_prod_t_prev
        current_beta_t = 1 - current_alpha_t

        # 2. predicted x_0
        if self.config.prediction_type == "epsilon":
            pred_original_sample = (sample - beta_prod_t ** (0.5) * model_output) / alpha_prod_t ** (0.5)
        elif self.config.prediction_type == "sample":
            pred_original_sample = model_output
        elif self.config.prediction_type == "v_prediction":
            pred_original_sample = (alpha_prod_t**0.5) * sample - (beta_prod_t**0.5) * model_output
        else:
            raise ValueError(f"prediction_type given as {self.config.prediction_type} must be one of `epsilon`, "
                             "`sample` or `v_prediction` for the NonNormalScheduler.")

        # 3. clip or threshold predicted x_0
        if self.config.thresholding:
            pred_original_sample = self._threshold_sample(pred_original_sample)
        elif self.config.clip_sample:
            pred_original_sample = pred_original_sample.clamp(-self.config.clip_sample_range,
                                                              self.config.clip_sample_range)

        # 4./5. the mean of the step
        if self.config.rule == "posterior":
            pred_original_sample_coeff = (alpha_prod_t_prev ** (0.5) * current_beta_t) / beta_prod_t
            current_sample_coeff = current_alpha_t ** (0.5) * beta_prod_t_prev / beta_prod_t
            pred_prev_sample = pred_original_sample_coeff * pred_original_sample + current_sample_coeff * sample
        else:  # euler: x - [f x - g^2 s] dt, with s = -eps / sigma (eps from the clipped x_0)
            eps = (sample - alpha_prod_t ** (0.5) * pred_original_sample) / beta_prod_t ** (0.5)
            c_x, c_eps, c_z = self._euler_coefficients(t, prev_t)
            pred_prev_sample = c_x * sample + c_eps * eps

        # 6. add noise: DDPM's normal draws, through the law's quantile function
        variance = 0
        if t > 0:
            z = randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                             dtype=model_output.dtype)
            variance_noise = self.increments(z)
            if self.config.rule == "euler":
                variance = c_z * variance_noise
            elif self.variance_type == "fixed_small_log":
                variance = self._get_variance(t, predicted_variance=predicted_variance) * variance_noise
            elif self.variance_type == "learned_range":
                variance = self._get_variance(t, predicted_variance=predicted_variance)
                variance = torch.exp(0.5 * variance) * variance_noise
            else:
                variance = (self._get_variance(t, predicted_variance=predicted_variance) ** 0.5) * variance_noise
        pred_prev_sample = pred_prev_sample + variance

        if not return_dict:
            return (pred_prev_sample, pred_original_sample)
        return DDPMSchedulerOutput(prev_sample=pred_prev_sample, pred_original_sample=pred_original_sample)


# ----- 2. UNet2DModel as a nonnormal network --------------------------------------------------
class DiffusersUNet(nn.Module):
    """diffusers' ``UNet2DModel`` as ``eps_theta(x, t)`` (``net.name = "diffusers-unet2d"``).

    The keyword options are ``UNet2DModel``'s own (``sample_size``, ``in_channels`` and
    ``out_channels`` come from the data's shape); ``num_train_timesteps`` is the N of the time map
    ``k = t N - 1`` (keep it equal to ``steps`` of a ``ddpm-linear`` schedule). The timestep
    embedding is diffusers' sinusoidal one ("positional"), evaluated at fractional timesteps.
    """

    def __init__(self, shape: tuple[int, ...], block_out_channels: tuple[int, ...] = (32, 64),
                 layers_per_block: int = 1, down_block_types: tuple[str, ...] = ("DownBlock2D", "AttnDownBlock2D"),
                 up_block_types: tuple[str, ...] = ("AttnUpBlock2D", "UpBlock2D"),
                 mid_block_type: str = "UNetMidBlock2D", norm_num_groups: int = 8, attention_head_dim: int = 8,
                 dropout: float = 0.0, act_fn: str = "silu", flip_sin_to_cos: bool = True, freq_shift: int = 0,
                 center_input_sample: bool = False, downsample_type: str = "conv", upsample_type: str = "conv",
                 resnet_time_scale_shift: str = "default", add_attention: bool = True, norm_eps: float = 1e-5,
                 num_train_timesteps: int = 1000):
        super().__init__()
        if len(shape) != 3:
            raise NonnormalError(f"diffusers-unet2d takes images (channels, height, width), but the data's examples "
                                 f"have shape {tuple(shape)}: use net.name = \"mlp\" for vector data")
        C, H, W = shape
        downs = len(block_out_channels) - 1
        if H % 2**downs or W % 2**downs:
            raise NonnormalError(f"a {H}x{W} image cannot be halved {downs} times: give fewer block_out_channels")
        if not len(block_out_channels) == len(down_block_types) == len(up_block_types):
            raise NonnormalError(f"diffusers-unet2d needs as many down_block_types ({len(down_block_types)}) and "
                                 f"up_block_types ({len(up_block_types)}) as block_out_channels ({len(block_out_channels)})")
        if isinstance(num_train_timesteps, bool) or int(num_train_timesteps) != num_train_timesteps or num_train_timesteps < 2:
            raise NonnormalError(f"diffusers-unet2d num_train_timesteps must be an integer >= 2, got {num_train_timesteps!r}")
        self.shape = tuple(shape)
        self.num_train_timesteps = int(num_train_timesteps)
        self.unet = UNet2DModel(
            sample_size=H if H == W else (H, W), in_channels=C, out_channels=C, block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block, down_block_types=tuple(down_block_types),
            up_block_types=tuple(up_block_types), mid_block_type=mid_block_type, norm_num_groups=norm_num_groups,
            attention_head_dim=attention_head_dim, dropout=dropout, act_fn=act_fn, flip_sin_to_cos=flip_sin_to_cos,
            freq_shift=freq_shift, center_input_sample=center_input_sample, downsample_type=downsample_type,
            upsample_type=upsample_type, resnet_time_scale_shift=resnet_time_scale_shift, add_attention=add_attention,
            norm_eps=norm_eps, time_embedding_type="positional", num_train_timesteps=self.num_train_timesteps)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return _unet_eps(self.unet, x, t, self.num_train_timesteps)


def _unet_eps(unet: nn.Module, x: torch.Tensor, t: torch.Tensor, num_train_timesteps: int) -> torch.Tensor:
    """``unet``'s output at nonnormal's times ``t`` (the UNet sees timesteps ``t N - 1``, in float64)."""
    t = torch.as_tensor(t, device=x.device)
    k = t_to_timestep(t.to(torch.float64 if x.device.type != "mps" else torch.float32), num_train_timesteps)
    return unet(x, k.reshape(-1).expand(x.shape[0])).sample


class NonNormalNet(ModelMixin, ConfigMixin):
    """Any nonnormal network as a diffusers model, so that a ``DDPMPipeline`` can hold it.

    ``forward(sample, timestep)`` takes diffusers' integer timesteps and returns ``.sample``
    (the predicted noise) like ``UNet2DModel``; ``eps(x, t)`` is the network at nonnormal's times.
    """

    @register_to_config
    def __init__(self, net: str = "unet", net_options: dict | None = None, shape: list[int] | None = None,
                 num_train_timesteps: int = 1000, sample_size: int | list[int] = 8, in_channels: int = 1,
                 out_channels: int = 1, plugins: list[str] | None = None):
        super().__init__()
        from .. import nets

        _load_plugins(plugins)
        self.num_train_timesteps = int(num_train_timesteps)
        # (not self.net: ModelMixin looks config keys up before submodules)
        self.network = nets.build(net, tuple(shape or (in_channels, sample_size, sample_size)), **(net_options or {}))

    def eps(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.network(x, t)

    def forward(self, sample: torch.Tensor, timestep, return_dict: bool = True):
        k = torch.as_tensor(timestep, device=sample.device, dtype=torch.float64)
        t = timestep_to_t(k, self.num_train_timesteps).reshape(-1).expand(sample.shape[0]).to(sample.dtype)
        out = self.network(sample, t)
        return UNet2DOutput(sample=out) if return_dict else (out,)


# ----- 3. pretrained models in ----------------------------------------------------------------
class PretrainedEps(nn.Module):
    """A diffusers model as nonnormal's ``eps_model(x, t)``; v- and x0-predictions converted exactly.

    ``v = alpha eps - sigma x0`` gives ``eps = sigma x + alpha v``; an x0-prediction gives
    ``eps = (x - alpha x0) / sigma``, with ``alpha``, ``sigma`` of ``schedule`` at ``t``.
    """

    def __init__(self, model: nn.Module, num_train_timesteps: int, prediction_type: str = "epsilon",
                 schedule=None, channels: int | None = None):
        super().__init__()
        self.model, self.num_train_timesteps, self.prediction_type = model, int(num_train_timesteps), prediction_type
        self.schedule = schedules.get(schedule) if schedule is not None else None
        self.channels = channels  # keep the first `channels` outputs (a learned-variance model's eps half)
        self.levels: int | None = None
        self.info: dict = {}

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if isinstance(self.model, NonNormalNet):
            out = self.model.eps(x, t)
        else:
            out = _unet_eps(self.model, x, t, self.num_train_timesteps)
        if self.channels is not None and out.shape[1] != self.channels:
            out = out[:, : self.channels]
        if self.prediction_type == "epsilon":
            return out
        tt = torch.as_tensor(t, device=x.device, dtype=torch.float64).reshape(-1)
        shape = (-1,) + (1,) * (x.dim() - 1)
        alpha = self.schedule.alpha(tt).to(x.dtype).reshape(shape)
        sigma = self.schedule.sigma(tt).to(x.dtype).reshape(shape)
        if self.prediction_type == "v_prediction":
            return sigma * x + alpha * out
        return (x - alpha * out) / sigma


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise NonnormalError(f"{what} {path} is unreadable ({str(err).splitlines()[0][:100]}): restore the folder") from None
    if not isinstance(data, dict):
        raise NonnormalError(f"{what} {path} is not a JSON object: restore the folder")
    return data


def _schedule_spec(sched: dict, where: Path) -> str:
    """nonnormal's schedule for a diffusers scheduler config: its own noise levels, or a refusal."""
    if sched.get("schedule"):  # a NonNormalScheduler that names a nonnormal schedule
        return str(sched["schedule"])
    if sched.get("trained_betas") is not None:
        raise NonnormalError(f"{where}: the scheduler has trained_betas, which nonnormal's schedules cannot express: "
                             "only linear betas (ddpm-linear) are supported")
    if sched.get("rescale_betas_zero_snr"):
        raise NonnormalError(f"{where}: the scheduler rescales betas to zero terminal SNR, which nonnormal's "
                             "VP schedules cannot express: only plain linear betas (ddpm-linear) are supported")
    kind = sched.get("beta_schedule", "linear")
    if kind != "linear":
        raise NonnormalError(f"{where}: beta_schedule {kind!r} is not supported: only linear betas map to nonnormal's "
                             "ddpm-linear schedule")
    N = int(sched.get("num_train_timesteps", 1000))
    start, end = float(sched.get("beta_start", 1e-4)), float(sched.get("beta_end", 0.02))
    return f"ddpm-linear:beta_start={start!r}:beta_end={end!r}:steps={N}"


def default_diffusion_config(schedule: str, num_train_timesteps: int) -> dict:
    """Sampling defaults for a pretrained DDPM model: Gaussian laws, the posterior rule, T = N steps on
    the ``ddpm`` spacing (the model's own timesteps; a smaller ``T`` keeps to them, rounded)."""
    return {"q": "gaussian", "p": "gaussian", "schedule": schedule, "T": num_train_timesteps, "rule": "posterior",
            "loss": "step", "spacing": "ddpm"}


def make_diffusion(d: dict):
    """``nonnormal.diffusion.Diffusion.from_config(d)``."""
    from ..diffusion import Diffusion

    return Diffusion.from_config(d)


def _folder_parts(path: Path) -> tuple[Path, Path | None, dict | None]:
    """``(unet folder, scheduler config file or None, export info or None)`` of a pipeline or UNet folder."""
    if not path.is_dir():
        raise NonnormalError(f"--pretrained {path}: no such folder: give a local diffusers pipeline folder "
                             "(with model_index.json) or a UNet folder (with config.json)")
    info = _read_json(path / EXPORT_INFO, "export info") if (path / EXPORT_INFO).is_file() else None
    if (path / "model_index.json").is_file():
        index = _read_json(path / "model_index.json", "pipeline index")
        latent = [k for k in ("vae", "vqvae", "text_encoder") if index.get(k)]
        if latent or "unet" not in index:
            kind = index.get("_class_name", "?")
            raise NonnormalError(f"{path} holds a {kind} ({'with ' + latent[0] if latent else 'without a unet'}): only "
                                 "unconditional pixel-space pipelines with a UNet2DModel (DDPMPipeline) are supported")
        sched = path / "scheduler" / "scheduler_config.json"
        return path / "unet", sched if sched.is_file() else None, info
    if (path / "config.json").is_file():
        for sched in (path / "scheduler_config.json", path.parent / "scheduler" / "scheduler_config.json"):
            if sched.is_file():
                return path, sched, info
        return path, None, info
    raise NonnormalError(f"{path} is not a diffusers pipeline or UNet folder (no model_index.json or config.json): "
                         "save one with pipeline.save_pretrained(DIR) or download it first")


def load_pretrained(path, device="cpu", dtype: torch.dtype = torch.float32):
    """``(eps_model, diffusion, shape)`` of a local diffusers pipeline or UNet folder; never downloads.

    ``eps_model(x, t)`` is the model at nonnormal's times (``t = (k + 1) / N``), ``diffusion`` a
    ``nonnormal.diffusion.Diffusion`` with the model's own noise levels (linear betas -> the
    ``ddpm-linear`` schedule with the same beta_start, beta_end and N) and sampling defaults
    (:func:`default_diffusion_config`; a folder written by :func:`export_run` carries its run's),
    ``shape`` the ``(channels, height, width)`` of one image. ``eps_model.levels`` is the data's
    number of levels (256 for an 8-bit image model). ``epsilon`` models are used as they are;
    ``v_prediction`` and ``sample`` are converted exactly; anything else is refused.
    """
    path = Path(path)
    unet_dir, sched_path, info = _folder_parts(path)
    if not (unet_dir / "config.json").is_file():
        raise NonnormalError(f"{unet_dir} has no config.json: the pipeline folder is incomplete; re-save it")
    unet_cfg = _read_json(unet_dir / "config.json", "model config")
    kind = unet_cfg.get("_class_name")
    classes = {"UNet2DModel": UNet2DModel, "NonNormalNet": NonNormalNet}
    if kind not in classes:
        raise NonnormalError(f"{unet_dir} holds a {kind or 'model of unknown class'}: only UNet2DModel (or an "
                             "exported nonnormal network) is supported")
    if unet_cfg.get("class_embed_type") or unet_cfg.get("num_class_embeds"):
        raise NonnormalError(f"{unet_dir} is a class-conditional UNet2DModel: only unconditional models are supported")
    if unet_cfg.get("time_embedding_type", "positional") != "positional":
        raise NonnormalError(f"{unet_dir} uses time_embedding_type {unet_cfg['time_embedding_type']!r}: only "
                             "'positional' embeds nonnormal's fractional timesteps")
    if sched_path is not None:
        sched = _read_json(sched_path, "scheduler config")
    else:
        warnings.warn(f"{path} has no scheduler config: assuming DDPM's defaults (linear betas 1e-4..0.02, "
                      "1000 steps, epsilon prediction)", stacklevel=2)
        sched = {}
    prediction = sched.get("prediction_type", "epsilon")
    if prediction not in PREDICTION_TYPES:
        raise NonnormalError(f"{path}: prediction_type {prediction!r} is not supported: nonnormal needs epsilon "
                             "(v_prediction and sample are converted)")
    if info is not None:
        if info.get("format") != EXPORT_FORMAT:
            raise NonnormalError(f"{path / EXPORT_INFO} has format {info.get('format')!r}, not {EXPORT_FORMAT}: "
                                 "re-export the run with this version")
        _load_plugins(info["config"].get("plugins"))
    _load_plugins(sched.get("plugins"))
    spec = _schedule_spec(sched, sched_path or path)
    N = int(sched.get("num_train_timesteps", 1000))
    try:
        model = classes[kind].from_pretrained(str(unet_dir), local_files_only=True, low_cpu_mem_usage=False)
    except NonnormalError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        raise NonnormalError(f"cannot load the model in {unet_dir} ({str(err).splitlines()[0][:150]}): "
                             "is the folder complete?") from None
    channels = int(unet_cfg.get("in_channels", 3))
    size = unet_cfg.get("sample_size")
    if size is None:
        raise NonnormalError(f"{unet_dir}/config.json has no sample_size: nonnormal needs the image size")
    hw = (int(size), int(size)) if isinstance(size, (int, float)) else tuple(int(s) for s in size)
    out_channels = int(unet_cfg.get("out_channels", channels))
    if out_channels not in (channels, 2 * channels):
        raise NonnormalError(f"{unet_dir}: the model maps {channels} channels to {out_channels}: nonnormal needs the "
                             "noise of every input channel")
    eps = PretrainedEps(model, N, prediction, spec, channels).to(device, dtype).eval().requires_grad_(False)
    if info is not None:
        d = dict(info["config"]["diffusion"])
        shape = tuple(info["shape"])
        eps.levels = info.get("levels")
    else:
        d = default_diffusion_config(spec, N)
        shape = (channels,) + hw
        eps.levels = 256
    eps.info = {"source": str(path), "prediction_type": prediction, "num_train_timesteps": N, "schedule": spec}
    return eps, make_diffusion(d), shape


def pretrained_as_run(path, device="cpu"):
    """:func:`load_pretrained` in the shape of ``load_run``: ``(eps_model, config, state)`` for the CLI.

    ``config`` has the ``diffusion`` section (and the run's plugins for an export); ``state`` the
    example ``shape``, the data's ``levels`` and ``folder``, where samples go by default
    (``runs/pretrained-<name>``: never inside the pretrained folder).
    """
    eps, diffusion, shape = load_pretrained(path, device)
    cfg = {"diffusion": diffusion.to_config(), "plugins": []}
    folder = Path("runs") / f"pretrained-{Path(path).resolve().name}"
    return eps, cfg, {"shape": list(shape), "levels": eps.levels, "step": None, "folder": str(folder)}


def _load_dataset(spec: str):
    from ..data import load

    return load(spec)


def _se(values: torch.Tensor) -> float:
    return float(values.std() / math.sqrt(values.numel())) if values.numel() > 1 else float("nan")


def evaluate_pretrained(path, dataset: str, device="cpu", n_test: int | None = None, n_samples: int | None = None,
                        T: int | None = None, rtol: float = 1e-5, atol: float = 1e-5, batch: int = 500, seed: int = 0,
                        quality: bool = True, progress: bool = False) -> dict:
    """``nonnormal eval --pretrained``: test-set bits/dim of a pretrained model on ``dataset``.

    ``bpd_ode``: the probability-flow likelihood of dequantized test images (Hutchinson trace);
    ``bpd_bound``: the Gaussian bound at ``T``; ``fd``/``kid``: sample quality against the test
    split when the dataset has labels and ``quality``. Test images are mapped to [-1, 1] with
    nonnormal's level centres ``(2j + 1)/L - 1`` (DDPM used ``2j/(L - 1) - 1``: at most half a level apart).
    """
    eps, diffusion, shape = load_pretrained(path, device)
    data = _load_dataset(dataset)
    if tuple(data.shape) != tuple(shape):
        raise NonnormalError(f"the model makes examples of shape {tuple(shape)}, but {data.name} has {tuple(data.shape)}: "
                             "give the dataset the model was trained on")
    if data.levels is None:
        raise NonnormalError(f"{data.name} is continuous: bits/dim of a pretrained image model needs discrete data")
    T = T or diffusion.T
    x = data.unit("test")
    x = (x if n_test is None else x[:n_test]).to(device, torch.float32)
    g = torch.Generator(device).manual_seed(seed)
    out: dict[str, Any] = {"pretrained": str(path), "dataset": data.name, "schedule": eps.info["schedule"], "T": T,
                           "n_test": x.shape[0]}
    bpd, nfe = [], 0
    for i in range(0, x.shape[0], batch):
        b, n = diffusion.bits_per_dim(eps, x[i:i + batch], data.levels, generator=g, trace="hutchinson", rtol=rtol,
                                      atol=atol)
        bpd.append(b.cpu())
        nfe += n
    bpd = torch.cat(bpd)
    out.update(bpd_ode=float(bpd.mean()), bpd_ode_se=_se(bpd), ode_nfe=nfe)
    bound = make_diffusion({**diffusion.to_config(), "T": T})
    totals = [bound.bound_bits_per_dim(eps, x[i:i + batch], data.levels, generator=g, dequantized=True)["total"].cpu()
              for i in range(0, x.shape[0], batch)]
    total = torch.cat(totals)
    out.update(bpd_bound=float(total.mean()), bpd_bound_se=_se(total))
    labels = getattr(data, "train_labels", None)
    if labels is None and hasattr(data, "labels"):
        try:
            labels = data.labels("train")
        except Exception:  # noqa: BLE001 - no labels: no quality
            labels = None
    if quality and labels is not None:
        from ..metrics import features as quality_lib
        from ..data import levels_to_unit, unit_to_levels

        features = quality_lib.features_for(data, progress=progress)
        n = n_samples or x.shape[0]
        xs = diffusion.sample(eps, (n,) + tuple(shape), seed=seed, T=T, device=device, progress=progress).cpu()
        xs = levels_to_unit(unit_to_levels(xs, data.levels), data.levels).float()
        real, fake = features(data.unit("test")), features(xs)
        kid, kid_std = quality_lib.kernel_distance(real, fake, seed=seed)
        out.update(fd=quality_lib.frechet_distance(real, fake), kid=kid, kid_std=kid_std, n_samples=n)
    return out


# ----- 4. runs out ----------------------------------------------------------------------------
def _load_run(run):
    from ..runs import load_run

    return load_run(run, "cpu")


def export_run(run, out, force: bool = False) -> Path:
    """Write the trained run ``run`` as a diffusers ``DDPMPipeline`` folder ``out`` (EMA weights).

    A ``diffusers-unet2d`` run exports its ``UNet2DModel``; any other network is wrapped as
    :class:`NonNormalNet`. The scheduler is a :class:`NonNormalScheduler` with the run's law p,
    rule and noise levels (``ddpm-linear`` as DDPM betas, any other schedule by name), no clipping.
    ``nonnormal.json`` keeps the run's config, so ``load_pretrained(out)`` (and ``nonnormal sample
    --pretrained out``) samples exactly as ``nonnormal sample`` of the run, seed for seed.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NonnormalError(f"--diffusers {out} is a file: give a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise NonnormalError(f"{out} is not empty: pass --force to replace it or choose another folder")
    model, cfg, state = _load_run(run)
    shape = tuple(state["shape"])
    if len(shape) != 3:
        raise NonnormalError(f"the run's examples have shape {shape}: diffusers pipelines hold image models only")
    d = cfg["diffusion"]
    s = schedules.get(d["schedule"])
    name = cfg["net"]["name"]
    if name == "diffusers-unet2d":
        N = int(cfg["net"].get("num_train_timesteps", 1000))
    else:
        N = s.steps if isinstance(s, schedules.DDPMLinear) else 1000
    sched: dict[str, Any] = {"num_train_timesteps": N, "clip_sample": False, "law": d["p"], "rule": d["rule"],
                             "plugins": list(cfg.get("plugins") or []) or None}
    if isinstance(s, schedules.DDPMLinear):
        if s.steps != N:
            raise NonnormalError(f"the run's ddpm-linear schedule has {s.steps} steps but its UNet maps time with "
                                 f"num_train_timesteps={N}: they must agree to export to diffusers")
        sched.update(beta_start=s.beta_start, beta_end=s.beta_end, beta_schedule="linear")
    else:
        sched["schedule"] = d["schedule"]
    scheduler = NonNormalScheduler(**sched)
    if name == "diffusers-unet2d":
        unet = model.unet
    else:
        C, H, W = shape
        options = {k: v for k, v in cfg["net"].items() if k != "name"}
        unet = NonNormalNet(net=name, net_options=options, shape=list(shape), num_train_timesteps=N,
                            sample_size=H if H == W else [H, W], in_channels=C, out_channels=C,
                            plugins=list(cfg.get("plugins") or []) or None)
        unet.network.load_state_dict(model.state_dict())
    pipe = DDPMPipeline(unet=unet.float().eval(), scheduler=scheduler)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        pipe.save_pretrained(str(tmp), safe_serialization=True)
        info = {"format": EXPORT_FORMAT, "run": str(Path(run).resolve()), "step": state.get("step"),
                "shape": list(shape), "levels": state.get("levels"), "config": cfg}
        (tmp / EXPORT_INFO).write_text(json.dumps(info, indent=1) + "\n")
        (tmp / "README.md").write_text(_model_card(cfg, state, N))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _model_card(cfg: dict, state: dict, N: int) -> str:
    d = cfg["diffusion"]
    return f"""# nonnormal run exported to diffusers

Trained with nonnormal: data {cfg['data']['dataset']}, network {cfg['net']['name']}, schedule {d['schedule']},
q = {d['q']}, p = {d['p']}, T = {d['T']}, rule {d['rule']}, {state.get('step')} steps (EMA weights).

```python
from diffusers import DiffusionPipeline
import torch
pipe = DiffusionPipeline.from_pretrained("THIS_FOLDER")   # needs: pip install 'nonnormal[diffusers]'
images = pipe(batch_size=16, generator=torch.manual_seed(0), num_inference_steps={min(N, d['T'])}).images
```

The scheduler is nonnormal's NonNormalScheduler (law {d['p']}); swap the law with
`pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, law="laplace")`.
`nonnormal sample --pretrained THIS_FOLDER --seed 0` reproduces `nonnormal sample RUN --seed 0` exactly.
"""
