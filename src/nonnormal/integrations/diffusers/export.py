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
from .common import EXPORT_FORMAT, EXPORT_INFO, PLUGIN_DIR, is_plugin_file
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
            schedule=d["schedule"],
        )
        unet.network.load_state_dict(model.state_dict())
    pipe = DDPMPipeline(unet=unet.float().eval(), scheduler=scheduler)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        plugins = _copy_plugins(cfg.get("plugins") or [], tmp)
        if plugins:  # named from each component's folder, so the export can move
            up = [p if not is_plugin_file(p) else f"../{p}" for p in plugins]
            scheduler.register_to_config(plugins=up)
            if isinstance(unet, NonNormalNet):
                unet.register_to_config(plugins=up)
        pipe.save_pretrained(str(tmp), safe_serialization=True)
        info = {
            "format": EXPORT_FORMAT,
            "run": str(Path(run).resolve()),
            "step": state.get("step"),
            "shape": list(shape),
            "levels": state.get("levels"),
            "config": {**cfg, "plugins": plugins},
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


def _copy_plugins(plugins: list[str], folder: Path) -> list[str]:
    """Copy the run's plugin files into ``folder/plugins``; their specs relative to ``folder`` (modules as they are)."""
    out: list[str] = []
    for spec in plugins:
        if not is_plugin_file(spec):
            out.append(spec)
            continue
        src = Path(spec)
        if not src.is_file():
            raise NonnormalError(f"the run's plugin file {src} is gone: restore it to export the run")
        (folder / PLUGIN_DIR).mkdir(exist_ok=True)
        name, i = src.name, 1
        while (folder / PLUGIN_DIR / name).exists():
            i += 1
            name = f"{src.stem}_{i}.py"
        shutil.copyfile(src, folder / PLUGIN_DIR / name)
        out.append(f"{PLUGIN_DIR}/{name}")
    return out


LOAD_LINE = 'pipe = DiffusionPipeline.from_pretrained("path/to/this/folder")'


def _model_card(cfg: dict, state: dict, N: int) -> str:
    d = cfg["diffusion"]
    return f"""# nonnormal run exported to diffusers

Trained with nonnormal: data {cfg["data"]["dataset"]}, network {cfg["net"]["name"]}, schedule {d["schedule"]},
q = {d["q"]}, p = {d["p"]}, T = {d["T"]}, rule {d["rule"]}, {state.get("step")} steps (EMA weights).

```python
import torch
from diffusers import DiffusionPipeline

import nonnormal.integrations.diffusers  # noqa: F401  (pip install 'nonnormal[diffusers]'): diffusers finds our classes

{LOAD_LINE}
images = pipe(batch_size=16, generator=torch.manual_seed(0), num_inference_steps={min(N, d["T"])}).images
```

diffusers loads classes from other libraries only once they are imported, hence the import line.
The scheduler is nonnormal's NonNormalScheduler (law {d["p"]}); swap the law with
`pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, law="laplace")`.
`nonnormal sample --pretrained THIS_FOLDER --seed 0` reproduces `nonnormal sample RUN --seed 0` exactly.
The run's plugin files, if any, are copied into `plugins/`: the folder can move.

Known limit: diffusers' own `DDPMScheduler.from_pretrained(FOLDER, subfolder="scheduler")` ignores the
law (it only logs a warning about unused config keys) and samples Gaussian steps; for a schedule other than
ddpm-linear it fails (the beta keys are null). Load the scheduler with nonnormal's class:
`NonNormalScheduler.from_pretrained(FOLDER, subfolder="scheduler")` (from `nonnormal.integrations.diffusers`).
"""
