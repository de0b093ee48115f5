"""ControlAR for the AR model: control embeddings added to the hidden states every few decoder layers.

Owns: `ControlARConfig`, `ControlEmbed` (a condition encoder and one zero-initialised projection per fused
layer; `sampling`, the bridges' AR control protocol), `ControlUse`, `make_control_embed` (a fresh one for a given
base), `control_embeddings` (the context in which every forward of the base, teacher-forced or KV-cached, is
controlled), `next_video_index` (which video token a position predicts), `save_control_embed` /
`load_control_embed` (refused for another base).
Does not own: the conditions (`data/conditions.py`), the training recipe (`train/controlar_recipe.py`),
loading runs and generating through the bridge API (`bridges/control.py`), the sampling loop (`sampling.py`).

ControlAR (Li et al. 2024, sec. 3.3, conditional decoding): x_{i+1} ~ p(x_{i+1} | x_{<=i}, c_{i+1}). The control
token c_{i+1} aligned with the next image token is fused into the hidden state that predicts it, at every k-th
layer l: h_i^l <- h_i^l + s * Z_l(c_{i+1}), with Z_l zero-initialised, so a fresh control (or s = 0) is an
exact no-op. Here c is one embedding per token of the codec's latent grid (f, h, w), in the raster order the
layouts put video tokens in (frame, row, column): the condition clip (B, 1, F, H, W) is grouped into latent
frames as the causal codec groups them (1 + r*k frames, each group's frames stacked as channels), encoded by
2D convs and pooled to the grid (`control_parts.ConditionEncoder`). Position i carries c_k where token i+1 is
video token k of the clip opened by the last `<bov>` / `<boi>`: the marker itself carries c_0, video token k-1
carries c_k, the clip's last token (which predicts `<eov>`) nothing.

Hooks, not model edits: a forward hook on the token embedding reads the ids (and keeps the count of video
tokens across the chunks of a KV-cached decode: a chunk starting with `<bos>` starts a sequence), and forward
hooks on decoder layers 0, k, 2k, ... add the embeddings to their outputs; `LlamaDecoder` runs layer hooks on
the layer's output, so teacher-forced forwards (`loss`, `score`) and cached sampling see the same control.

Classifier-free guidance: the unconditional stream gets the control too (the condition batch is repeated over
the 2B rows), as ControlAR's conditional decoding keeps the control in both streams: guidance then amplifies
the text, and the control's strength is set by its scale alone. Training keeps the base's text dropout, so the
text-free stream is trained with the control.

Shape notation: B batch (2B with guidance), T tokens, t tokens in a chunk, D width, N = f*h*w video tokens.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor, nn

from ..control_parts import ConditionEncoder, weights_fingerprint
from ..errors import CheckpointError, ConfigError, DataError

METHOD = "controlar"


@dataclass
class ControlARConfig:
    method: str = METHOD
    paradigm: str = "ar"
    cond_channels: int = 1  # channels of the condition clip (1: a mask, edges or rasterised boxes)
    every: int = 2  # fuse after decoder layers 0, every, 2*every, ...
    enc_channels: int = 32  # width of the condition encoder
    frames_per_token: int = 1  # condition frames stacked per latent frame (the codec's 1 + r*k grouping; `make_control_embed`)
    frames: int = 0  # the condition clip's frames and size (the base's codec; filled by `make_control_embed`)
    size: int = 0
    base_hidden: int = 0  # the base this control was made for (filled by `make_control_embed`)
    base_layers: int = 0
    base_latent: list[int] = field(default_factory=list)
    base_fingerprint: str = ""  # `weights_fingerprint` of the base's weights

    def check(self) -> None:
        if self.method != METHOD:
            raise ConfigError(f"control embeddings: method {self.method!r}, expected {METHOD!r}")
        if min(self.cond_channels, self.every, self.enc_channels, self.frames_per_token) < 1:
            raise ConfigError("control embeddings: cond_channels, every, enc_channels, frames_per_token must be >= 1")

    def layers(self) -> list[int]:
        """The decoder layers whose outputs receive the control."""
        return list(range(0, self.base_layers, self.every))


class ControlEmbed(nn.Module):
    """Condition (B, C_cond, F, H, W) -> one (B, N, D) control embedding per fused layer (`embeddings`)."""

    def __init__(self, config: ControlARConfig) -> None:
        super().__init__()
        config.check()
        self.config = config
        d = config.base_hidden
        self.encoder = ConditionEncoder(config.cond_channels, config.enc_channels, d, config.frames_per_token)
        # LayerNorms: a conv encoder at its default init gives features of rms ~0.01 on a 0/1 condition, which
        # zero-initialised heads would need many steps to scale up; unit-scale features train in the CPU budget
        self.body = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.SiLU(), nn.LayerNorm(d))
        self.heads = nn.ModuleList([nn.Linear(d, d) for _ in config.layers()])  # Z_l, zero-initialised
        for p in self.heads.parameters():
            nn.init.zeros_(p)

    def embeddings(self, cond: Tensor) -> list[Tensor]:
        """cond (B, C_cond, F, H, W) -> [Z_l(c) (B, N, D) for each fused layer l]; c in the layouts' raster order."""
        c = self.config
        if cond.dim() != 5 or cond.shape[1] != c.cond_channels:
            raise DataError(f"control condition of shape {tuple(cond.shape)}: control embeddings read"
                            f" (B, {c.cond_channels}, F, H, W)")
        if c.frames and tuple(cond.shape[2:]) != (c.frames, c.size, c.size):
            raise DataError(f"control condition of {tuple(cond.shape[2:])} (frames, H, W): this control reads"
                            f" ({c.frames}, {c.size}, {c.size}), the base model's clips")
        f = self.body(self.encoder(cond, tuple(c.base_latent)))  # (B, N, D)
        return [head(f) for head in self.heads]

    @contextlib.contextmanager
    def sampling(self, rows: Any, condition: Tensor, scale: float) -> Iterator[None]:
        """The AR control protocol of `bridges/control.py`: for one sampling call, hook the base (`rows.model`)
        so its decoder adds this control (no stream of its own: yields None)."""
        with control_embeddings(rows.model, [ControlUse(self, condition, scale)]):
            yield None


class ControlUse:
    """One control in use, ActiveControl-like (what `control_embeddings` reads): module, condition, scale."""

    def __init__(self, module: ControlEmbed, condition: Tensor, scale: float = 1.0):
        self.module, self.condition, self.scale = module, condition, scale


def make_control_embed(config: ControlARConfig, base: Any, frames: int = 0, size: int = 0) -> ControlEmbed:
    """A fresh control for `base` (a `MultimodalLM`; an exact no-op until trained); records the base's width,
    depth, latent grid and weights' fingerprint, and the condition clip's frames and size (0: not checked)."""
    f = int(base.spec.latent[0])
    r = (frames - 1) // (f - 1) if frames and f > 1 and (frames - 1) % (f - 1) == 0 else 1  # the codec's 1 + r*k
    config = ControlARConfig(**{**asdict(config), "base_hidden": base.cfg.hidden, "base_layers": base.cfg.layers,
                                "base_latent": [int(v) for v in base.spec.latent], "frames": int(frames),
                                "size": int(size), "frames_per_token": r, "base_fingerprint": weights_fingerprint(base)})
    return ControlEmbed(config)


def next_video_index(ids: Tensor, video_range: tuple[int, int], markers: Tensor, n: int,
                     state: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """ids (B,t) -> (k (B,t): position i predicts video token k of its clip, -1 where it predicts none; state).

    k counts the video tokens since the last marker up to and including position i; a marker predicts token 0.
    `state` (video tokens seen, count at the last marker) per row carries the count across the chunks of a
    cached decode; None starts a sequence.
    """
    lo, hi = video_range
    visual = (ids >= lo) & (ids < hi)
    marker = torch.isin(ids, markers.to(ids.device))
    seen0, base0 = state if state is not None else (ids.new_zeros(ids.shape[0]), ids.new_zeros(ids.shape[0]))
    seen = seen0[:, None] + visual.long().cumsum(1)  # (B,t) video tokens up to and including i
    base = torch.maximum(base0[:, None], torch.where(marker, seen, torch.zeros_like(seen)).cummax(1).values)
    k = seen - base  # (B,t)
    return torch.where((visual | marker) & (k < n), k, torch.full_like(k, -1)), (seen[:, -1], base[:, -1])


class _Fuser:
    """The hooks of one `control_embeddings` context: positions from the ids, additions to layer outputs."""

    def __init__(self, model: Any, added: dict[int, list[tuple[Tensor, float]]]):
        r = model.vocab.codec_range(model.spec.video_codec)
        self.range, self.n = (r.start, r.stop), model.spec.video_tokens
        self.markers = torch.tensor([model.vocab.tokens["<bov>"], model.vocab.tokens["<boi>"]])
        self.bos = model.vocab.tokens["<bos>"]
        self.added = added  # layer -> [(Z_l(c) (B_c, N, D), scale)]
        self.state: tuple[Tensor, Tensor] | None = None
        self.k: Tensor | None = None  # (B,t) of the current forward

    def on_embed(self, _m: nn.Module, args: tuple, _out: Tensor) -> None:
        ids = args[0]  # (B,t)
        if bool((ids[:, 0] == self.bos).all()) or self.state is None or self.state[0].shape[0] != ids.shape[0]:
            self.state = None  # a new sequence (the prefix forward, or a whole teacher-forced sequence)
        self.k, self.state = next_video_index(ids, self.range, self.markers, self.n, self.state)

    def on_layer(self, layer: int):
        def hook(_m: nn.Module, _args: tuple, x: Tensor) -> Tensor:
            k = self.k
            if k is None or k.shape != x.shape[:2]:
                raise RuntimeError("control embeddings: a decoder layer ran without the token embedding (ids) first")
            B = x.shape[0]
            rows = torch.arange(B, device=x.device)[:, None]  # (B,1)
            on = (k >= 0)[..., None].to(x.dtype)  # (B,t,1)
            for e, s in self.added[layer]:
                if e.shape[0] != B:
                    if B % e.shape[0]:
                        raise DataError(f"control condition batch {e.shape[0]} does not divide the batch {B}")
                    e = e.repeat(B // e.shape[0], 1, 1)  # guidance: the unconditional rows get the control too
                x = x + s * e.to(x.dtype)[rows, k.clamp(min=0)] * on  # (B,t,D)
            return x

        return hook


@contextlib.contextmanager
def control_embeddings(model: Any, controls: Sequence[Any]) -> Iterator[None]:
    """Within the context every forward of `model` (a `MultimodalLM`) is controlled by `controls`, objects with
    `.module` (a `ControlEmbed` made for this model), `.condition` ((B or 1, C_cond, F, H, W); B rows per
    sequence, repeated over the unconditional rows of guidance) and `.scale`; several add up. The embeddings are
    computed once on entry (with gradients if enabled: training enters the context per step). Scale-0 controls
    are skipped; with none left nothing is installed (the base exactly)."""
    live = [a for a in controls if float(a.scale) != 0.0]
    if not live:
        yield
        return
    added: dict[int, list[tuple[Tensor, float]]] = {}
    for a in live:
        check_fits(a.module.config, model, weights="skip")  # hashing the base is for loading, not per step
        dev = next(a.module.parameters()).device
        for layer, e in zip(a.module.config.layers(), a.module.embeddings(a.condition.to(dev).float())):
            added.setdefault(layer, []).append((e, float(a.scale)))
    fuser = _Fuser(model, added)
    handles = [model.lm.model.embed_tokens.register_forward_hook(fuser.on_embed)]
    handles += [model.lm.model.layers[i].register_forward_hook(fuser.on_layer(i)) for i in sorted(added)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def check_fits(config: ControlARConfig, model: Any, weights: str = "warn") -> None:
    """Another shape of base: CheckpointError. Same shape, other weights: `weights` = "warn" (a warning),
    "refuse" (CheckpointError) or "skip" (not hashed: per training step)."""
    got = (model.cfg.hidden, model.cfg.layers, [int(v) for v in model.spec.latent])
    if (config.base_hidden, config.base_layers, list(config.base_latent)) != got:
        raise CheckpointError(f"control embeddings were trained for an AR model of width {config.base_hidden}, depth"
                              f" {config.base_layers}, latent grid {list(config.base_latent)}; this model has"
                              f" {got[0]}, {got[1]}, {got[2]}: use the base model it was trained from")
    if weights != "skip" and config.base_fingerprint and config.base_fingerprint != weights_fingerprint(model):
        if weights == "refuse":
            raise CheckpointError("this control was trained for another AR base model (its weights differ); use"
                                  " the model it names in its control.json")
        warnings.warn("control embeddings trained on an AR model of this shape with other weights (e.g. before a"
                      " fine-tune); they may steer less well", UserWarning, stacklevel=3)


def save_control_embed(module: ControlEmbed, path: str | Path) -> Path:
    """The control's weights (safetensors) with its config in the metadata."""
    from ..io import save_state_dict

    return save_state_dict(module.state_dict(), path, metadata={"control_config": json.dumps(asdict(module.config))})


def read_control_config(path: str | Path) -> dict[str, Any]:
    """The config stored in a control file's metadata (CheckpointError when there is none)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if "control_config" not in meta:
        raise CheckpointError(f"{path}: not a control file (no control_config in its metadata)")
    try:
        return json.loads(meta["control_config"])
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: unreadable control config ({e})") from None


def load_control_embed(path: str | Path, model: Any) -> ControlEmbed:
    """Control embeddings saved by `save_control_embed`, for `model`; CheckpointError when they were trained for
    another base (another shape, or the same shape with other weights)."""
    from ..io import load_state_dict, load_weights_into

    state = load_state_dict(path)
    try:
        config = ControlARConfig(**read_control_config(path))
    except TypeError as e:
        raise CheckpointError(f"{path}: not an AR control-embeddings file ({e})") from None
    if config.method != METHOD:
        raise CheckpointError(f"{path}: a {config.method!r} control, not {METHOD!r} control embeddings")
    check_fits(config, model, weights="refuse")
    module = ControlEmbed(config)
    load_weights_into(module, state, path)
    return module.to(next(model.parameters()).device)
