"""The video U-Net denoiser: (2+1)D or full 3D convolutions plus temporal attention.

It is the `UNetBackbone` of `unet.py` run on (B, C, F, H, W) with a video
conv kind: "2+1d" factorises each 3x3x3 conv into a 3x3 spatial conv and a
3-tap temporal conv (R(2+1)D, Tran et al. 2018; the Video Diffusion Models
layout of Ho et al. 2022), "3d" uses full 3x3x3 convs. Attention, at the
chosen levels and the bottleneck, is either factorized (spatial transformers
attend within each frame and to the text, temporal transformers along frames
at each position; `joint_attention="none"`) or joint over all of a clip's
positions (`"all"`, or `"mid"` for the bottleneck only), like the DiT's;
`positions` gives the attention tokens (frame, row, column) embeddings.
Frames are never downsampled, so any clip length works. Schedules and
samplers live elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from torch import Tensor, nn

from .blocks import TextCond, timesteps_for
from .unet import UNetBackbone, check_backbone_args


@dataclass
class VideoUNetConfig:
    in_channels: int = 4
    conv: Literal["2+1d", "3d"] = "2+1d"
    temporal_attention: bool = True
    positions: bool = False  # spatial transformers add a learned (frame, row, column) embedding
    temporal_text: bool = False  # temporal transformers cross-attend to the text too
    # "mid": the bottleneck attends over space and time jointly; "all": every attention level does
    # (no temporal transformers then); "none": spatial then temporal attention everywhere
    joint_attention: Literal["none", "mid", "all"] = "none"
    channels: int = 64
    channel_mult: list[int] = field(default_factory=lambda: [1, 2])
    num_res_blocks: int = 1
    attention_levels: list[int] = field(default_factory=lambda: [1])
    heads: int = 4
    context_dim: int = 128
    transformer_depth: int = 1
    dropout: float = 0.0

    def check(self) -> None:
        check_backbone_args("video_unet", self.channels, self.channel_mult, self.attention_levels, self.heads)


VIDEO_UNET_PRESETS: dict[str, VideoUNetConfig] = {
    # tiny: joint space-time attention with (frame, row, column) positions at its one attention level and the
    # bottleneck. At 16 minutes on one core it beat spatial + temporal attention (with the same fixed
    # (2+1)D convs): 871 vs 661 steps; color / direction / shape 99 / 67 / 25% vs 91 / 60 / 14% (README).
    "tiny": VideoUNetConfig(channels=64, channel_mult=[1, 2], num_res_blocks=1, attention_levels=[1], heads=4,
                            positions=True, joint_attention="all"),
    "small": VideoUNetConfig(channels=128, channel_mult=[1, 2, 2], num_res_blocks=2, attention_levels=[1, 2], heads=8),
    "base": VideoUNetConfig(channels=256, channel_mult=[1, 2, 4], num_res_blocks=2, attention_levels=[1, 2], heads=8),
}


class VideoUNet(nn.Module):
    """Video U-Net denoiser.

    forward(z_t, t, cond) -> prediction (B, C, F, H, W):
      z_t: (B, C, F, H, W) with C = config.in_channels, any F >= 1, H and W divisible by
      2 ** (len(channel_mult) - 1); t: (B,) or scalar; cond: TextCond (B, T, context_dim) or None.
    """

    def __init__(self, config: VideoUNetConfig) -> None:
        super().__init__()
        self.config = config
        c = config.in_channels
        self.backbone = UNetBackbone(
            c, c, config.channels, config.channel_mult, config.num_res_blocks, config.attention_levels,
            config.heads, config.context_dim, config.transformer_depth, config.dropout,
            conv=config.conv, temporal_attention=config.temporal_attention,
            positions=config.positions, temporal_text=config.temporal_text, joint_attention=config.joint_attention,
        )

    def forward(self, z_t: Tensor, t: Tensor | float, cond: TextCond | None) -> Tensor:
        if z_t.dim() != 5 or z_t.shape[1] != self.config.in_channels:
            raise ValueError(f"VideoUNet expects z_t of shape (B, {self.config.in_channels}, F, H, W); got {tuple(z_t.shape)}")
        return self.backbone(z_t, timesteps_for(t, z_t.shape[0], z_t.device), cond)
