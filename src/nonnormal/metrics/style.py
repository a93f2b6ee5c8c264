"""What image samples look like, in numbers: saturation, total variation and the pixel histogram.

The paper says Laplace rows are "smoother and more saturated"; these metrics make that testable.
Images come either as integer levels ``0 .. L-1`` (any integer dtype) or as floats on the
model's scale ``[-1, 1]`` (level ``l`` of ``L`` sits at the centre of its bin, ``(2 l + 1) / L - 1``,
the project's convention, :mod:`nonnormal.data.levels`), shaped ``(N, H, W)`` or
``(N, C, H, W)``. Floats are put in the bin that holds them where levels matter
(saturation, histograms) and used as they are (clamped to ``[-1, 1]``) for total variation.

- :func:`saturation`: the share of pixels at the two extreme levels (0 and ``L - 1``).
- :func:`total_variation`: mean absolute difference between horizontal neighbours plus the same
  between vertical neighbours, on the ``[-1, 1]`` scale: 0 for a constant image, 4 for a
  checkerboard of -1 and 1.
- :func:`high_frequency_share`: the share of an image's power (its mean removed) at spatial
  frequencies above ``cutoff`` cycles per pixel (radially; Nyquist is 0.5 per axis).
- :func:`histogram_distance`: total variation distance (``1/2 sum |p - q|``, in [0, 1]) and
  1-D Wasserstein-1 distance (on the ``[-1, 1]`` scale) between the pixel histograms of two sets.
- :func:`style_metrics`: all of them for a batch of samples (and the data, for the histogram).
"""

from __future__ import annotations

import torch

from ..data.levels import levels_to_unit, unit_to_levels
from ..errors import NonnormalError


def _images(x: torch.Tensor) -> torch.Tensor:
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[-1] < 2 or x.shape[-2] < 2:
        raise NonnormalError(
            f"style metrics need images shaped (N, H, W) or (N, C, H, W) with H, W >= 2, got {tuple(x.shape)}"
        )
    return x


def to_levels(x: torch.Tensor, levels: int) -> torch.Tensor:
    """Integer levels ``0 .. levels-1`` (int64): integers pass (checked), floats on [-1, 1] are rounded."""
    if levels < 2:
        raise NonnormalError(f"levels must be at least 2, got {levels}")
    if not torch.is_floating_point(x):
        if int(x.min()) < 0 or int(x.max()) > levels - 1:
            raise NonnormalError(
                f"integer images must hold levels 0..{levels - 1}, got values in [{int(x.min())}, {int(x.max())}]"
            )
        return x.long()
    return unit_to_levels(x.double(), levels)


def to_unit(x: torch.Tensor, levels: int | None = None) -> torch.Tensor:
    """Values on [-1, 1] (float64): integer levels are mapped, floats clamped."""
    if not torch.is_floating_point(x):
        if levels is None:
            raise NonnormalError("integer images need their number of levels")
        return levels_to_unit(to_levels(x, levels), levels).double()
    return x.double().clamp(-1, 1)


def saturation(x: torch.Tensor, levels: int) -> float:
    """Share of pixels at level 0 or ``levels - 1``."""
    lv = to_levels(_images(x), levels)
    return float(((lv == 0) | (lv == levels - 1)).double().mean())


def total_variation(x: torch.Tensor, levels: int | None = None) -> float:
    """Mean |horizontal neighbour difference| + mean |vertical neighbour difference| on [-1, 1],
    averaged over images and channels."""
    u = to_unit(_images(x), levels)
    return float((u[..., :, 1:] - u[..., :, :-1]).abs().mean() + (u[..., 1:, :] - u[..., :-1, :]).abs().mean())


def high_frequency_share(x: torch.Tensor, levels: int | None = None, cutoff: float = 0.25) -> float:
    """Share of power at radial frequency ``sqrt(fx^2 + fy^2) > cutoff`` (cycles per pixel), over
    all images and channels, each image's mean removed; 0 for images without any variation."""
    u = to_unit(_images(x), levels)
    u = u - u.mean((-2, -1), keepdim=True)
    power = torch.fft.fft2(u).abs() ** 2
    fy = torch.fft.fftfreq(u.shape[-2], dtype=torch.float64)[:, None]
    fx = torch.fft.fftfreq(u.shape[-1], dtype=torch.float64)[None, :]
    high = (fx**2 + fy**2).sqrt() > cutoff
    total = float(power.sum())
    return float(power[..., high].sum()) / total if total > 0 else 0.0


def pixel_histogram(x: torch.Tensor, levels: int) -> torch.Tensor:
    """The share of pixels at each level (float64, sums to 1)."""
    lv = to_levels(_images(x), levels).flatten()
    return torch.bincount(lv, minlength=levels).double() / lv.numel()


def histogram_distance(x: torch.Tensor, y: torch.Tensor, levels: int) -> dict[str, float]:
    """``{"tv": 1/2 sum |p - q|, "w1": sum |P - Q| * 2/L}`` between the pixel histograms of two
    image sets (``P``, ``Q`` the cumulative shares; ``w1`` is on the [-1, 1] scale, bins 2/L apart)."""
    p, q = pixel_histogram(x, levels), pixel_histogram(y, levels)
    return {
        "tv": float(0.5 * (p - q).abs().sum()),
        "w1": float((p.cumsum(0) - q.cumsum(0)).abs()[:-1].sum() * 2 / levels),
    }


def style_metrics(
    samples: torch.Tensor, levels: int, data: torch.Tensor | None = None, cutoff: float = 0.25
) -> dict[str, float]:
    """Every style metric of ``samples``: ``saturation``, ``tv`` (total variation), ``hf_share``
    (power above ``cutoff`` cycles per pixel) and, given ``data``, ``hist_tv`` and ``hist_w1``
    between the samples' and the data's pixel histograms."""
    out = {
        "saturation": saturation(samples, levels),
        "tv": total_variation(samples, levels),
        "hf_share": high_frequency_share(samples, levels, cutoff),
    }
    if data is not None:
        h = histogram_distance(samples, data, levels)
        out.update(hist_tv=h["tv"], hist_w1=h["w1"])
    return out
