"""The figure of a fitted kernel: variance ratio and shape per step against t."""

from __future__ import annotations

import os
from pathlib import Path

from .fitted import FittedKernel


def plot_kernel(kernel: FittedKernel, path: str | Path) -> Path:
    """Two panels against ``t_{k+1}``: the variance ratio ``s_k^2`` with its clipping bounds, and
    the shape (gennorm beta, student_t nu; log scale). Written through a temporary file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    ks = range(kernel.first, kernel.T)
    t = [kernel.t[k] for k in ks]
    shaped = kernel.family != "gaussian"
    fig, axes = plt.subplots(1, 2 if shaped else 1, figsize=(9 if shaped else 5, 3.6), dpi=120, squeeze=False)
    ax = axes[0][0]
    ax.plot(t, [kernel.scale[k] ** 2 for k in ks], "o-", label="fitted $s_k^2$")
    ax.plot(t, [kernel.clip[k][1] for k in ks], "k:", lw=1, label="upper bound")
    ax.axhline(1.0, color="k", ls="--", lw=1, label="rule's variance")
    ax.set(xlabel="t", ylabel="variance ratio", yscale="log", title=f"T = {kernel.T}, {kernel.spacing}, {kernel.rule}")
    ax.legend(fontsize=8)
    if shaped:
        ax = axes[0][1]
        ax.plot(t, [kernel.shape[k] for k in ks], "o-", color="C1")
        if kernel.family == "gennorm":
            ax.axhline(2.0, color="k", ls="--", lw=1, label="gaussian (beta = 2)")
            ax.axhline(1.0, color="k", ls=":", lw=1, label="laplace (beta = 1)")
            ax.legend(fontsize=8)
        ax.set(xlabel="t", ylabel="beta" if kernel.family == "gennorm" else "nu", yscale="log", title=kernel.family)
    for ax in axes[0]:  # plain numbers on the log axes, at 1, 2, 5 per decade
        ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path
