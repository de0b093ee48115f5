"""The 2D U-Net denoiser (DDPM / Stable Diffusion layout) and the U-Net skeleton it shares.

`UNetBackbone` is the encoder-decoder with skip connections: residual blocks
with a time embedding, spatial transformers (self-attention + cross-attention
to text) at chosen resolutions, stride-2 downsampling and nearest upsampling.
It runs on images (B, C, H, W) or, with a video conv kind and temporal
attention, on videos (B, C, F, H, W); `video_unet.py` builds it that way.

`UNet` is the image denoiser. On video latents it folds frames into
channels (`frames` > 0): cheap, and adequate when clips have few latent
frames. This module does not own schedules or samplers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from einops import rearrange
from torch import Tensor, nn

from .blocks import (
    ConvKind,
    Downsample,
    ResBlock,
    SpatialTransformer,
    TemporalTransformer,
    TextCond,
    TimestepEmbedder,
    Upsample,
    group_norm,
    timesteps_for,
    zero_,
)
from ..errors import ConfigError


class UNetBackbone(nn.Module):
    """U-Net over (B, C, H, W) or (B, C, F, H, W); forward(x, t (B,), cond) -> (B, out_ch, ...)."""

    def __init__(self, in_ch: int, out_ch: int, channels: int, channel_mult: list[int], num_res_blocks: int,
                 attention_levels: list[int], heads: int, context_dim: int, transformer_depth: int = 1,
                 dropout: float = 0.0, conv: ConvKind = "2d", temporal_attention: bool = False,
                 positions: bool = False, temporal_text: bool = False, joint_attention: str = "none") -> None:
        super().__init__()
        emb_dim = 4 * channels
        self.time_embed = TimestepEmbedder(emb_dim)
        self.pooled_proj = nn.Linear(context_dim, emb_dim)  # sentence vector -> global conditioning
        self.conv_in = nn.Conv2d(in_ch, channels, 3, padding=1) if conv != "3d" else nn.Conv3d(in_ch, channels, 3, padding=1)

        def attn_layers(ch: int, level: int | None) -> list[nn.Module]:
            """Spatial (+ temporal) attention at the levels that have it; level None = the bottleneck."""
            if level is not None and level not in attention_levels:
                return []
            # one space-time attention replaces spatial + temporal: at the bottleneck ("mid") or everywhere ("all")
            joint = joint_attention == "all" or (joint_attention == "mid" and level is None)
            layers: list[nn.Module] = [
                SpatialTransformer(ch, heads, context_dim, transformer_depth, positions=positions, joint=joint)
            ]
            if temporal_attention and not joint:
                layers.append(TemporalTransformer(ch, heads, context_dim if temporal_text else None))
            return layers

        res = lambda i, o: ResBlock(i, o, emb_dim, conv, dropout)  # noqa: E731
        self.down = nn.ModuleList()
        skips, ch = [channels], channels
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                self.down.append(nn.ModuleList([res(ch, channels * mult), *attn_layers(channels * mult, level)]))
                ch = channels * mult
                skips.append(ch)
            if level < len(channel_mult) - 1:
                self.down.append(nn.ModuleList([Downsample(ch)]))
                skips.append(ch)
        # the bottleneck always attends (to itself and to the text)
        self.mid = nn.ModuleList([res(ch, ch), *attn_layers(ch, None), res(ch, ch)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                self.up.append(nn.ModuleList([res(ch + skips.pop(), channels * mult), *attn_layers(channels * mult, level)]))
                ch = channels * mult
            if level > 0:
                self.up.append(nn.ModuleList([Upsample(ch)]))
        self.norm_out = group_norm(ch)
        self.conv_out = zero_(nn.Conv2d(ch, out_ch, 3, padding=1) if conv != "3d" else nn.Conv3d(ch, out_ch, 3, padding=1))
        self.conv = conv

    def _conv_io(self, layer: nn.Module, x: Tensor) -> Tensor:
        if x.dim() == 5 and isinstance(layer, nn.Conv2d):
            b = x.shape[0]
            return rearrange(layer(rearrange(x, "b c f h w -> (b f) c h w")), "(b f) c h w -> b c f h w", b=b)
        return layer(x)

    @staticmethod
    def _run(layers: nn.ModuleList, h: Tensor, emb: Tensor, cond: TextCond | None) -> Tensor:
        for layer in layers:
            if isinstance(layer, ResBlock):
                h = layer(h, emb)
            elif isinstance(layer, (SpatialTransformer, TemporalTransformer)):
                h = layer(h, cond)
            else:  # Downsample, Upsample
                h = layer(h)
        return h

    def forward(self, x: Tensor, t: Tensor, cond: TextCond | None) -> Tensor:
        emb = self.time_embed(t)  # (B, E)
        if cond is not None and cond.pooled is not None:
            emb = emb + self.pooled_proj(cond.pooled.to(emb.dtype))
        h = self._conv_io(self.conv_in, x)
        hs = [h]
        for layers in self.down:
            h = self._run(layers, h, emb, cond)
            hs.append(h)
        h = self._run(self.mid, h, emb, cond)
        for layers in self.up:
            if isinstance(layers[0], ResBlock):
                h = torch.cat([h, hs.pop()], dim=1)  # skip connection on channels
            h = self._run(layers, h, emb, cond)
        return self._conv_io(self.conv_out, torch.nn.functional.silu(self.norm_out(h)))


def check_backbone_args(owner: str, channels: int, channel_mult: list[int], attention_levels: list[int], heads: int) -> None:
    """Raise ConfigError (prefixed with `owner`) unless `UNetBackbone` can be built from these widths."""
    if channels % 8 or not channel_mult or any(m < 1 for m in channel_mult):
        raise ConfigError(f"{owner}: channels must be a multiple of 8 and channel_mult positive integers")
    if any(not 0 <= lv < len(channel_mult) for lv in attention_levels):
        raise ConfigError(f"{owner}: attention_levels must index channel_mult (0..{len(channel_mult) - 1})")
    if any((channels * m) % heads for m in channel_mult):
        raise ConfigError(f"{owner}: every level width must be divisible by heads={heads}")


@dataclass
class UNetConfig:
    """2D U-Net. `frames` > 0 means inputs are videos (B, C, F, H, W) folded into F*C channels."""

    in_channels: int = 4
    frames: int = 0
    channels: int = 64
    channel_mult: list[int] = field(default_factory=lambda: [1, 2])
    num_res_blocks: int = 1
    attention_levels: list[int] = field(default_factory=lambda: [1])
    heads: int = 4
    context_dim: int = 128
    transformer_depth: int = 1
    dropout: float = 0.0

    def check(self) -> None:
        check_backbone_args("unet", self.channels, self.channel_mult, self.attention_levels, self.heads)


UNET_PRESETS: dict[str, UNetConfig] = {
    "tiny": UNetConfig(channels=64, channel_mult=[1, 2], num_res_blocks=1, attention_levels=[1], heads=4),
    "small": UNetConfig(channels=128, channel_mult=[1, 2, 2], num_res_blocks=2, attention_levels=[1, 2], heads=8),
    "base": UNetConfig(channels=256, channel_mult=[1, 2, 4], num_res_blocks=2, attention_levels=[1, 2], heads=8),
}


class UNet(nn.Module):
    """2D U-Net denoiser (residual blocks, self-attention, cross-attention to text).

    forward(z_t, t, cond) -> prediction, same shape as z_t:
      z_t: (B, C, H, W), or (B, C, F, H, W) when config.frames = F > 0;
      t: (B,) or scalar timestep; cond: TextCond (tokens (B, T, context_dim)) or None.
    H and W must be divisible by 2 ** (len(channel_mult) - 1).
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        c = config.in_channels * max(config.frames, 1)
        self.backbone = UNetBackbone(
            c, c, config.channels, config.channel_mult, config.num_res_blocks, config.attention_levels,
            config.heads, config.context_dim, config.transformer_depth, config.dropout, conv="2d",
        )

    def forward(self, z_t: Tensor, t: Tensor | float, cond: TextCond | None) -> Tensor:
        video = self.config.frames > 0
        want = 5 if video else 4
        if z_t.dim() != want or z_t.shape[1] != self.config.in_channels or (video and z_t.shape[2] != self.config.frames):
            raise ValueError(
                f"UNet expects z_t of shape (B, {self.config.in_channels}, "
                f"{str(self.config.frames) + ', ' if video else ''}H, W); got {tuple(z_t.shape)}"
            )
        t = timesteps_for(t, z_t.shape[0], z_t.device)
        x = rearrange(z_t, "b c f h w -> b (f c) h w") if video else z_t
        out = self.backbone(x, t, cond)
        return rearrange(out, "b (f c) h w -> b c f h w", f=self.config.frames) if video else out
