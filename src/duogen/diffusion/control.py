"""Spatial control for the DiT denoiser: a ControlNet branch and a T2I-Adapter, several at once.

Owns: `ControlConfig`, `ConditionEncoder`, `DiTControlNet`, `DiTAdapter`,
`Controlled` (the base denoiser plus controls, same `forward(z_t, t, cond)`),
`as_condition`, `save_control` / `load_control`, `check_fits` (the base a control was made for).
Does not own: the conditions themselves (`data/conditions.py`), training
recipes, the CLI, the U-Net variant, GLIGEN, AR control.

Both methods reach the DiT without touching its math: `Controlled.forward`
installs a forward pre-hook on the first block (which sees the patch tokens x,
the conditioning vector c, the text and the token grid) and forward hooks that
add each control's residual to a block's output, then removes them.

- ControlNet (Zhang et al. 2023, Fig. 2; the PixArt-delta form for a DiT):
  y_c = F(x; Theta) + Z(F(x + Z(c; Theta_z1); Theta_c); Theta_z2): a trainable
  copy Theta_c of the first `blocks` DiT blocks reads the base's patch tokens
  plus the zero-projected condition features; each copied block's output goes
  through its own zero-initialised projection Z and is added to the output of
  the matching base block.
- T2I-Adapter (Mou et al. 2023, Eq. 2): F_c = F_AD(C); F_enc^i + F_c^i. A small
  conv encoder of the condition alone (no timestep, no text) whose features go
  through zero-initialised heads, one per block, added to the first `blocks`
  block outputs.

The condition (B, C_cond, F, H, W) in pixels is encoded per frame by a few 3x3
convs and average-pooled to the DiT's token grid (f, h, w). Every path into the
base starts at zero, so a fresh control is an exact no-op, and scale 0 is one
whatever the weights.
"""

from __future__ import annotations

import copy
import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from .blocks import TextCond, zero_
from ..control_parts import ConditionEncoder, weights_fingerprint
from .dit import DiT
from ..errors import CheckpointError, ConfigError, DataError

Method = Literal["controlnet", "t2i-adapter"]


@dataclass
class ControlConfig:
    method: Method = "controlnet"
    cond_channels: int = 1  # channels of the condition clip (1: a mask, edges or rasterised boxes)
    blocks: int = 2  # the first `blocks` DiT blocks receive a residual (ControlNet copies them)
    enc_channels: int = 32  # width of the condition encoder
    frames_per_token: int = 1  # 1: condition frames averaged onto the token grid; r: the codec's 1 + r*k grouping, stacked
    base_hidden: int = 0  # the DiT's width / depth this control was made for (filled by `make_control`)
    base_depth: int = 0
    base_fingerprint: str = ""  # sha256 of the base's weights at `make_control` (another base of the same shape: a warning)

    def check(self) -> None:
        if self.method not in ("controlnet", "t2i-adapter"):
            raise ConfigError(f"control: method {self.method!r}; choose controlnet or t2i-adapter")
        if self.cond_channels < 1 or self.blocks < 1 or self.enc_channels < 1 or self.frames_per_token < 1:
            raise ConfigError("control: cond_channels, blocks, enc_channels and frames_per_token must be >= 1")
        if self.base_depth and self.blocks > self.base_depth:
            raise ConfigError(f"control: blocks={self.blocks} exceeds the DiT's depth {self.base_depth}")


class DiTControlNet(nn.Module):
    """ControlNet for a DiT: residuals(x, c, text, grid, cond) -> list of (B, N, D), one per controlled block."""

    def __init__(self, config: ControlConfig, base: DiT) -> None:
        super().__init__()
        self.config = config
        d = base.config.hidden
        self.encoder = ConditionEncoder(config.cond_channels, config.enc_channels, d, config.frames_per_token)
        self.hint = zero_(nn.Linear(d, d))  # Z(c; Theta_z1)
        self.blocks = copy.deepcopy(base.blocks[: config.blocks])  # Theta_c, initialised from the base
        for p in self.blocks.parameters():
            p.requires_grad_(True)
        self.outs = nn.ModuleList([zero_(nn.Linear(d, d)) for _ in range(config.blocks)])  # Z(.; Theta_z2)

    def residuals(self, x: Tensor, c: Tensor, text: TextCond | None, grid: tuple[int, int, int], cond: Tensor) -> list[Tensor]:
        h = x + self.hint(self.encoder(cond, grid))  # (B, N, D)
        out = []
        for blk, proj in zip(self.blocks, self.outs):
            h = blk(h, c, text, grid)
            out.append(proj(h))
        return out


class DiTAdapter(nn.Module):
    """T2I-Adapter for a DiT: features of the condition alone, one zero-initialised head per controlled block."""

    def __init__(self, config: ControlConfig, base: DiT) -> None:
        super().__init__()
        self.config = config
        d = base.config.hidden
        self.encoder = ConditionEncoder(config.cond_channels, config.enc_channels, d, config.frames_per_token)
        self.body = nn.Sequential(nn.SiLU(), nn.Linear(d, d), nn.SiLU())
        self.heads = nn.ModuleList([zero_(nn.Linear(d, d)) for _ in range(config.blocks)])

    def residuals(self, x: Tensor, c: Tensor, text: TextCond | None, grid: tuple[int, int, int], cond: Tensor) -> list[Tensor]:
        f = self.body(self.encoder(cond, grid))  # (B, N, D), independent of x, t and the text
        return [head(f) for head in self.heads]


ControlModule = DiTControlNet | DiTAdapter


def base_fingerprint(base: DiT) -> str:
    """sha256 over the base's parameters, in state-dict order (first 16 hex digits)."""
    return weights_fingerprint(base)


def as_condition(x: Any) -> Tensor:
    """A condition from `data/conditions.py`, (F, H, W) or (C, F, H, W) bool / float, -> (1, C, F, H, W) float in [0, 1]."""
    t = torch.as_tensor(x).float()
    if t.dim() == 3:
        t = t[None]
    if t.dim() != 4:
        raise DataError(f"condition: expected (F, H, W) or (C, F, H, W), got {tuple(t.shape)}")
    return t[None]


def make_control(config: ControlConfig, base: DiT) -> ControlModule:
    """A fresh control for `base` (an exact no-op until trained); records the base's width, depth and weights' hash."""
    if not isinstance(base, DiT):
        raise ConfigError(f"control: ControlNet / T2I-Adapter attach to a DiT denoiser here, not {type(base).__name__}")
    config = ControlConfig(
        **{**asdict(config), "base_hidden": base.config.hidden, "base_depth": base.config.depth, "base_fingerprint": base_fingerprint(base)}
    )
    config.check()
    return DiTControlNet(config, base) if config.method == "controlnet" else DiTAdapter(config, base)


@dataclass
class ActiveControl:
    """One control in use: its module, its condition (B or 1, C_cond, F, H, W) and its scale."""

    module: ControlModule
    condition: Tensor
    scale: float = 1.0


class Controlled(nn.Module):
    """A DiT plus any number of controls; `forward(z_t, t, cond)` like the DiT's.

    Output = DiT with block i's output increased by sum_k scale_k * residual_k[i].
    A condition with batch 1 is shared by the whole batch; a batch that is a
    multiple of the condition's (classifier-free guidance doubles it) repeats it.
    """

    def __init__(self, base: DiT, controls: list[ActiveControl]) -> None:
        super().__init__()
        self.base = base
        self.controls = controls
        self.control_modules = nn.ModuleList([a.module for a in controls])
        for a in controls:
            check_fits(a.module.config, base)
            c = a.condition
            if c.dim() != 5 or c.shape[1] != a.module.config.cond_channels:
                raise DataError(
                    f"control condition of shape {tuple(c.shape)}: this {a.module.config.method} reads"
                    f" (B, {a.module.config.cond_channels}, F, H, W); see as_condition"
                )

    @property
    def config(self):  # the sampler and callers read the denoiser's config
        return self.base.config

    def forward(self, z_t: Tensor, t: Tensor | float, cond: TextCond | None) -> Tensor:
        live = [a for a in self.controls if a.scale != 0.0]
        if not live:
            return self.base(z_t, t, cond)
        added: dict[int, Tensor] = {}

        def pre(_m: nn.Module, args: tuple) -> None:
            x, c, text, grid = args
            for a in live:
                cnd = a.condition.to(x.device, x.dtype)
                if cnd.shape[0] != x.shape[0]:
                    if x.shape[0] % cnd.shape[0]:
                        raise ValueError(f"control condition batch {cnd.shape[0]} does not divide the batch {x.shape[0]}")
                    cnd = cnd.repeat(x.shape[0] // cnd.shape[0], 1, 1, 1, 1)
                for i, r in enumerate(a.module.residuals(x, c, text, grid, cnd)):
                    added[i] = added[i] + a.scale * r if i in added else a.scale * r

        def post(i: int):
            def hook(_m: nn.Module, _args: tuple, out: Tensor) -> Tensor:
                return out + added[i] if i in added else out

            return hook

        depth = max(a.module.config.blocks for a in live)
        handles = [self.base.blocks[0].register_forward_pre_hook(pre)]
        handles += [self.base.blocks[i].register_forward_hook(post(i)) for i in range(depth)]
        try:
            return self.base(z_t, t, cond)
        finally:
            for h in handles:
                h.remove()


def check_fits(config: ControlConfig, base: DiT) -> None:
    """Another DiT shape: CheckpointError. Same shape, other weights (e.g. a fine-tuned base): a warning."""
    if not isinstance(base, DiT):
        raise CheckpointError(f"control was trained for a DiT; this model's denoiser is a {type(base).__name__}")
    if (config.base_hidden, config.base_depth) != (base.config.hidden, base.config.depth):
        raise CheckpointError(
            f"control was trained for a DiT of width {config.base_hidden} and depth {config.base_depth};"
            f" this model has {base.config.hidden} and {base.config.depth}: use the base model it was trained from"
        )
    if config.base_fingerprint and config.base_fingerprint != base_fingerprint(base):
        warnings.warn(
            "control was trained on a DiT of this shape with other weights (e.g. before a fine-tune); it may steer less well",
            UserWarning,
            stacklevel=3,
        )


def save_control(module: ControlModule, path: str | Path) -> Path:
    """The control's weights (safetensors) with its config in the metadata."""
    from ..io import save_state_dict

    return save_state_dict(module.state_dict(), path, metadata={"control_config": json.dumps(asdict(module.config))})


def load_control(path: str | Path, base: DiT) -> ControlModule:
    """A control saved by `save_control`, rebuilt for `base` (CheckpointError if it was made for another)."""
    from safetensors import safe_open

    from ..io import load_state_dict, load_weights_into

    state = load_state_dict(path)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if "control_config" not in meta:
        raise CheckpointError(f"{path}: not a control file (no control_config in its metadata)")
    try:
        config = ControlConfig(**json.loads(meta["control_config"]))
    except (TypeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable control config ({e})") from None
    check_fits(config, base)
    module = DiTControlNet(config, base) if config.method == "controlnet" else DiTAdapter(config, base)
    load_weights_into(module, state, path)
    return module
