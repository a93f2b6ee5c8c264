"""Pretrained diffusers models in: a local pipeline or UNet folder as nonnormal's ``(eps_model, diffusion,
shape)`` (:func:`load_pretrained`), in the shape of a run for the CLI (:func:`pretrained_as_run`), and
its test-set bits/dim (:func:`evaluate_pretrained`)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DModel
from torch import nn

from ... import schedules
from ...errors import NonnormalError
from .common import EXPORT_FORMAT, EXPORT_INFO, load_plugins
from .nets import NonNormalNet, unet_eps

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


class PretrainedEps(nn.Module):
    """A diffusers model as nonnormal's ``eps_model(x, t)``; v- and x0-predictions converted exactly.

    ``v = alpha eps - sigma x0`` gives ``eps = sigma x + alpha v``; an x0-prediction gives
    ``eps = (x - alpha x0) / sigma``, with ``alpha``, ``sigma`` of ``schedule`` at ``t``.
    """

    def __init__(
        self,
        model: nn.Module,
        num_train_timesteps: int,
        prediction_type: str = "epsilon",
        schedule=None,
        channels: int | None = None,
    ):
        super().__init__()
        self.model, self.num_train_timesteps, self.prediction_type = model, int(num_train_timesteps), prediction_type
        self.schedule = schedules.get(schedule) if schedule is not None else None
        self.channels = channels  # keep the first `channels` outputs (a learned-variance model's eps half)
        self.levels: int | None = None
        self.info: dict = {}

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        if isinstance(self.model, NonNormalNet):
            out = self.model.eps(x, t, **({} if class_labels is None else {"class_labels": class_labels}))
        else:
            rows = getattr(getattr(self.model, "config", None), "num_class_embeds", None)
            if class_labels is None and rows:  # a class-conditional UNet2DModel: its last row, the null label of ours
                class_labels = torch.full((x.shape[0],), rows - 1, dtype=torch.long, device=x.device)
            out = unet_eps(self.model, x, t, self.num_train_timesteps, class_labels)
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
        raise NonnormalError(
            f"{what} {path} is unreadable ({str(err).splitlines()[0][:100]}): restore the folder"
        ) from None
    if not isinstance(data, dict):
        raise NonnormalError(f"{what} {path} is not a JSON object: restore the folder")
    return data


def _schedule_spec(sched: dict, where: Path) -> str:
    """nonnormal's schedule for a diffusers scheduler config: its own noise levels, or a refusal."""
    if sched.get("schedule"):  # a NonNormalScheduler that names a nonnormal schedule
        return str(sched["schedule"])
    if sched.get("trained_betas") is not None:
        raise NonnormalError(
            f"{where}: the scheduler has trained_betas, which nonnormal's schedules cannot express: "
            "only linear betas (ddpm-linear) are supported"
        )
    if sched.get("rescale_betas_zero_snr"):
        raise NonnormalError(
            f"{where}: the scheduler rescales betas to zero terminal SNR, which nonnormal's "
            "VP schedules cannot express: only plain linear betas (ddpm-linear) are supported"
        )
    kind = sched.get("beta_schedule", "linear")
    if kind != "linear":
        raise NonnormalError(
            f"{where}: beta_schedule {kind!r} is not supported: only linear betas map to nonnormal's "
            "ddpm-linear schedule"
        )
    N = int(sched.get("num_train_timesteps", 1000))
    start, end = float(sched.get("beta_start", 1e-4)), float(sched.get("beta_end", 0.02))
    return f"ddpm-linear:beta_start={start!r}:beta_end={end!r}:steps={N}"


def default_diffusion_config(schedule: str, num_train_timesteps: int) -> dict:
    """Sampling defaults for a pretrained DDPM model: Gaussian laws, the posterior rule, T = N steps on
    the ``ddpm`` spacing (the model's own timesteps; a smaller ``T`` keeps to them, rounded)."""
    return {
        "q": "gaussian",
        "p": "gaussian",
        "schedule": schedule,
        "T": num_train_timesteps,
        "rule": "posterior",
        "loss": "step",
        "spacing": "ddpm",
    }


def make_diffusion(d: dict):
    """``nonnormal.diffusion.Diffusion.from_config(d)``."""
    from ...diffusion import Diffusion

    return Diffusion.from_config(d)


def _folder_parts(path: Path) -> tuple[Path, Path | None, dict | None]:
    """``(unet folder, scheduler config file or None, export info or None)`` of a pipeline or UNet folder."""
    if not path.is_dir():
        raise NonnormalError(
            f"--pretrained {path}: no such folder: give a local diffusers pipeline folder "
            "(with model_index.json) or a UNet folder (with config.json)"
        )
    info = _read_json(path / EXPORT_INFO, "export info") if (path / EXPORT_INFO).is_file() else None
    if (path / "model_index.json").is_file():
        index = _read_json(path / "model_index.json", "pipeline index")
        latent = [k for k in ("vae", "vqvae", "text_encoder") if index.get(k)]
        if latent or "unet" not in index:
            kind = index.get("_class_name", "?")
            raise NonnormalError(
                f"{path} holds a {kind} ({'with ' + latent[0] if latent else 'without a unet'}): only "
                "unconditional pixel-space pipelines with a UNet2DModel (DDPMPipeline) are supported"
            )
        sched = path / "scheduler" / "scheduler_config.json"
        return path / "unet", sched if sched.is_file() else None, info
    if (path / "config.json").is_file():
        for sched in (path / "scheduler_config.json", path.parent / "scheduler" / "scheduler_config.json"):
            if sched.is_file():
                return path, sched, info
        return path, None, info
    raise NonnormalError(
        f"{path} is not a diffusers pipeline or UNet folder (no model_index.json or config.json): "
        "save one with pipeline.save_pretrained(DIR) or download it first"
    )


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
        raise NonnormalError(
            f"{unet_dir} holds a {kind or 'model of unknown class'}: only UNet2DModel (or an "
            "exported nonnormal network) is supported"
        )
    exported_classes = int(((info or {}).get("config") or {}).get("net", {}).get("num_classes") or 0)
    ours = not unet_cfg.get("class_embed_type") and unet_cfg.get("num_class_embeds") == exported_classes + 1
    if (unet_cfg.get("class_embed_type") or unet_cfg.get("num_class_embeds")) and not ours:
        raise NonnormalError(
            f"{unet_dir} is a class-conditional UNet2DModel: only unconditional models (and nonnormal's "
            "exports of class-conditional runs, whose last class row is the null label) are supported"
        )
    if unet_cfg.get("time_embedding_type", "positional") != "positional":
        raise NonnormalError(
            f"{unet_dir} uses time_embedding_type {unet_cfg['time_embedding_type']!r}: only "
            "'positional' embeds nonnormal's fractional timesteps"
        )
    if sched_path is not None:
        sched = _read_json(sched_path, "scheduler config")
    else:
        warnings.warn(
            f"{path} has no scheduler config: assuming DDPM's defaults (linear betas 1e-4..0.02, "
            "1000 steps, epsilon prediction)",
            stacklevel=2,
        )
        sched = {}
    prediction = sched.get("prediction_type", "epsilon")
    if prediction not in PREDICTION_TYPES:
        raise NonnormalError(
            f"{path}: prediction_type {prediction!r} is not supported: nonnormal needs epsilon "
            "(v_prediction and sample are converted)"
        )
    if info is not None:
        if info.get("format") != EXPORT_FORMAT:
            raise NonnormalError(
                f"{path / EXPORT_INFO} has format {info.get('format')!r}, not {EXPORT_FORMAT}: "
                "re-export the run with this version"
            )
        load_plugins(info["config"].get("plugins"), path)
    load_plugins(sched.get("plugins"), sched_path.parent if sched_path is not None else path)
    spec = _schedule_spec(sched, sched_path or path)
    N = int(sched.get("num_train_timesteps", 1000))

    from diffusers.utils import logging as diffusers_logging

    verbosity = diffusers_logging.get_verbosity()
    try:  # diffusers' warnings and log lines about a broken folder would add lines to our one-line error
        diffusers_logging.set_verbosity_error()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = classes[kind].from_pretrained(str(unet_dir), local_files_only=True, low_cpu_mem_usage=False)
    except NonnormalError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        raise NonnormalError(
            f"cannot load the model in {unet_dir} ({str(err).splitlines()[0][:150]}): is the folder complete?"
        ) from None
    finally:
        diffusers_logging.set_verbosity(verbosity)
    channels = int(unet_cfg.get("in_channels", 3))
    size = unet_cfg.get("sample_size")
    if size is None:
        raise NonnormalError(f"{unet_dir}/config.json has no sample_size: nonnormal needs the image size")
    hw = (int(size), int(size)) if isinstance(size, (int, float)) else tuple(int(s) for s in size)
    out_channels = int(unet_cfg.get("out_channels", channels))
    if out_channels not in (channels, 2 * channels):
        raise NonnormalError(
            f"{unet_dir}: the model maps {channels} channels to {out_channels}: nonnormal needs the "
            "noise of every input channel"
        )
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


def pretrained_folder(path) -> Path:
    """Where nonnormal writes for a pretrained folder (samples, eval.json, ``kernels/`` of ``nonnormal fit``):
    ``runs/pretrained-<name>``, never inside the pretrained folder."""
    return Path("runs") / f"pretrained-{Path(path).resolve().name}"


def pretrained_as_run(path, device="cpu"):
    """:func:`load_pretrained` in the shape of ``load_run``: ``(eps_model, config, state)`` for the CLI.

    ``config`` has the ``diffusion`` section (and the run's plugins for an export); ``state`` the
    example ``shape``, the data's ``levels`` and ``folder``, where samples go by default
    (:func:`pretrained_folder`).
    """
    eps, diffusion, shape = load_pretrained(path, device)
    cfg = {"diffusion": diffusion.to_config(), "plugins": []}
    folder = pretrained_folder(path)
    return eps, cfg, {"shape": list(shape), "levels": eps.levels, "step": None, "folder": str(folder)}


def _load_dataset(spec: str):
    from ...data import load

    return load(spec)


def evaluate_pretrained(path, dataset: str, device="cpu", options=None, **fields) -> dict:
    """``nonnormal eval --pretrained``: test-set bits/dim and sample metrics of a pretrained model on ``dataset``.

    ``options``: a :class:`nonnormal.evaluate.EvalOptions`, as for :func:`nonnormal.evaluate.evaluate_run`
    (``fields`` replace its fields): the grid (``T``, ``spacing``), the sampler and its options (a kernel
    ``"fitted"`` is read from :func:`pretrained_folder`, where ``nonnormal fit --pretrained`` writes it),
    the ODE's. The engine of ``nonnormal eval`` (:func:`nonnormal.evaluate.score_model`): ``bpd_ode``, the
    probability-flow likelihood of dequantized test images (Hutchinson trace); ``bpd_bound``, the
    Gaussian bound at ``T``; with ``quality``, every sample metric of the metrics table (FD and KID
    when the dataset has labels), and what was skipped and why; ``sample_nfe``, the sampler's model calls
    per image. Test images are mapped to [-1, 1] with nonnormal's level centres ``(2j + 1)/L - 1`` (DDPM
    used ``2j/(L - 1) - 1``: at most half a level apart).
    """
    from dataclasses import replace

    from ...evaluate import EvalOptions, score_model

    o = replace(options or EvalOptions(), **fields)
    o.check()  # an unknown sampler or option: one line, before any work
    eps, diffusion, shape = load_pretrained(path, device)
    grid = {k: v for k, v in (("T", o.T), ("spacing", o.spacing)) if v}
    diffusion = make_diffusion({**diffusion.to_config(), **grid})
    keywords, sample_info = o.sampling(diffusion, pretrained_folder(path), f"--pretrained {path} --dataset {dataset}")
    data = _load_dataset(dataset)
    if tuple(data.shape) != tuple(shape):
        raise NonnormalError(
            f"the model makes examples of shape {tuple(shape)}, but {data.name} has {tuple(data.shape)}: "
            "give the dataset the model was trained on"
        )
    if data.levels is None:
        raise NonnormalError(f"{data.name} is continuous: bits/dim of a pretrained image model needs discrete data")
    x = data.unit("test")
    x = (x if o.n_test is None else x[: o.n_test]).to(device, torch.float32)
    ode_options = o.ode_options()
    out: dict[str, Any] = {
        "pretrained": str(path),
        "dataset": data.name,
        "schedule": eps.info["schedule"],
        "T": diffusion.T,
        "spacing": diffusion.spacing,
        "sampler": o.sampler,
        "ode_method": ode_options["method"],
        "ode_steps": ode_options["steps"],
        "n_test": x.shape[0],
        **sample_info,
    }
    draw = o.draw(eps, diffusion, shape, keywords, out, device=device, dtype=torch.float32)
    out.update(
        score_model(
            eps,
            diffusion,
            data,
            x,
            draw,
            dequantized=True,
            ode_options=ode_options,
            n_samples=o.n_samples,
            batch=o.batch,
            seed=o.seed,
            quality=o.quality,
            progress=o.progress,
            device=device,
        )
    )
    return out
