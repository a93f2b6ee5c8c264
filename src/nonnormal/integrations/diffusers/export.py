"""Trained runs out: :func:`export_run` writes a run as a diffusers ``DDPMPipeline`` folder."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from diffusers import DDPMPipeline

from ... import schedules
from ...errors import NonnormalError
from .common import EXPORT_FORMAT, EXPORT_INFO
from .nets import NonNormalNet
from .scheduler import NonNormalScheduler


def _load_run(run):
    from ...runs import load_run

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
    run_path, target = Path(run).resolve(), out.resolve()
    if target == run_path or target in run_path.parents:
        raise NonnormalError(
            f"--diffusers {out} is the run or holds it: --force would delete the run; choose another folder"
        )
    if (
        out.is_dir()
        and any(out.iterdir())
        and not (out / EXPORT_INFO).is_file()
        and not (out / "model_index.json").is_file()
    ):
        raise NonnormalError(
            f"{out} holds files that are not an exported pipeline: --force replaces only an earlier "
            "export; choose another folder"
        )
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
    sched: dict[str, Any] = {
        "num_train_timesteps": N,
        "clip_sample": False,
        "law": d["p"],
        "rule": d["rule"],
        "plugins": list(cfg.get("plugins") or []) or None,
    }
    if isinstance(s, schedules.DDPMLinear):
        if s.steps != N:
            raise NonnormalError(
                f"the run's ddpm-linear schedule has {s.steps} steps but its UNet maps time with "
                f"num_train_timesteps={N}: they must agree to export to diffusers"
            )
        sched.update(beta_start=s.beta_start, beta_end=s.beta_end, beta_schedule="linear")
    else:
        sched["schedule"] = d["schedule"]
    scheduler = NonNormalScheduler(**sched)
    if name == "diffusers-unet2d":
        unet = model.unet
    else:
        C, H, W = shape
        options = {k: v for k, v in cfg["net"].items() if k != "name"}
        unet = NonNormalNet(
            net=name,
            net_options=options,
            shape=list(shape),
            num_train_timesteps=N,
            sample_size=H if H == W else [H, W],
            in_channels=C,
            out_channels=C,
            plugins=list(cfg.get("plugins") or []) or None,
        )
        unet.network.load_state_dict(model.state_dict())
    pipe = DDPMPipeline(unet=unet.float().eval(), scheduler=scheduler)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        pipe.save_pretrained(str(tmp), safe_serialization=True)
        info = {
            "format": EXPORT_FORMAT,
            "run": str(Path(run).resolve()),
            "step": state.get("step"),
            "shape": list(shape),
            "levels": state.get("levels"),
            "config": cfg,
        }
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

Trained with nonnormal: data {cfg["data"]["dataset"]}, network {cfg["net"]["name"]}, schedule {d["schedule"]},
q = {d["q"]}, p = {d["p"]}, T = {d["T"]}, rule {d["rule"]}, {state.get("step")} steps (EMA weights).

```python
from diffusers import DiffusionPipeline
import torch
pipe = DiffusionPipeline.from_pretrained("THIS_FOLDER")   # needs: pip install 'nonnormal[diffusers]'
images = pipe(batch_size=16, generator=torch.manual_seed(0), num_inference_steps={min(N, d["T"])}).images
```

The scheduler is nonnormal's NonNormalScheduler (law {d["p"]}); swap the law with
`pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, law="laplace")`.
`nonnormal sample --pretrained THIS_FOLDER --seed 0` reproduces `nonnormal sample RUN --seed 0` exactly.
"""
