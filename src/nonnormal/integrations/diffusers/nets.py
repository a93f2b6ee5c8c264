"""Networks both ways: diffusers' ``UNet2DModel`` as a nonnormal network (:class:`DiffusersUNet`, net
``diffusers-unet2d``) and any nonnormal network as a diffusers model (:class:`NonNormalNet`, what an
export of a run with another network holds)."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import UNet2DModel
from diffusers.configuration_utils import register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d import UNet2DOutput
from torch import nn

from ...errors import NonnormalError
from ...nets.unet import check_num_classes, class_labels_or_null
from .common import load_plugins, plugin_folder
from .timesteps import t_to_timestep, timestep_to_t


class DiffusersUNet(nn.Module):
    """diffusers' ``UNet2DModel`` as ``eps_theta(x, t)`` (``net.name = "diffusers-unet2d"``).

    The keyword options are ``UNet2DModel``'s own (``sample_size``, ``in_channels`` and
    ``out_channels`` come from the data's shape); ``num_train_timesteps`` is the N of the time map
    ``k = t N - 1`` (keep it equal to ``steps`` of a ``ddpm-linear`` schedule). The timestep
    embedding is diffusers' sinusoidal one ("positional"), evaluated at fractional timesteps.
    ``num_classes`` > 0 makes it class-conditional through diffusers' own ``num_class_embeds``
    (``num_classes + 1`` rows: the last one is the null label of classifier-free guidance).
    """

    def __init__(
        self,
        shape: tuple[int, ...],
        block_out_channels: tuple[int, ...] = (32, 64),
        layers_per_block: int = 1,
        down_block_types: tuple[str, ...] = ("DownBlock2D", "AttnDownBlock2D"),
        up_block_types: tuple[str, ...] = ("AttnUpBlock2D", "UpBlock2D"),
        mid_block_type: str = "UNetMidBlock2D",
        norm_num_groups: int = 8,
        attention_head_dim: int = 8,
        dropout: float = 0.0,
        act_fn: str = "silu",
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        center_input_sample: bool = False,
        downsample_type: str = "conv",
        upsample_type: str = "conv",
        resnet_time_scale_shift: str = "default",
        add_attention: bool = True,
        norm_eps: float = 1e-5,
        num_train_timesteps: int = 1000,
        num_classes: int = 0,
    ):
        super().__init__()
        self.num_classes = check_num_classes(num_classes)  # 0: unconditional; else classes 0..num_classes-1
        if len(shape) != 3:
            raise NonnormalError(
                f"diffusers-unet2d takes images (channels, height, width), but the data's examples "
                f'have shape {tuple(shape)}: use net.name = "mlp" for vector data'
            )
        C, H, W = shape
        downs = len(block_out_channels) - 1
        if H % 2**downs or W % 2**downs:
            raise NonnormalError(f"a {H}x{W} image cannot be halved {downs} times: give fewer block_out_channels")
        if not len(block_out_channels) == len(down_block_types) == len(up_block_types):
            raise NonnormalError(
                f"diffusers-unet2d needs as many down_block_types ({len(down_block_types)}) and "
                f"up_block_types ({len(up_block_types)}) as block_out_channels ({len(block_out_channels)})"
            )
        if (
            isinstance(num_train_timesteps, bool)
            or int(num_train_timesteps) != num_train_timesteps
            or num_train_timesteps < 2
        ):
            raise NonnormalError(
                f"diffusers-unet2d num_train_timesteps must be an integer >= 2, got {num_train_timesteps!r}"
            )
        self.shape = tuple(shape)
        self.num_train_timesteps = int(num_train_timesteps)
        self.unet = UNet2DModel(
            sample_size=H if H == W else (H, W),
            in_channels=C,
            out_channels=C,
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            down_block_types=tuple(down_block_types),
            up_block_types=tuple(up_block_types),
            mid_block_type=mid_block_type,
            norm_num_groups=norm_num_groups,
            attention_head_dim=attention_head_dim,
            dropout=dropout,
            act_fn=act_fn,
            flip_sin_to_cos=flip_sin_to_cos,
            freq_shift=freq_shift,
            center_input_sample=center_input_sample,
            downsample_type=downsample_type,
            upsample_type=upsample_type,
            resnet_time_scale_shift=resnet_time_scale_shift,
            add_attention=add_attention,
            norm_eps=norm_eps,
            time_embedding_type="positional",
            num_train_timesteps=self.num_train_timesteps,
            num_class_embeds=self.num_classes + 1 if self.num_classes else None,
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        y = class_labels_or_null(class_labels, x.shape[0], self.num_classes, x.device)
        return unet_eps(self.unet, x, t, self.num_train_timesteps, y)


def unet_eps(
    unet: nn.Module, x: torch.Tensor, t: torch.Tensor, num_train_timesteps: int, class_labels=None
) -> torch.Tensor:
    """``unet``'s output at nonnormal's times ``t`` (the UNet sees timesteps ``t N - 1``, in float64)."""
    t = torch.as_tensor(t, device=x.device)
    k = t_to_timestep(t.to(torch.float64 if x.device.type != "mps" else torch.float32), num_train_timesteps)
    extra = {} if class_labels is None else {"class_labels": class_labels}
    return unet(x, k.reshape(-1).expand(x.shape[0]), **extra).sample


class NonNormalNet(UNet2DModel):
    """Any nonnormal network as a diffusers model, so that a ``DDPMPipeline`` can hold it.

    ``forward(sample, timestep)`` takes diffusers' integer timesteps and returns ``.sample``
    (the predicted noise) like ``UNet2DModel``; ``eps(x, t)`` is the network at nonnormal's times.
    It subclasses ``UNet2DModel`` for that interface only (what ``DDPMPipeline`` declares it holds;
    none of UNet2DModel's layers are built), so a pipeline loads it without a type warning.
    ``plugins`` relative to the model's folder are loaded from there by :meth:`from_pretrained`;
    ``schedule`` is the run's (exports record it), checked by a Diffusion that ``eps`` is used with.
    """

    @register_to_config
    def __init__(
        self,
        net: str = "unet",
        net_options: dict | None = None,
        shape: list[int] | None = None,
        num_train_timesteps: int = 1000,
        sample_size: int | list[int] = 8,
        in_channels: int = 1,
        out_channels: int = 1,
        plugins: list[str] | None = None,
        schedule: str | None = None,
    ):
        ModelMixin.__init__(self)  # not UNet2DModel's: its layers are not ours
        from ... import nets, schedules

        load_plugins(plugins)
        if schedule is not None:  # the run's: a Diffusion with another schedule refuses eps (nonnormal.consistency)
            self.schedule = schedules.get(schedule)
        self.num_train_timesteps = int(num_train_timesteps)
        # (not self.net: ModelMixin looks config keys up before submodules)
        self.network = nets.build(net, tuple(shape or (in_channels, sample_size, sample_size)), **(net_options or {}))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        with plugin_folder(Path(pretrained_model_name_or_path) / (kwargs.get("subfolder") or "")):
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    def eps(self, x: torch.Tensor, t: torch.Tensor, **extra) -> torch.Tensor:
        return self.network(x, t, **extra)

    def forward(self, sample: torch.Tensor, timestep, class_labels=None, return_dict: bool = True):
        k = torch.as_tensor(timestep, device=sample.device, dtype=torch.float64)
        t = timestep_to_t(k, self.num_train_timesteps).reshape(-1).expand(sample.shape[0]).to(sample.dtype)
        out = self.network(sample, t, **({} if class_labels is None else {"class_labels": class_labels}))
        return UNet2DOutput(sample=out) if return_dict else (out,)
