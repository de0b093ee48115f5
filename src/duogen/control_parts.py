"""The pieces both paradigms' spatial controls share: the condition encoder and the base model's fingerprint.

Owns: `ConditionEncoder` (a condition clip in pixels -> one feature per token of a latent grid; its `conv_stem`
and `group_frames`, which the U-Net controls use too), used by the
DiT ControlNet / T2I-Adapter (`diffusion/control.py`) and the AR control embeddings
(`ar_models/control_embed.py`), and `weights_fingerprint` (the hash a control records of the base it was made
for). A leaf (torch and `duogen.errors`), so `ar_models` and `diffusion` both use it without importing each other.
Does not own: any control method, the conditions themselves (`data/conditions.py`).

Shape notation: B batch, C channels, F frames, H W height width, (f, h, w) the latent grid, D width.
"""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor, nn

from .errors import DataError


class ConditionEncoder(nn.Module):
    """Condition (B, C_cond, F, H, W) -> tokens (B, f*h*w, D) on a latent token grid (f, h, w), raster order.

    Three 3x3 convs (stride 1, 2, 2) per frame with SiLU, then an average pool to the grid. With
    `frames_per_token` r > 1 the frames are grouped like the codec's latent frames (frame 0 alone, then r at a
    time; F = 1 + r (f - 1)) and each group's frames are stacked as channels before the convs (frame 0 repeated
    to fill its group), so a token sees where the object is in each of its frames instead of their average.
    """

    def __init__(self, cond_channels: int, width: int, out_dim: int, frames_per_token: int = 1) -> None:
        super().__init__()
        self.r = frames_per_token
        self.net = conv_stem(cond_channels * frames_per_token, width)
        self.proj = nn.Linear(width, out_dim)

    def forward(self, cond: Tensor, grid: tuple[int, int, int]) -> Tensor:
        if self.r > 1:
            cond = group_frames(cond, grid[0], self.r)  # (B, C*r, f, H, W)
        B, C, F_, H, W = cond.shape
        y = self.net(cond.transpose(1, 2).reshape(B * F_, C, H, W))  # (B*F, width, H/4, W/4)
        y = y.reshape(B, F_, *y.shape[1:]).transpose(1, 2)  # (B, width, F, H/4, W/4)
        y = nn.functional.adaptive_avg_pool3d(y, grid)  # (B, width, f, h, w)
        return self.proj(y.flatten(2).transpose(1, 2))  # (B, f*h*w, D)

    def group_frames(self, cond: Tensor, f: int) -> Tensor:
        """(B, C, 1 + r (f - 1), H, W) -> (B, C*r, f, H, W) with this encoder's r (`group_frames`)."""
        return group_frames(cond, f, self.r)


def group_frames(cond: Tensor, f: int, r: int) -> Tensor:
    """(B, C, 1 + r (f - 1), H, W) -> (B, C*r, f, H, W): each latent frame's r frames stacked as channels, grouped
    like the codec's latent frames (frame 0 alone, repeated to fill its group, then r frames at a time)."""
    B, C, F_, H, W = cond.shape
    if F_ != 1 + r * (f - 1):
        raise DataError(f"control condition of {F_} frames: this control groups 1 + {r}k frames onto"
                        f" {f} latent frames; give the model's frame count")
    x = torch.cat([cond[:, :, :1].expand(B, C, r - 1, H, W), cond], 2)  # (B, C, f*r, H, W)
    return x.reshape(B, C, f, r, H, W).transpose(2, 3).reshape(B, C * r, f, H, W)


def conv_stem(cond_channels: int, width: int) -> nn.Sequential:
    """Three 3x3 convs (stride 1, 2, 2) with SiLU: a condition frame (C_cond, H, W) -> (width, H/4, W/4)."""
    return nn.Sequential(
        nn.Conv2d(cond_channels, width, 3, padding=1), nn.SiLU(),
        nn.Conv2d(width, width, 3, stride=2, padding=1), nn.SiLU(),
        nn.Conv2d(width, width, 3, stride=2, padding=1), nn.SiLU(),
    )  # fmt: skip


def weights_fingerprint(model: nn.Module) -> str:
    """sha256 over a model's parameters and buffers, in state-dict order (first 16 hex digits)."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
