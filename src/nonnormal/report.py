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
