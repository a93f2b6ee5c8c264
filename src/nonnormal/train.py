"""The training loop: AdamW with warmup, gradient clipping, EMA, optional bf16 autocast,
atomic checkpoints with exact resume, metrics.jsonl, and data parallelism under ``torchrun``.

A run lives in one folder: ``config.toml`` (the resolved config), ``checkpoint.safetensors`` +
``checkpoint.json`` and ``metrics.jsonl``. Everything random in a step (batch indices,
dequantization, the loss's step and noise draws) comes from one CPU generator whose state is in
the checkpoint, and is drawn for the *global* batch on every process, each process keeping its
slice: two processes give the same updates as one process with the same global batch (with
dropout 0: dropout masks come from each process's own global RNG, seeded by seed + rank).
Drawing on the CPU makes a run's randomness the same on every device; on CUDA, resume is exact
up to cuDNN's non-deterministic kernels.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import checkpoint, config as config_lib
from .data import dequantize, levels_to_unit
from .errors import NonnormalError

CHECKPOINT = "checkpoint.safetensors"
# keys that may change when a run is resumed (the rest must match the checkpoint's config)
RESUMABLE = {("train", "steps"), ("train", "checkpoint_every"), ("train", "log_every"), ("train", "device")}


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise NonnormalError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise NonnormalError(f"device {name!r} is not supported: use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise NonnormalError(f"device {name!r} asked for, but this torch has no CUDA device: use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise NonnormalError(f"device {name!r} does not exist: this machine has {torch.cuda.device_count()} GPU(s)")
    return device


def load_data(cfg: dict):
    from . import datasets

    return datasets.load(cfg["data"]["dataset"], seed=cfg["data"]["split_seed"])


def build_model(cfg: dict, shape) -> nn.Module:
    from .nets import build

    options = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg["net"].items() if k != "name"}
    return build(cfg["net"]["name"], shape, **options)


def build_loss(cfg: dict):
    from .losses import ContinuousTimeLoss, StepKLLoss

    d = cfg["diffusion"]
    if d["loss"] == "continuous":
        return ContinuousTimeLoss(d["schedule"], d["q"], d["p"])
    return StepKLLoss(d["schedule"], d["T"], d["q"], d["p"], d["rule"])


def learning_rate(cfg: dict, step: int) -> float:
    """Linear warmup to ``lr``, then constant or a cosine decay to 10% at the last step."""
    t = cfg["train"]
    lr = t["lr"] * min(1.0, (step + 1) / t["warmup"]) if t["warmup"] else t["lr"]
    if t["decay"] == "cosine" and step >= t["warmup"]:
        frac = (step - t["warmup"]) / max(1, t["steps"] - t["warmup"])
        lr *= 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
    return lr


class Batches:
    """The random inputs of one step for the global batch: data (dequantized) and the loss's draws."""

    def __init__(self, data: torch.Tensor, levels: int | None, dequant: bool, loss, batch: int,
                 generator: torch.Generator, device: torch.device, dtype: torch.dtype = torch.float32):
        self.data, self.levels, self.dequant, self.loss, self.dtype = data, levels, dequant, loss, dtype
        self.batch, self.generator, self.device = batch, generator, device

    def next(self) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        g = self.generator  # on the CPU: the same stream on every device
        idx = torch.randint(0, self.data.shape[0], (self.batch,), generator=g)
        x0 = self.data[idx]
        if self.levels is not None:
            x0 = levels_to_unit(x0, self.levels)
        x0 = x0.to(self.dtype)
        if self.levels is not None and self.dequant:
            x0 = dequantize(x0, self.levels, g)
        draws = self.loss.draw(x0.shape, g, None, x0.dtype)
        return x0.to(self.device), tuple(d.to(self.device) for d in draws)


class _Distributed:
    """Rank, world size and the process group when launched by ``torchrun`` (WORLD_SIZE > 1)."""

    def __init__(self, device: torch.device):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.active = self.world > 1
        if self.active and not torch.distributed.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            torch.distributed.init_process_group(backend)

    def local_slice(self, batch: int) -> slice:
        if batch % self.world:
            raise NonnormalError(f"train.batch={batch} does not split over {self.world} processes: make it a multiple")
        n = batch // self.world
        return slice(self.rank * n, (self.rank + 1) * n)


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list]:
    sd = opt.state_dict()
    tensors = {f"opt.{i}.{k}": (v if torch.is_tensor(v) else torch.tensor(v))
               for i, st in sd["state"].items() for k, v in st.items()}
    return tensors, sd["param_groups"]


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict, groups: list) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, v in tensors.items():
        if name.startswith("opt."):
            _, i, k = name.split(".", 2)
            state.setdefault(int(i), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": groups})


def _check_resume(cfg: dict, saved: dict, run: Path) -> None:
    for section, table in saved.items():
        for key, value in table.items():
            if (section, key) not in RESUMABLE and cfg[section][key] != value:
                raise NonnormalError(f"--resume with {section}.{key}={cfg[section][key]!r}, but {run} was trained "
                                     f"with {value!r}: only train.steps, checkpoint_every, log_every and device may change")


def train(cfg: dict, run: str | Path, resume: bool = False, progress: bool = True,
          stop_at: int | None = None) -> dict[str, Any]:
    """Train (or, with ``resume``, continue) the run in folder ``run``; returns the final state.

    ``stop_at`` stops early after that step with a checkpoint, as an interruption would.
    """
    from tqdm.auto import tqdm

    run = Path(run)
    ckpt_path = run / CHECKPOINT
    data = load_data(cfg)
    cfg = {**cfg, "data": {**cfg["data"], "dataset": data.name}}  # canonical spec: absolute paths
    if resume:
        tensors, state = checkpoint.load(ckpt_path)
        _check_resume(cfg, state["config"], run)
    elif ckpt_path.exists():
        raise NonnormalError(f"{run} already holds a trained run: pass --resume to continue it or choose another --out")
    device = pick_device(cfg["train"]["device"])
    dist = _Distributed(device)
    if dist.active and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    t_cfg = cfg["train"]
    local = dist.local_slice(t_cfg["batch"])

    torch.manual_seed(t_cfg["seed"])
    dtype = getattr(torch, t_cfg["dtype"])
    model = build_model(cfg, data.shape).to(device, dtype)
    ema = [p.detach().clone() for p in model.parameters()]
    loss_fn = build_loss(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=t_cfg["lr"], weight_decay=t_cfg["weight_decay"])
    if dist.active:  # same initial weights everywhere (DDP also broadcasts them), own dropout masks
        torch.manual_seed(t_cfg["seed"] + dist.rank)
    generator = torch.Generator().manual_seed(t_cfg["seed"])
    step, elapsed = 0, 0.0
    if resume:
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        for e, name in zip(ema, [n for n, _ in model.named_parameters()]):
            e.copy_(tensors[f"ema.{name}"])
        _load_optimizer(opt, tensors, state["param_groups"])
        generator.set_state(tensors["rng.generator"])
        torch.set_rng_state(tensors["rng.torch"])
        if device.type == "cuda" and "rng.cuda" in tensors:
            torch.cuda.set_rng_state(tensors["rng.cuda"], device)
        step, elapsed = state["step"], state["train_seconds"]
    net = model
    if dist.active:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    batches = Batches(data.train, data.levels, cfg["data"]["dequantize"], loss_fn, t_cfg["batch"],
                      generator, device, dtype)
    run.mkdir(parents=True, exist_ok=True)
    main = dist.rank == 0
    metrics = run / "metrics.jsonl"
    if main:
        checkpoint.write_atomic(run / "config.toml", config_lib.to_toml(cfg).encode())
        _truncate_metrics(metrics, step)

    def save() -> None:
        if not main:
            return
        names = [n for n, _ in model.named_parameters()]
        tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
        tensors.update({f"ema.{n}": e for n, e in zip(names, ema)})
        opt_tensors, groups = _optimizer_tensors(opt)
        tensors.update(opt_tensors)
        tensors["rng.generator"] = generator.get_state()
        tensors["rng.torch"] = torch.get_rng_state()
        if device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(device)
        checkpoint.save(ckpt_path, tensors, {"step": step, "train_seconds": elapsed, "config": cfg,
                                             "param_groups": groups, "shape": list(data.shape), "levels": data.levels})

    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=t_cfg["bf16"])
    window: list[float] = []
    bar = tqdm(total=t_cfg["steps"], initial=step, desc=f"train {cfg['diffusion']['q']}/{cfg['diffusion']['p']}",
               disable=not (progress and main), dynamic_ncols=True)
    model.train()
    t_window = time.perf_counter()
    while step < t_cfg["steps"]:
        t0 = time.perf_counter()
        x0, (r, eps) = batches.next()
        lr = learning_rate(cfg, step)
        loss, grad_norm = optimizer_step(net, loss_fn, opt, ema, x0[local], (r[local], eps[local]), lr,
                                         t_cfg["grad_clip"], min(t_cfg["ema"], (1 + step) / (10 + step)), amp)
        value = float(loss)  # nats/dim
        if dist.active:
            value = _mean_over_processes(value, device)
        if not (math.isfinite(value) and math.isfinite(float(grad_norm))):
            bar.close()  # the weights in memory are lost; no checkpoint is written from them
            raise NonnormalError(f"the loss became {'NaN' if math.isnan(value) else value} at step {step}: training "
                                 f"stopped and the last checkpoint in {run} is untouched; lower train.lr or set train.grad_clip")
        step += 1
        elapsed += time.perf_counter() - t0
        window.append(value / math.log(2))
        bar.update(1)
        if step % t_cfg["log_every"] == 0 or step == t_cfg["steps"]:
            now = time.perf_counter()
            row = {"step": step, "loss_bpd": sum(window) / len(window), "lr": lr, "grad_norm": float(grad_norm),
                   "steps_per_s": len(window) / (now - t_window), "train_seconds": elapsed}
            bar.set_postfix(loss=f"{row['loss_bpd']:.3f} bpd")
            if main:
                with open(metrics, "a") as f:
                    f.write(json.dumps(row) + "\n")
            window, t_window = [], now
        if step % t_cfg["checkpoint_every"] == 0 or step == t_cfg["steps"] or step == stop_at:
            save()
        if step == stop_at:
            break
    bar.close()
    if dist.active:
        torch.distributed.barrier()  # rank 0 has written the last checkpoint
    return {"step": step, "train_seconds": elapsed}


def optimizer_step(net: nn.Module, loss_fn, opt: torch.optim.Optimizer, ema: list[torch.Tensor], x0: torch.Tensor,
                   noise, lr: float, grad_clip: float, ema_decay: float, amp) -> tuple[torch.Tensor, torch.Tensor]:
    """One training step on a batch: loss, backward, clipping, AdamW at ``lr``, EMA update.

    The objective is the batch's mean loss per dimension (nats/dim); it is returned detached,
    with the gradient norm before clipping. ``net`` may be the DDP wrapper; ``ema`` holds one
    tensor per parameter, in the optimizer's order.
    """
    for group in opt.param_groups:
        group["lr"] = lr
    with amp:
        per_example = loss_fn(net, x0, noise=noise)
    loss = per_example.float().mean() / x0[0].numel()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for group in opt.param_groups for p in group["params"]]
    grad_norm = nn.utils.clip_grad_norm_(params, grad_clip or float("inf"))
    opt.step()
    with torch.no_grad():
        torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - ema_decay)
    return loss.detach(), grad_norm


def _mean_over_processes(value: float, device: torch.device) -> float:
    t = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return float(t) / torch.distributed.get_world_size()


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines past ``step`` (written after the checkpoint a resumed run restarts from)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a line torn by a crash mid-write
    checkpoint.write_atomic(path, "".join(line + "\n" for line in keep).encode())


def load_run(run: str | Path, device: str | torch.device = "cpu", ema: bool = True):
    """``(model, config, state)`` of a trained run, the model in eval mode with its EMA weights."""
    run = Path(run)
    if not run.is_dir():
        raise NonnormalError(f"run folder {run} not found: give the --out folder of a `nonnormal train` run")
    tensors, state = checkpoint.load(run / CHECKPOINT)
    cfg = state["config"]
    model = build_model(cfg, tuple(state["shape"])).to(getattr(torch, cfg["train"].get("dtype", "float32")))
    try:
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        if ema:
            params = dict(model.named_parameters())
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(tensors[f"ema.{name}"])
    except (RuntimeError, KeyError) as err:
        raise NonnormalError(f"checkpoint {run / CHECKPOINT} does not match its config ({str(err).splitlines()[0][:100]}): "
                             "it is corrupt; retrain the run") from None
    return model.to(device).eval(), cfg, state
