"""A UNet noise model ``eps_theta(x, t)`` for images, in the style of DDPM / VDM.

It sees an image, a time ``t`` in [0, 1] and, when built with ``num_classes``, a class label
(``eps_theta(x, t, class_labels=y)``, the class embedding added to the time embedding as in ADM):
it knows no increment law.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import NonnormalError
from . import register


def timestep_embedding(t: torch.Tensor, dim: int, scale: float = 1000.0) -> torch.Tensor:
    """Sinusoidal features of ``scale * t`` (as in DDPM), shape (batch, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = scale * t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], 1)
    return F.pad(emb, (0, dim % 2))


def class_labels_or_null(class_labels, batch: int, num_classes: int, device=None) -> torch.Tensor | None:
    """The checked int64 labels (batch,) of a model with ``num_classes`` classes (0: unconditional).

    ``class_labels`` may be None (the null label ``num_classes`` for every example: the
    unconditional model of classifier-free guidance), one label for the whole batch, or one per
    example in ``0..num_classes`` (``num_classes`` itself: that example's null label). An
    unconditional model returns None and refuses labels.
    """
    if not num_classes:
        if class_labels is not None:
            raise NonnormalError(
                "this model is unconditional and takes no class_labels: train with net.num_classes "
                "(the dataset's class count) for a class-conditional one"
            )
        return None
    if class_labels is None:
        return torch.full((batch,), num_classes, dtype=torch.long, device=device)
    y = torch.as_tensor(class_labels, device=device)
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool or y.ndim > 1:
        raise NonnormalError(f"class_labels must be integers of shape ({batch},), got {y.dtype} {tuple(y.shape)}")
    y = y.long().expand(batch) if y.ndim == 0 else y.long()
    if y.shape != (batch,):
        raise NonnormalError(f"class_labels must be integers of shape ({batch},), got {tuple(y.shape)}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) > num_classes):
        raise NonnormalError(
            f"class_labels must lie in 0..{num_classes - 1} (or {num_classes}, the null label), "
            f"got {int(y.min())}..{int(y.max())}"
        )
    return y


class ClassEmbedding(nn.Module):
    """A learned vector per class, plus one null row (index ``num_classes``) for classifier-free guidance."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.num_classes = num_classes  # classes 0..num_classes-1; num_classes is the null label
        self.table = nn.Embedding(num_classes + 1, dim)

    def forward(self, class_labels, batch: int, device=None) -> torch.Tensor:
        return self.table(class_labels_or_null(class_labels, batch, self.num_classes, device))


def check_num_classes(num_classes) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise NonnormalError(f"net.num_classes must be an integer >= 0 (0: unconditional), got {num_classes!r}")
    return num_classes


def fourier_features(x: torch.Tensor, exponents: tuple[int, ...]) -> torch.Tensor:
    """VDM's input features: ``sin`` and ``cos`` of ``2^n pi x`` for each n, concatenated on channels."""
    feats = [x]
    for n in exponents:
        feats += [torch.sin(x * (2.0**n * math.pi)), torch.cos(x * (2.0**n * math.pi))]
    return torch.cat(feats, 1)


def _norm(ch: int) -> nn.GroupNorm:
    groups = math.gcd(ch, 8)
    return nn.GroupNorm(groups, ch)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = _norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2, self.conv2 = _norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class Attention(nn.Module):
    """Single-head self-attention over the pixels of a feature map."""

    def __init__(self, ch: int):
        super().__init__()
        self.norm, self.qkv, self.out = _norm(ch), nn.Conv2d(ch, 3 * ch, 1), nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, C, H * W).transpose(2, 3).unbind(1)
        h = F.scaled_dot_product_attention(q, k, v)
        return x + self.out(h.transpose(1, 2).reshape(B, C, H, W))


@register("unet", builtin=True)
class UNet(nn.Module):
    """``eps_theta(x, t)`` for images of shape ``(channels, size, size)``; ``eps_theta(x, t, class_labels)``
    with ``num_classes`` > 0."""

    def __init__(
        self,
        shape: tuple[int, int, int],
        width: int = 32,
        ch_mult: tuple[int, ...] = (1, 2),
        num_res_blocks: int = 1,
        attn_resolutions: tuple[int, ...] = (4,),
        dropout: float = 0.0,
        fourier: tuple[int, ...] = (),
        num_classes: int = 0,
    ):
        super().__init__()
        if len(shape) != 3:
            raise NonnormalError(
                f"the UNet takes images (channels, height, width), but the data's examples have shape "
                f'{tuple(shape)}: set net.name = "mlp" for vector data (see configs/toy2d.toml)'
            )
        C, H, W = shape  # image shape
        self.shape = tuple(shape)
        self.fourier = tuple(int(n) for n in fourier)  # VDM Fourier-feature exponents n (2^n pi x); () = off
        if width <= 0 or width % 8 and width % 4:
            raise NonnormalError(f"UNet width must be a positive multiple of 4, got {width}")
        if not ch_mult or any(m <= 0 for m in ch_mult):
            raise NonnormalError(f"UNet ch_mult must be positive integers, got {list(ch_mult)}")
        if num_res_blocks < 1:
            raise NonnormalError(f"UNet num_res_blocks must be >= 1, got {num_res_blocks}")
        if not 0 <= dropout < 1:
            raise NonnormalError(f"UNet dropout must lie in [0, 1), got {dropout}")
        down = 2 ** (len(ch_mult) - 1)
        if H % down or W % down:
            raise NonnormalError(
                f"a {H}x{W} image cannot be halved {len(ch_mult) - 1} times: use fewer ch_mult entries"
            )
        emb_dim = 4 * width
        self.width = width
        self.time = nn.Sequential(nn.Linear(width, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.num_classes = check_num_classes(num_classes)  # 0: unconditional; else classes 0..num_classes-1
        if self.num_classes:  # (no module otherwise: unconditional checkpoints keep their keys)
            self.classes = ClassEmbedding(self.num_classes, emb_dim)
        self.conv_in = nn.Conv2d(C * (1 + 2 * len(self.fourier)), width, 3, padding=1)

        chans, ch, res = [width], width, H
        self.down = nn.ModuleList()
        for level, mult in enumerate(ch_mult):
            for _ in range(num_res_blocks):
                blocks = nn.ModuleList([ResBlock(ch, width * mult, emb_dim, dropout)])
                ch = width * mult
                if res in attn_resolutions:
                    blocks.append(Attention(ch))
                self.down.append(blocks)
                chans.append(ch)
            if level < len(ch_mult) - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(ch, ch, 3, stride=2, padding=1)]))
                chans.append(ch)
                res //= 2
        self.mid = nn.ModuleList(
            [ResBlock(ch, ch, emb_dim, dropout), Attention(ch), ResBlock(ch, ch, emb_dim, dropout)]
        )
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(ch_mult))):
            for _ in range(num_res_blocks + 1):
                blocks = nn.ModuleList([ResBlock(ch + chans.pop(), width * mult, emb_dim, dropout)])
                ch = width * mult
                if res in attn_resolutions:
                    blocks.append(Attention(ch))
                self.up.append(blocks)
            if level > 0:
                self.up.append(
                    nn.ModuleList([nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, ch, 3, padding=1)])
                )
                res *= 2
        self.norm_out, self.conv_out = _norm(ch), nn.Conv2d(ch, C, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.time(timestep_embedding(t, self.width).to(x.dtype))
        if self.num_classes:
            emb = emb + self.classes(class_labels, x.shape[0], x.device).to(emb.dtype)
        else:
            class_labels_or_null(class_labels, x.shape[0], 0)  # refuses labels
        h = self.conv_in(fourier_features(x, self.fourier) if self.fourier else x)
        skips = [h]
        for blocks in self.down:
            if isinstance(blocks[0], ResBlock):
                h = blocks[0](h, emb)
                for b in blocks[1:]:
                    h = b(h)
            else:
                h = blocks[0](h)
            skips.append(h)
        h = self.mid[2](self.mid[1](self.mid[0](h, emb)), emb)
        for blocks in self.up:
            if isinstance(blocks[0], ResBlock):
                h = blocks[0](torch.cat([h, skips.pop()], 1), emb)
                for b in blocks[1:]:
                    h = b(h)
            else:
                h = blocks[1](blocks[0](h))
        return self.conv_out(F.silu(self.norm_out(h)))
