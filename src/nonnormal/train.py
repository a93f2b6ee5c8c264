"""The training loop: AdamW with warmup + cosine (``LambdaLR``), gradient clipping, EMA, optional
bf16 autocast, checkpoints with exact resume, metrics, callbacks, and data parallelism under ``torchrun``.

The run folder and its files are :mod:`nonnormal.runs`'s business. Batches come through torch's
DataLoader from a seeded sampler (:mod:`nonnormal.data.sampler`): the global batch of step s is
fixed by the seed, and each process reads its slice of it. Everything random in a step
(dequantization, the loss's step and noise draws) comes from one CPU generator whose state is in
the checkpoint, drawn for the *global* batch on every process, each keeping its slice: two
processes give the same updates as one process with the same global batch (with dropout 0:
dropout masks come from each process's own global RNG, seeded by seed + rank). Drawing on the
CPU makes a run's randomness the same on every device; on CUDA, resume is exact up to cuDNN's
non-deterministic kernels.

Resume (``resume=True``, ``--resume``) is always safe to ask for: with no checkpoint yet the run
starts at step 0 (and says so); a run folder holding another config is refused. SIGTERM, SIGINT
and SIGUSR1 finish the current step, write a checkpoint and stop with :class:`TrainingStopped`
(the command line exits with status 75, ``EX_TEMPFAIL``: continue with ``--resume``).
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import config as config_lib
from . import files, runs
from .conditioning import check_classes
from .data import Examples, GlobalBatchSampler, Labelled, batches, dequantize, levels_to_unit
from .device import check_memory, pick_device
from .errors import NonnormalError, Stopped
from .runs import build_model, load_data  # noqa: F401 -- part of this module's interface

EXIT_STOPPED = (
    Stopped.exit_code
)  # 75, EX_TEMPFAIL: stopped by a signal after writing a checkpoint; continue with --resume
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
# keys that may change when a run is resumed (the rest must match the checkpoint's config)
RESUMABLE = {
    ("train", k) for k in ("steps", "checkpoint_every", "log_every", "device", "keep", "workers", "tensorboard")
}


class TrainingStopped(Stopped):
    """Training stopped on a signal after writing a checkpoint (the command line exits 75)."""


def build_loss(cfg: dict):
    from .diffusion import Diffusion

    return Diffusion.from_config(cfg["diffusion"]).loss()


def lr_factor(t: dict, step: int) -> float:
    """Linear warmup to ``train.lr``, then constant or a cosine decay to 10% at the last step."""
    factor = min(1.0, (step + 1) / t["warmup"]) if t["warmup"] else 1.0
    if t["decay"] == "cosine" and step >= t["warmup"]:
        frac = (step - t["warmup"]) / max(1, t["steps"] - t["warmup"])
        factor *= 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
    return factor


class Batches:
    """The random inputs of each step: this process's slice of the global batch and of the loss's draws.

    The examples come through the DataLoader (``workers`` processes), mapped to [-1, 1] and
    dequantized; the dequantization noise and the loss's draws are drawn for the global batch
    from ``generator`` (CPU) and sliced, so every process count gives the same global step.
    ``data`` is a torch Dataset of stored examples, or a tensor of them. With ``num_classes`` > 0
    the batch's labels come along (``data`` must have them), each replaced by the null label
    ``num_classes`` with probability ``label_dropout`` (uniforms drawn after the loss's).
    """

    def __init__(
        self,
        data,
        levels: int | None,
        dequant: bool,
        loss,
        batch: int,
        generator: torch.Generator,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
        *,
        seed: int = 0,
        start: int = 0,
        rank: int = 0,
        world: int = 1,
        workers: int = 0,
        num_classes: int = 0,
        label_dropout: float = 0.0,
    ):
        data = Examples(data) if torch.is_tensor(data) else data
        self.levels, self.dequant, self.loss, self.dtype = levels, dequant, loss, dtype
        self.batch, self.generator, self.device = batch, generator, device
        self.num_classes, self.label_dropout = num_classes, label_dropout
        self.local = slice(rank * batch // world, (rank + 1) * batch // world)
        sampler = GlobalBatchSampler(len(data), batch, seed, start, rank, world)
        self._examples = batches(Labelled(data) if num_classes else data, sampler, workers)

    def next(self) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], dict]:
        """``(x0, draws, extra_args)``: examples, the loss's draws, and the model's keyword arguments."""
        x0, y = next(self._examples) if self.num_classes else (next(self._examples), None)
        if self.levels is not None:
            x0 = levels_to_unit(x0, self.levels)
        x0 = x0.to(self.dtype)
        shape = (self.batch, *x0.shape[1:])  # the global batch's: every process draws all of it
        if self.levels is not None and self.dequant:
            x0 = x0 + dequantize(x0.new_zeros(shape), self.levels, self.generator)[self.local]
        draws = self.loss.draw(shape, self.generator, None, x0.dtype)
        extra = {}
        if y is not None:
            if self.label_dropout:  # one uniform per example of the global batch
                drop = torch.rand(self.batch, generator=self.generator, dtype=torch.float64)[self.local]
                y = torch.where(drop < self.label_dropout, self.num_classes, y)
            extra = {"class_labels": y.to(self.device)}
        return x0.to(self.device), tuple(d[self.local].to(self.device) for d in draws), extra

    def close(self) -> None:
        self._examples.close()  # stops DataLoader workers


class _Distributed:
    """Rank, world size and the process group when launched by ``torchrun`` (WORLD_SIZE > 1)."""

    def __init__(self, device: torch.device):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.active = self.world > 1
        self.device = device
        if self.active and not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")

    def reduce(self, value: float, flag: bool) -> tuple[float, bool]:
        """The mean of ``value`` over processes, and whether any process raised ``flag``."""
        if not self.active:
            return value, flag
        t = torch.tensor([value, float(flag)], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return float(t[0]) / self.world, bool(t[1] > 0)

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()


class _Signals:
    """While active: SIGTERM, SIGINT and SIGUSR1 set ``received`` (a second SIGINT interrupts at once)."""

    def __init__(self):
        self.received: int | None = None
        self._old: dict = {}

    def _handle(self, signum, frame):
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = self.received or signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, handler in self._old.items():
            signal.signal(s, handler)


def _check_resume(cfg: dict, saved: dict, run: Path) -> None:
    for section, table in saved.items():
        if not isinstance(table, dict) or not isinstance(cfg.get(section), dict):
            continue  # plugins: more may be loaded on resume
        for key, value in table.items():
            if (section, key) not in RESUMABLE and cfg[section].get(key, value) != value:
                raise NonnormalError(
                    f"--resume with {section}.{key}={cfg[section][key]!r}, but {run} was trained "
                    f"with {value!r}: only train.steps, checkpoint_every, log_every, keep, workers, "
                    "tensorboard and device may change"
                )


def _tensorboard(run: Path, step: int) -> Callable:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise NonnormalError(
            "train.tensorboard needs the tensorboard package: pip install 'nonnormal[tensorboard]'"
        ) from None
    writer = SummaryWriter(log_dir=str(run / "tensorboard"), purge_step=step or None)

    def log(step: int, metrics: dict) -> None:
        for key, value in metrics.items():
            if key != "step" and isinstance(value, (int, float)):
                writer.add_scalar(f"train/{key}", value, step)
        writer.flush()

    log.close = writer.close
    return log


def train(
    cfg: dict,
    run: str | Path,
    resume: bool = False,
    progress: bool = True,
    stop_at: int | None = None,
    callbacks: Iterable[Callable[[int, dict], Any]] = (),
) -> dict[str, Any]:
    """Train (or, with ``resume``, continue) the run in folder ``run``; returns the final state.

    ``callbacks`` are called as ``callback(step, metrics)`` with each row of ``metrics.jsonl`` (on
    the first process). ``stop_at`` stops early after that step with a checkpoint, as an
    interruption would.
    """
    run = Path(run)
    data = load_data(cfg)
    cfg = {**cfg, "data": {**cfg["data"], "dataset": data.name}}  # canonical spec: absolute paths
    check_memory(cfg, data.shape)  # a batch that cannot fit is refused before any work
    check_classes(cfg, data)  # a conditional network needs the dataset's labels and class count
    t = cfg["train"]
    device = pick_device(t["device"])
    dist = _Distributed(device)
    if dist.active and device.type == "cuda":
        device = dist.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    main = dist.rank == 0
    with torch.device("meta"):  # bad network options and losses are refused before the run folder is touched
        build_model(cfg, data.shape)
    build_loss(cfg)
    lock, failure = None, None
    if main:  # the first process owns the folder; every process learns whether that worked
        try:
            lock = runs.open_run(run)
        except NonnormalError as err:
            failure = err
    if dist.reduce(0.0, failure is not None)[1]:
        raise failure or NonnormalError(f"the first process could not open {run}: see its message")
    try:
        return _train(cfg, run, data, device, dist, resume, progress, stop_at, list(callbacks))
    finally:
        runs.release(lock)


def _train(cfg, run, data, device, dist, resume, progress, stop_at, callbacks) -> dict[str, Any]:
    from tqdm.auto import tqdm

    t, main = cfg["train"], dist.rank == 0
    found = runs.latest(run, quiet=not main)
    if found is not None and not resume:
        raise NonnormalError(f"{run} already holds a trained run: pass --resume to continue it or choose another --out")
    saved = found[2]["config"] if found else (runs.saved_config(run) if resume else None)
    if resume and saved:
        _check_resume(cfg, saved, run)
    if resume and found is None and main:
        print(f"nonnormal: no checkpoint in {run} yet: starting from step 0", flush=True)

    torch.manual_seed(t["seed"])
    dtype = getattr(torch, t["dtype"])
    model = build_model(cfg, data.shape).to(device, dtype)
    ema = [p.detach().clone() for p in model.parameters()]
    loss_fn = build_loss(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=t["lr"], weight_decay=t["weight_decay"])
    if dist.active:  # same initial weights everywhere (DDP also broadcasts them), own dropout masks
        torch.manual_seed(t["seed"] + dist.rank)
    generator = torch.Generator().manual_seed(t["seed"])
    step, elapsed, window = 0, 0.0, []
    sizes = {"train": len(data.train), "test": len(data.test)}
    if found is not None:
        path, tensors, state = found
        if state.get("data", sizes) != sizes:
            raise NonnormalError(
                f"the dataset changed since {path} was written ({state['data']} examples then, "
                f"{sizes} now): restore it, or train a new run"
            )
        for e, saved_e in zip(ema, runs.load_weights(model, tensors, path)):
            e.copy_(saved_e)
        runs.load_optimizer(opt, tensors, state["param_groups"], path)
        generator.set_state(tensors["rng.generator"])
        torch.set_rng_state(tensors["rng.torch"])
        if device.type == "cuda" and "rng.cuda" in tensors:
            torch.cuda.set_rng_state(tensors["rng.cuda"], device)
        step, elapsed, window = state["step"], state["train_seconds"], state.get("metrics_window", [])
    for group in opt.param_groups:  # the rate is a function of the step and the config (steps may change on resume)
        group.setdefault("initial_lr", t["lr"])
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(t, s), last_epoch=step - 1)
    net = model
    if dist.active:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if main:
        files.write_atomic(run / runs.CONFIG, config_lib.to_toml(cfg).encode())
        runs.truncate_metrics(run, step)
        if t["tensorboard"]:
            callbacks.append(_tensorboard(run, step))
    feed = Batches(
        data.train,
        data.levels,
        cfg["data"]["dequantize"],
        loss_fn,
        t["batch"],
        generator,
        device,
        dtype,
        seed=t["seed"],
        start=step,
        rank=dist.rank,
        world=dist.world,
        workers=t["workers"],
        num_classes=check_classes(cfg, data),
        label_dropout=t["label_dropout"],
    )

    def save() -> None:
        if main:
            tensors = runs.weight_tensors(model, ema)
            opt_tensors, groups = runs.optimizer_tensors(opt)
            tensors.update(opt_tensors)
            tensors["rng.generator"] = generator.get_state()
            tensors["rng.torch"] = torch.get_rng_state()
            if device.type == "cuda":
                tensors["rng.cuda"] = torch.cuda.get_rng_state(device)
            runs.save_checkpoint(
                run,
                step,
                tensors,
                {
                    "train_seconds": elapsed,
                    "config": cfg,
                    "param_groups": groups,
                    "sampler": {"seed": t["seed"], "position": step},
                    "metrics_window": window,
                    "data": sizes,
                    "shape": list(data.shape),
                    "levels": data.levels,
                },
                t["keep"],
            )

    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=t["bf16"])
    bar = tqdm(
        total=t["steps"],
        initial=step,
        desc=f"train {cfg['diffusion']['q']}/{cfg['diffusion']['p']}",
        disable=not (progress and main),
        dynamic_ncols=True,
    )
    model.train()
    t_window = time.perf_counter()
    try:
        with _Signals() as signals:
            while step < t["steps"]:
                t0 = time.perf_counter()
                x0, draw, extra = feed.next()
                lr = schedule.get_last_lr()[0]
                loss, grad_norm = optimizer_step(
                    net,
                    loss_fn,
                    opt,
                    ema,
                    x0,
                    draw,
                    None,
                    t["grad_clip"],
                    min(t["ema"], (1 + step) / (10 + step)),
                    amp,
                    extra,
                )
                schedule.step()
                value, stop = dist.reduce(float(loss), signals.received is not None)  # nats/dim; one stop step
                if not (math.isfinite(value) and math.isfinite(float(grad_norm))):
                    fix = (
                        "lower train.lr or set train.grad_clip"
                        if step > 0
                        else "this is the first step, before any update: the pair's K(u) overflows at the untrained "
                        'network\'s residuals (a light-tailed or one-sided p); use train.dtype = "float64", a '
                        "larger T, or another p"
                    )
                    raise NonnormalError(
                        f"the loss became {'NaN' if math.isnan(value) else value} at step {step}: "
                        f"training stopped and the last checkpoint in {run} is untouched; {fix}"
                    )
                step += 1
                elapsed += time.perf_counter() - t0
                window.append(value / math.log(2))
                bar.update(1)
                if step % t["log_every"] == 0 or step == t["steps"]:
                    now = time.perf_counter()
                    row = {
                        "step": step,
                        "loss_bpd": sum(window) / len(window),
                        "lr": lr,
                        "grad_norm": float(grad_norm),
                        "steps_per_s": len(window) / (now - t_window),
                        "train_seconds": elapsed,
                    }
                    bar.set_postfix(loss=f"{row['loss_bpd']:.3f} bpd")
                    if main:
                        files.append_line(run / runs.METRICS, files.json_text(row, indent=None))
                        for callback in callbacks:
                            callback(step, row)
                    window, t_window = [], now
                if step % t["checkpoint_every"] == 0 or step == t["steps"] or step == stop_at or stop:
                    save()
                if stop and step < t["steps"]:
                    dist.barrier()  # the checkpoint is written before any process exits
                    name = signal.Signals(signals.received).name if signals.received else "a signal"
                    reason = f"stopped by {name} after step {step}: checkpoint written to {run}"
                    raise TrainingStopped(f"{reason}; continue with --resume (exit code {EXIT_STOPPED})", reason)
                if step == stop_at:
                    break
    finally:
        bar.close()
        feed.close()
        for callback in callbacks:
            getattr(callback, "close", lambda: None)()
    dist.barrier()  # the first process has written the last checkpoint
    return {"step": step, "train_seconds": elapsed}


def optimizer_step(
    net: nn.Module,
    loss_fn,
    opt: torch.optim.Optimizer,
    ema: list[torch.Tensor],
    x0: torch.Tensor,
    draw,
    lr: float | None,
    grad_clip: float,
    ema_decay: float,
    amp,
    extra_args: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One training step on a batch: loss, backward, clipping, AdamW (at ``lr``, unless None), EMA update.

    The objective is the batch's mean loss per dimension (nats/dim); it is returned detached,
    with the gradient norm before clipping. ``net`` may be the DDP wrapper; ``ema`` holds one
    tensor per parameter, in the optimizer's order. The EMA is ``torch._foreach_lerp_``, the
    update ``swa_utils.get_ema_multi_avg_fn`` makes; ``AveragedModel`` itself is not used: its
    decay is fixed (ours warms up with the step) and it would keep a second copy of the module.
    ``extra_args`` (e.g. ``{"class_labels": y}``) go to every model call of the loss.
    """
    if lr is not None:
        for group in opt.param_groups:
            group["lr"] = lr
    with amp:
        per_example = loss_fn(net, x0, draw=draw, **({"extra_args": extra_args} if extra_args else {}))
    loss = per_example.float().mean() / x0[0].numel()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for group in opt.param_groups for p in group["params"]]
    grad_norm = nn.utils.clip_grad_norm_(params, grad_clip or float("inf"))
    opt.step()
    with torch.no_grad():
        torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - ema_decay)
    return loss.detach(), grad_norm
