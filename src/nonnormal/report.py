"""Figures. matplotlib is imported only when a figure is drawn (Agg backend, no display)."""

from __future__ import annotations

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
        grid[pad + r * (H + pad):pad + r * (H + pad) + H, pad + c * (W + pad):pad + c * (W + pad) + W] = pix[i]
    grid = grid.repeat(scale, 0).repeat(scale, 1)
    return grid[..., 0] if C == 1 else grid


def save_grid(x, path: str | Path, nrow: int = 8) -> None:
    """A PNG grid of images in [-1, 1], upscaled so that small images stay visible."""
    from PIL import Image

    H = x.shape[-2]
    Image.fromarray(image_grid(x, nrow, scale=max(1, 64 // H))).save(path)


def plot_sample_rows(rows: dict[str, "object"], path: str | Path, title: str = "") -> None:
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


def html_report(title: str, intro: str, table_md_rows: list[dict], columns: list[str], images: dict[str, Path],
                notes: list[str]) -> str:
    """One self-contained HTML page: the table, then each image (embedded as base64 PNG)."""
    import base64
    import html

    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else html.escape(str(v))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(c, ''))}</td>" for c in columns) + "</tr>" for r in table_md_rows)
    figs = "".join(
        f"<h2>{html.escape(name)}</h2><img alt='{html.escape(name)}' src='data:image/png;base64,"
        f"{base64.b64encode(Path(p).read_bytes()).decode()}'>" for name, p in images.items())
    items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse}}td,th{{border:1px solid #bbb;padding:4px 8px;text-align:right}}
img{{max-width:100%;image-rendering:pixelated}}</style></head><body>
<h1>{html.escape(title)}</h1><p>{html.escape(intro)}</p>
<table><tr>{head}</tr>{body}</table><ul>{items}</ul>{figs}</body></html>
"""
