"""Control for the DiT denoiser: a ControlNet branch, a T2I-Adapter and GLIGEN boxes, several at once.

Owns: `ControlConfig`, `ConditionEncoder`, `DiTControlNet`, `DiTAdapter`,
`Controlled` (the base denoiser plus controls, same `forward(z_t, t, cond)`, each control at its scale and
for the first `beta` of the sampler's steps), `ActiveControl`, `as_condition`, `save_control` /
`load_control`, `check_fits` (the base a control was made for).
Does not own: the conditions themselves (`data/conditions.py`), GLIGEN's layers and its `Grounding`
condition (`diffusion/gligen.py`), training recipes, the CLI, the U-Net controls (`unet_control.py`:
`make_control`, `load_control`, `check_fits` and `Controlled` dispatch there for a U-Net base), AR control.

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

- GLIGEN (Li et al. 2023): gated self-attention over [visual; grounding tokens] inside each block,
  `diffusion/gligen.py`; it reads a `Grounding` (boxes + phrase embeddings) instead of a raster and
  installs its own hooks (`DiTGligen.install`).

A raster condition (B, C_cond, F, H, W) in pixels is encoded per frame by a few 3x3
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
from .blocks import timesteps_for
from ..control_parts import ConditionEncoder, weights_fingerprint
from .dit import DiT
from .gligen import DiTGligen, Grounding, first_steps
from .unet_control import build_unet_control, check_unet_fits, describe, is_unet, unet_forward
from ..errors import CheckpointError, ConfigError, DataError

Method = Literal["controlnet", "t2i-adapter", "gligen"]
METHODS = ("controlnet", "t2i-adapter", "gligen")


@dataclass
class ControlConfig:
    method: Method = "controlnet"
    cond_channels: int = 1  # channels of the condition clip (1: a mask, edges or rasterised boxes)
    blocks: int = 2  # the first `blocks` DiT blocks receive a residual (ControlNet copies them)
    enc_channels: int = 32  # width of the condition encoder
    fourier_freqs: int = 8  # GLIGEN: Fourier frequencies per box coordinate (the authors' 8)
    gate_gain: float = 1.0  # GLIGEN: gates tanh(gate_gain * gamma); > 1 opens them faster under a short budget
    frames_per_token: int = 1  # 1: condition frames averaged onto the token grid; r: the codec's 1 + r*k grouping, stacked
    base_hidden: int = 0  # the DiT's width / depth this control was made for (filled by `make_control`)
    base_depth: int = 0
    base_fingerprint: str = ""  # sha256 of the base's weights at `make_control` (another base of the same shape: a warning)
    base_arch: str = ""  # a U-Net base's architecture (`unet_control.describe`); "" for a DiT

    def check(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"control: method {self.method!r}; choose one of {', '.join(METHODS)}")
        if (self.cond_channels < 1 or self.blocks < 1 or self.enc_channels < 1 or self.frames_per_token < 1
                or self.fourier_freqs < 1 or self.gate_gain <= 0):
            raise ConfigError("control: cond_channels, blocks, enc_channels, frames_per_token and fourier_freqs must be"
                              " >= 1, gate_gain > 0")
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


ControlModule = DiTControlNet | DiTAdapter | DiTGligen


def _build(config: ControlConfig, base: DiT, text_encoder: Any = None) -> ControlModule:
    if config.method == "gligen":
        return DiTGligen(config, base, text_encoder)
    return DiTControlNet(config, base) if config.method == "controlnet" else DiTAdapter(config, base)


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


def make_control(config: ControlConfig, base: DiT, text_encoder: Any = None) -> ControlModule:
    """A fresh control for `base` (an exact no-op until trained); records the base's width, depth and weights' hash
    (for a U-Net: its architecture, `unet_control.describe`). GLIGEN embeds its phrases with `text_encoder` (the
    base model's; attachable later)."""
    if is_unet(base):
        config = ControlConfig(**{**asdict(config), "base_arch": describe(base), "base_fingerprint": base_fingerprint(base)})
        config.check()
        return build_unet_control(config, base)
    if not isinstance(base, DiT):
        raise ConfigError(f"control: ControlNet / T2I-Adapter / GLIGEN attach to a DiT denoiser here, not {type(base).__name__}")
    config = ControlConfig(
        **{**asdict(config), "base_hidden": base.config.hidden, "base_depth": base.config.depth, "base_fingerprint": base_fingerprint(base)}
    )
    config.check()
    return _build(config, base, text_encoder)


@dataclass
class ActiveControl:
    """One control in use: its module, its condition, its scale, and the fraction `beta` of the sampler's steps
    (the first, noisiest ones) it acts in (GLIGEN's scheduled sampling, Sec. 3.3; 1 = every step, as trained).

    The condition: a raster (B or 1, C_cond, F, H, W) for ControlNet / T2I-Adapter, a `Grounding` of batch B or 1
    for GLIGEN (`bridges.control.condition_for` / `collate_conditions` build either)."""

    module: ControlModule
    condition: Tensor | Grounding
    scale: float = 1.0
    beta: float = 1.0


def _fit_batch(c: Tensor | Grounding, batch: int) -> Tensor | Grounding:
    """A condition for `batch` samples: batch 1 is shared, a divisor of the batch tiled (CFG's [cond; uncond])."""
    n = len(c)
    if n == batch:
        return c
    if batch % n:
        raise ValueError(f"control condition batch {n} does not divide the batch {batch}")
    return c.repeat(batch // n, *([1] * (c.dim() - 1))) if isinstance(c, Tensor) else c.repeat(batch // n)


class Controlled(nn.Module):
    """A DiT plus any number of controls; `forward(z_t, t, cond)` like the DiT's.

    Output = DiT with block i's output increased by sum_k scale_k * residual_k[i] (ControlNet, T2I-Adapter),
    and GLIGEN's gated layers inside the blocks at their scale. A condition with batch 1 is shared by the
    whole batch; a batch that is a multiple of the condition's (classifier-free guidance doubles it) repeats
    it, so a control acts on both halves of CFG, the unconditional one included (as GLIGEN samples: its
    grounding input goes to both passes, and the recipe trains it under the base's caption dropout).
    A control with beta < 1 acts only at the first ceil(beta * N) of the sampler's N `timesteps`
    (descending; `LatentDiffusionModel.timesteps(steps)`), and at the other steps the output is the
    base's, bit for bit.
    """

    def __init__(self, base: DiT, controls: list[ActiveControl], timesteps: Tensor | None = None) -> None:
        super().__init__()
        self.base = base
        self.controls = controls
        self.control_modules = nn.ModuleList([a.module for a in controls])
        self.timesteps = None if timesteps is None else torch.as_tensor(timesteps).long()
        for a in controls:
            check_fits(a.module.config, base)
            if not 0.0 < float(a.beta) <= 1.0:
                raise ConfigError(f"control beta {a.beta}: the fraction of sampling steps a control acts in is in (0, 1]")
            if a.beta < 1.0 and self.timesteps is None:
                raise ConfigError("a control with beta < 1 needs the sampler's timesteps: Controlled(base, controls,"
                                  " timesteps=model.timesteps(steps))")
            c = a.condition
            if a.module.config.method == "gligen":
                if not isinstance(c, Grounding):
                    raise DataError(f"a GLIGEN control reads a Grounding (boxes and phrases), not {type(c).__name__};"
                                    " build it with bridges.control.condition_for(module, 'boxes', tracks=...)")
                continue
            if not isinstance(c, Tensor) or c.dim() != 5 or c.shape[1] != a.module.config.cond_channels:
                raise DataError(
                    f"control condition of shape {tuple(getattr(c, 'shape', ()))}: this {a.module.config.method} reads"
                    f" (B, {a.module.config.cond_channels}, F, H, W); see as_condition"
                )

    @property
    def config(self):  # the sampler and callers read the denoiser's config
        return self.base.config

    def _live(self, t: Tensor | float, batch: int, device: torch.device) -> list[tuple[ActiveControl, Tensor | float]]:
        """The controls acting at t, each with its scale: a float, or (B, 1, 1) where beta switches some samples off."""
        live: list[tuple[ActiveControl, Tensor | float]] = []
        for a in self.controls:
            if a.scale == 0.0:
                continue
            if a.beta >= 1.0:
                live.append((a, a.scale))
                continue
            on = first_steps(timesteps_for(t, batch, device), self.timesteps, a.beta)  # (B,)
            if bool(on.all()):
                live.append((a, a.scale))
            elif bool(on.any()):
                live.append((a, a.scale * on.float().to(device)[:, None, None]))
        return live

    def forward(self, z_t: Tensor, t: Tensor | float, cond: TextCond | None) -> Tensor:
        B = z_t.shape[0]
        live = self._live(t, B, z_t.device)
        if not live:
            return self.base(z_t, t, cond)
        if is_unet(self.base):  # hooks on the U-Net's backbone (unet_control.py)
            return unet_forward(self.base, [(a.module, _fit_batch(a.condition, B), s) for a, s in live], z_t, t, cond)
        handles: list[Any] = []
        try:
            for a, s in live:
                if a.module.config.method == "gligen":
                    handles += a.module.install(self.base, _fit_batch(a.condition, B), s)
            raster = [(a, s) for a, s in live if a.module.config.method != "gligen"]
            if raster:
                handles += self._raster_hooks(raster)
            return self.base(z_t, t, cond)
        finally:
            for h in handles:
                h.remove()

    def _raster_hooks(self, live: list[tuple[ActiveControl, Tensor | float]]) -> list[Any]:
        """ControlNet / T2I-Adapter: residuals from block 0's inputs, added to the first blocks' outputs."""
        added: dict[int, Tensor] = {}

        def pre(_m: nn.Module, args: tuple) -> None:
            x, c, text, grid = args
            for a, s in live:
                cnd = _fit_batch(a.condition, x.shape[0]).to(x.device, x.dtype)
                for i, r in enumerate(a.module.residuals(x, c, text, grid, cnd)):
                    added[i] = added[i] + s * r if i in added else s * r

        def post(i: int):
            def hook(_m: nn.Module, _args: tuple, out: Tensor) -> Tensor:
                return out + added[i] if i in added else out

            return hook

        depth = max(a.module.config.blocks for a, _ in live)
        handles = [self.base.blocks[0].register_forward_pre_hook(pre)]
        return handles + [self.base.blocks[i].register_forward_hook(post(i)) for i in range(depth)]


def check_fits(config: ControlConfig, base: DiT) -> None:
    """Another DiT shape (U-Net architecture): CheckpointError. Same shape, other weights (e.g. a fine-tuned base):
    a warning."""
    if config.base_arch:
        check_unet_fits(config, base)
    elif not isinstance(base, DiT):
        raise CheckpointError(f"control was trained for a DiT; this model's denoiser is a {type(base).__name__}")
    elif (config.base_hidden, config.base_depth) != (base.config.hidden, base.config.depth):
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


def load_control(path: str | Path, base: DiT, text_encoder: Any = None) -> ControlModule:
    """A control saved by `save_control`, rebuilt for `base` (CheckpointError if it was made for another);
    a GLIGEN control embeds its phrases with `text_encoder` (the base model's)."""
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
    module = build_unet_control(config, base) if config.base_arch else _build(config, base, text_encoder)
    load_weights_into(module, state, path)
    return module
