"""ControlNet and T2I-Adapter for the U-Net denoisers: the image `UNet` and the (2+1)D / 3D `VideoUNet`.

Owns: `UNetControlNet`, `UNetAdapter`, `LatentGridEncoder` (a condition clip -> features on the latent grid),
`is_unet`, `describe` (a U-Net's architecture: what a control records and is checked against),
`build_unet_control`, `check_unet_fits` and `unet_forward` (the U-Net run with controls through hooks).
Does not own: `ControlConfig`, saving / loading, the `Controlled` wrapper and the DiT controls (`control.py`
dispatches here by denoiser type), the conditions (`data/conditions.py`), training (`train/control_recipe.py`).

Both methods reach the U-Net's `UNetBackbone` through hooks and never edit its math. A forward pre-hook on the
backbone sees its input x (video latents (B, C, f, h, w), or the image U-Net's (B, f*C, h, w) with the latent
frames folded into channels), the timestep and the text; every control's residuals are computed there and
added, times the control's scale, by hooks on the blocks they join.

- ControlNet (Zhang et al. 2023, Eq. 2 / Fig. 3): y_c = F(x; Theta) + Z(F(x + Z(c; Theta_z1); Theta_c); Theta_z2).
  Theta_c is a trainable copy of the encoder (time embedding, input conv, every down block, the middle block)
  initialised from the base. The condition c enters through a small conv encoder and a zero 1x1 conv Z added to
  the copy's input-conv features; the input conv's and every copied down block's output go through their own zero
  1x1 convs and are added to the skip connections the decoder reads (a pre-hook on the up ResBlock that
  concatenates each), the middle block's output through another onto the base's middle block output. The base's
  encoder stream itself is untouched.
- T2I-Adapter (Mou et al. 2023, Eq. 2): F_c = F_AD(C); F_enc^i <- F_enc^i + F_c^i. A small multi-scale conv net of
  the condition alone (no timestep, no text, no z_t), one zero-initialised 1x1 head per resolution, added to the
  encoder's features at the end of each resolution level (before its downsample): they flow on through the
  encoder and into the skips.

The condition (B, C_cond, F, H, W) in pixels is encoded per frame (3x3 convs, stride 1, 2, 2), average-pooled to the
latent rows and columns and, along time, averaged over the frames the codec folds into each latent frame (latent
frame 0 <- frame 0, latent frame j <- frames r(j-1)+1 .. rj for F = 1 + r(f-1); `tokenizers/layers.py`), or, with
`frames_per_token` r, those frames stacked as channels before the convs (`group_frames`). The image
U-Net then folds the latent frames into channels, as it does its input. Every path into the base starts at zero:
a fresh control is an exact no-op, and scale 0 is one whatever the weights.
"""

from __future__ import annotations

import copy
from dataclasses import asdict
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .blocks import Downsample, ResBlock, TextCond, _per_frame, zero_
from ..control_parts import conv_stem, group_frames
from .unet import UNet, UNetBackbone
from .video_unet import VideoUNet
from ..errors import CheckpointError, ConfigError

Key = tuple[str, int]  # where a residual goes: ("skip", j) the j-th skip, ("mid", 0), ("down", k) down block k's output


def is_unet(denoiser: Any) -> bool:
    return isinstance(denoiser, (UNet, VideoUNet))


def describe(denoiser: Any) -> str:
    """A U-Net's architecture in one line (its config but dropout); another denoiser's class name."""
    if not is_unet(denoiser):
        return type(denoiser).__name__
    conf = {k: v for k, v in asdict(denoiser.config).items() if k != "dropout"}
    return f"{type(denoiser).__name__}({', '.join(f'{k}={v}' for k, v in conf.items())})"


def to_latent_grid(y: Tensor, grid: tuple[int, int, int]) -> Tensor:
    """(B, D, F, H', W') -> (B, D, f, h, w): mean over each latent position's pixels and its frames (the codec's
    causal grouping when F = 1 + r(f-1), else evenly spaced bins)."""
    f, h, w = grid
    B, D, F_ = y.shape[:3]
    y = F.adaptive_avg_pool3d(y, (F_, h, w))  # (B, D, F, h, w)
    if f > 1 and (F_ - 1) % (f - 1) == 0:
        r = (F_ - 1) // (f - 1)
        rest = y[:, :, 1:].reshape(B, D, f - 1, r, h, w).mean(3)  # (B, D, f-1, h, w)
        return torch.cat([y[:, :, :1], rest], 2)
    return F.adaptive_avg_pool3d(y, (f, h, w))


class LatentGridEncoder(nn.Module):
    """Condition (B, C_cond, F, H, W) -> features (B, width, f, h, w) on the latent grid of the backbone's input x
    (video latents (B, C, f, h, w), or the image U-Net's (B, f*C, h, w)); `fold` lays them out as x is.
    With `config.frames_per_token` r > 1 each latent frame's r frames are stacked as channels before the convs
    (`group_frames`) instead of averaged after them, so the features see where the object is in each frame."""

    def __init__(self, config: Any, base: UNet | VideoUNet) -> None:
        super().__init__()
        self.r = getattr(config, "frames_per_token", 1)
        self.net = conv_stem(config.cond_channels * self.r, config.enc_channels)
        self.video = isinstance(base, VideoUNet)
        self.frames = 1 if self.video else max(base.config.frames, 1)  # latent frames the image U-Net folds

    def forward(self, cond: Tensor, x: Tensor) -> Tensor:
        grid = (x.shape[2], *x.shape[3:]) if self.video else (self.frames, *x.shape[2:])  # (f, h, w)
        if self.r > 1:
            cond = group_frames(cond, grid[0], self.r)  # (B, C*r, f, H, W)
        return to_latent_grid(_per_frame(self.net, cond), grid)  # (B, width, f, h, w)

    def fold(self, y: Tensor) -> Tensor:
        """(B, D, f, h, w) -> the backbone's layout: as is for video, (B, f*D, h, w) for the image U-Net."""
        return y if self.video else rearrange(y, "b c f h w -> b (f c) h w")


def _zero_conv(cin: int, cout: int) -> nn.Conv2d:
    return zero_(nn.Conv2d(cin, cout, 1))  # applied per frame (`_per_frame`) to videos


def _conv(layer: nn.Module, x: Tensor) -> Tensor:
    """The backbone's input conv on x as the backbone runs it: a Conv3d directly, a Conv2d frame by frame."""
    return layer(x) if isinstance(layer, nn.Conv3d) else _per_frame(layer, x)


def _width(layers: nn.ModuleList) -> int:
    """Output channels of a down / middle block (its first layer sets them)."""
    first = layers[0]
    return first.norm2.num_channels if isinstance(first, ResBlock) else first.conv.out_channels


class UNetControlNet(nn.Module):
    """ControlNet for a U-Net: residuals(x, t, text, cond) -> {skip j / mid: residual}."""

    def __init__(self, config: Any, base: UNet | VideoUNet) -> None:
        super().__init__()
        bb, self.config, e = base.backbone, config, config.enc_channels
        self.encoder = LatentGridEncoder(config, base)
        self.hint = _zero_conv(e * self.encoder.frames, bb.conv_in.out_channels)  # Z(c; Theta_z1)
        # Theta_c: the encoder half of the backbone, initialised from the base
        self.time_embed, self.pooled_proj = copy.deepcopy(bb.time_embed), copy.deepcopy(bb.pooled_proj)
        self.conv_in, self.down, self.mid = copy.deepcopy(bb.conv_in), copy.deepcopy(bb.down), copy.deepcopy(bb.mid)
        for p in self.parameters():
            p.requires_grad_(True)
        widths = [bb.conv_in.out_channels] + [_width(layers) for layers in bb.down]
        self.outs = nn.ModuleList([_zero_conv(w, w) for w in widths])  # Z(.; Theta_z2), one per skip
        self.mid_out = _zero_conv(_width(bb.mid), _width(bb.mid))

    def residuals(self, x: Tensor, t: Tensor, text: TextCond | None, cond: Tensor) -> dict[Key, Tensor]:
        emb = self.time_embed(t)  # (B, E), as the backbone makes it
        if text is not None and text.pooled is not None:
            emb = emb + self.pooled_proj(text.pooled.to(emb.dtype))
        h = _conv(self.conv_in, x) + _per_frame(self.hint, self.encoder.fold(self.encoder(cond, x)))
        out = {("skip", 0): _per_frame(self.outs[0], h)}
        for k, layers in enumerate(self.down):
            h = UNetBackbone._run(layers, h, emb, text)
            out[("skip", k + 1)] = _per_frame(self.outs[k + 1], h)
        h = UNetBackbone._run(self.mid, h, emb, text)
        out[("mid", 0)] = _per_frame(self.mid_out, h)
        return out


class UNetAdapter(nn.Module):
    """T2I-Adapter for a U-Net: features of the condition alone, one zero head per resolution level."""

    def __init__(self, config: Any, base: UNet | VideoUNet) -> None:
        super().__init__()
        bb, self.config, e = base.backbone, config, config.enc_channels
        self.encoder = LatentGridEncoder(config, base)
        # the last down block of each level (the one before a Downsample, and the very last)
        ends = [k for k, layers in enumerate(bb.down)
                if not isinstance(layers[0], Downsample)
                and (k + 1 == len(bb.down) or isinstance(bb.down[k + 1][0], Downsample))]
        self.targets = ends
        self.body = nn.ModuleList([
            nn.Sequential(nn.Conv2d(e, e, 3, stride=2 if level else 1, padding=1), nn.SiLU(),
                          nn.Conv2d(e, e, 3, padding=1), nn.SiLU())
            for level in range(len(ends))
        ])  # fmt: skip
        self.heads = nn.ModuleList([_zero_conv(e * self.encoder.frames, _width(bb.down[k])) for k in ends])

    def residuals(self, x: Tensor, t: Tensor, text: TextCond | None, cond: Tensor) -> dict[Key, Tensor]:
        y = self.encoder(cond, x)  # (B, e, f, h, w), independent of x's values, t and the text
        out = {}
        for k, body, head in zip(self.targets, self.body, self.heads):
            y = _per_frame(body, y)  # (B, e, f, h / 2^level, w / 2^level)
            out[("down", k)] = _per_frame(head, self.encoder.fold(y))
        return out


UNetControl = UNetControlNet | UNetAdapter


def build_unet_control(config: Any, base: UNet | VideoUNet) -> UNetControl:
    """The control `config.method` names for `base` (`config` filled in by `control.make_control` / read back)."""
    if config.method not in ("controlnet", "t2i-adapter"):
        raise ConfigError(f"control: method {config.method!r} attaches to a DiT; on a U-Net choose controlnet or"
                          " t2i-adapter")
    return UNetControlNet(config, base) if config.method == "controlnet" else UNetAdapter(config, base)


def check_unet_fits(config: Any, base: Any) -> None:
    """A U-Net control on another denoiser or another U-Net architecture: CheckpointError."""
    if describe(base) != config.base_arch:
        raise CheckpointError(f"control was trained for a {config.base_arch}; this model's denoiser is a"
                              f" {describe(base)}: use the base model it was trained from")


def unet_forward(base: UNet | VideoUNet, live: list[tuple[UNetControl, Tensor, Tensor | float]], z_t: Tensor,
                 t: Tensor | float, cond: TextCond | None) -> Tensor:
    """`base(z_t, t, cond)` with each live (control, its condition (B, C_cond, F, H, W), scale)'s residuals times
    the scale (a float, or a (B, 1, 1) tensor that switches samples on or off: `Controlled`'s beta) added where
    they go."""
    bb = base.backbone
    added: dict[Key, Tensor] = {}

    def pre(_m: nn.Module, args: tuple) -> None:
        x, t_, text = args  # the backbone's input, (B,) timesteps, text
        for module, c, s in live:
            for key, r in module.residuals(x, t_, text, c.to(x.device, x.dtype)).items():
                sr = s.reshape(-1, *([1] * (r.dim() - 1))) * r if isinstance(s, Tensor) else s * r
                added[key] = added[key] + sr if key in added else sr

    def add_out(key: Key):
        def hook(_m: nn.Module, _args: tuple, out: Tensor) -> Tensor:
            return out + added[key] if key in added else out

        return hook

    def add_skip(j: int):  # the up ResBlock's input is cat([h, skip_j]) on channels: add to the skip's part
        def hook(_m: nn.Module, args: tuple) -> tuple | None:
            if ("skip", j) not in added:
                return None
            x, emb = args
            r = added[("skip", j)]
            return torch.cat([x[:, : x.shape[1] - r.shape[1]], x[:, x.shape[1] - r.shape[1]:] + r], 1), emb

        return hook

    ups = [layers[0] for layers in bb.up if isinstance(layers[0], ResBlock)]  # read the skips last to first
    handles = [bb.register_forward_pre_hook(pre), bb.mid[-1].register_forward_hook(add_out(("mid", 0)))]
    handles += [layers[-1].register_forward_hook(add_out(("down", k))) for k, layers in enumerate(bb.down)]
    handles += [res.register_forward_pre_hook(add_skip(len(ups) - 1 - i)) for i, res in enumerate(ups)]
    try:
        return base(z_t, t, cond)
    finally:
        for h in handles:
            h.remove()
