"""Figures: sample grids, sample rows (Figure 1), loss curves, metrics against T, the invariance plot.

matplotlib is imported only when a figure is drawn (Agg backend, no display)."""

from __future__ import annotations

import math
from pathlib import Path


def plot_invariance(result: dict[str, dict[int, float]], path: str | Path, title: str = "") -> None:
    """Log-log plot of W1 to the Gaussian limit against the number of steps, one line per law."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=120)
    for law, row in result.items():
        steps = sorted(row)
        style = dict(color="black", linestyle="--", marker="o") if law == "gaussian" else dict(marker="o")
        label = "gaussian (sampling noise)" if law == "gaussian" else law
        ax.plot(steps, [row[T] for T in steps], label=label, **style)
    ax.set_xscale("log", base=2)
    all_steps = sorted({T for row in result.values() for T in row})
    ax.set_xticks(all_steps, [str(T) for T in all_steps])
    ax.set_yscale("log")
    ax.set_xlabel("number of steps T")
    ax.set_ylabel("W1(terminal walk, Gaussian limit)")
    ax.set_title(title or "Invariance: non-normal walks approach the Gaussian limit", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def image_grid(x, nrow: int, pad: int = 1, scale: int = 1):
    """Images in [-1, 1] (n, C, H, W) as one uint8 array (rows of ``nrow``), padded with white lines."""
    import numpy as np

    x = np.asarray(x.detach().cpu().float() if hasattr(x, "detach") else x, dtype=np.float32)
    n, C, H, W = x.shape
    rows = -(-n // nrow)
    grid = np.full((rows * (H + pad) + pad, nrow * (W + pad) + pad, C), 255, dtype=np.uint8)
    pix = np.clip(np.rint((x + 1) * 127.5), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
    for i in range(n):
        r, c = divmod(i, nrow)
        grid[pad + r * (H + pad) : pad + r * (H + pad) + H, pad + c * (W + pad) : pad + c * (W + pad) + W] = pix[i]
    grid = grid.repeat(scale, 0).repeat(scale, 1)
    return grid[..., 0] if C == 1 else grid


def save_grid(x, path: str | Path, nrow: int = 8) -> None:
    """A PNG grid of images in [-1, 1], upscaled so that small images stay visible."""
    from PIL import Image

    H = x.shape[-2]
    Image.fromarray(image_grid(x, nrow, scale=max(1, 64 // H))).save(path)


def plot_scatter(clouds: dict[str, object], path: str | Path, title: str = "") -> None:
    """2-D point clouds, one colour each (the first drawn last, on top)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 5), dpi=120)
    for i, (label, x) in reversed(list(enumerate(clouds.items()))):
        x = x.detach().cpu().double().numpy() if hasattr(x, "detach") else x
        ax.scatter(x[:, 0], x[:, 1], s=3, alpha=0.5 if i else 0.8, color=f"C{i}", label=f"{label} ({len(x)})")
    ax.set_aspect("equal")
    ax.legend(fontsize=8, markerscale=3)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_sample_rows(rows: dict[str, object], path: str | Path, title: str = "") -> None:
    """Figure 1: one row of samples per (q, p) pair, the same seeds in every column."""
    plt = _plt()
    n = len(rows)
    fig, axes = plt.subplots(n, 1, figsize=(10, 1.0 + 0.9 * n), dpi=130, squeeze=False)
    for ax, (label, x) in zip(axes[:, 0], rows.items()):
        ax.imshow(image_grid(x, nrow=x.shape[0]), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    fig.suptitle(title or "Samples, one row per (q, p) pair, same seeds in every column", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_loss_curves(curves: dict[str, list[tuple[int, float]]], path: str | Path, title: str = "") -> None:
    """Training loss (bits/dim of the bound's diffusion part, without its constant) per pair."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=120)
    for label, points in curves.items():
        if points:
            steps, values = zip(*points)
            ax.plot(steps, values, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss - T K(0) / ln 2 (bits/dim)")
    ax.set_yscale("log")
    ax.set_title(title or "Training loss per pair", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_metric_vs_T(
    series: dict[str, dict[str, dict[int, list[float]]]],
    metrics: list[str],
    path: str | Path,
    title: str = "",
    units: dict[str, str] | None = None,
) -> None:
    """Each metric against the step count, one line per label (the same colour in every panel), with a
    band over seeds (min to max): ``series[metric][label] = {T: [value per seed]}``."""
    import numpy as np

    plt = _plt()
    labels = list(dict.fromkeys(label for m in metrics for label in series.get(m, {})))
    colours = {label: f"C{i % 10}" for i, label in enumerate(labels)}
    Ts_all = sorted({T for m in metrics for by_T in series.get(m, {}).values() for T in by_T})
    n = len(metrics)
    cols = min(n, 3)
    rows_ = math.ceil(n / cols)
    fig, axes = plt.subplots(rows_, cols, figsize=(4.3 * cols, 3.2 * rows_ + 0.8), dpi=120, squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        for label, by_T in series.get(metric, {}).items():
            Ts = sorted(by_T)
            mean = [float(np.mean(by_T[T])) for T in Ts]
            lo = [float(np.min(by_T[T])) for T in Ts]
            hi = [float(np.max(by_T[T])) for T in Ts]
            ax.plot(
                Ts, mean, "--" if label.startswith("ODE") else "-", marker="o", ms=3, color=colours[label], label=label
            )
            ax.fill_between(Ts, lo, hi, color=colours[label], alpha=0.15, lw=0)
        ax.set_xscale("log")
        ax.set_xticks(Ts_all, [str(T) for T in Ts_all])
        ax.minorticks_off()
        ax.set_xlabel("T (training steps of the walk)")
        ax.set_title(metric + (f" [{units[metric]}]" if units and units.get(metric) else ""), fontsize=8)
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    handles = [
        plt.Line2D([], [], color=colours[label], ls="--" if label.startswith("ODE") else "-", marker="o", ms=3)
        for label in labels
    ]
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8, frameon=False)
    fig.suptitle(title or "Metrics against the number of steps (band: min to max over seeds)", fontsize=10)
    fig.tight_layout(rect=(0, 0.06 + 0.02 * math.ceil(len(labels) / 4), 1, 1))
    fig.savefig(path)
    plt.close(fig)
