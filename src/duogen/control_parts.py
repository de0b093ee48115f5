"""The pieces both paradigms' spatial controls share: the condition encoder and the base model's fingerprint.

Owns: `ConditionEncoder` (a condition clip in pixels -> one feature per token of a latent grid), used by the
DiT ControlNet / T2I-Adapter (`diffusion/control.py`) and the AR control embeddings
(`ar_models/control_embed.py`), and `weights_fingerprint` (the hash a control records of the base it was made
for). A leaf: imports torch only, so `ar_models` and `diffusion` both use it without importing each other.
Does not own: any control method, the conditions themselves (`data/conditions.py`).

Shape notation: B batch, C channels, F frames, H W height width, (f, h, w) the latent grid, D width.
"""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor, nn


class ConditionEncoder(nn.Module):
    """Condition (B, C_cond, F, H, W) -> tokens (B, f*h*w, D) on a latent token grid (f, h, w), raster order.

    Three 3x3 convs (stride 1, 2, 2) per frame with SiLU, then an average pool to the grid. `causal_time`: pool
    frames as a causal video codec groups them (1 + r*k frames -> 1 + k latent frames, the first frame on its
    own), so latent frame j reads the frames the codec put in it; otherwise evenly spaced bins.
    """

    def __init__(self, cond_channels: int, width: int, out_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(cond_channels, width, 3, padding=1), nn.SiLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.SiLU(),
        )  # fmt: skip
        self.proj = nn.Linear(width, out_dim)

    def forward(self, cond: Tensor, grid: tuple[int, int, int], causal_time: bool = False) -> Tensor:
        B, C, F_, H, W = cond.shape
        y = self.net(cond.transpose(1, 2).reshape(B * F_, C, H, W))  # (B*F, width, H/4, W/4)
        y = y.reshape(B, F_, *y.shape[1:]).transpose(1, 2)  # (B, width, F, H/4, W/4)
        f = grid[0]
        if causal_time and f > 1 and (F_ - 1) % (f - 1) == 0:
            r = (F_ - 1) // (f - 1)
            rest = y[:, :, 1:].unflatten(2, (f - 1, r)).mean(3)  # (B, width, f-1, H/4, W/4): frames 1+r(j-1)..rj
            y = torch.cat([y[:, :, :1], rest], dim=2)  # (B, width, f, H/4, W/4)
        y = nn.functional.adaptive_avg_pool3d(y, grid)  # (B, width, f, h, w)
        return self.proj(y.flatten(2).transpose(1, 2))  # (B, f*h*w, D)


def weights_fingerprint(model: nn.Module) -> str:
    """sha256 over a model's parameters and buffers, in state-dict order (first 16 hex digits)."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
