"""GLIGEN box grounding for the DiT: gated self-attention over [visual tokens; grounding tokens].

Owns: `Grounding` (the condition: per-object per-frame boxes, phrase embeddings, a validity mask),
`fourier_features`, `GroundingTokens`, `GatedSelfAttention`, `DiTGligen` (one gated layer per controlled
DiT block, with `make_condition` / `collate_conditions` for `bridges.control.condition_for` and `install`,
the hooks `diffusion.control.Controlled` runs it through) and `first_steps` (scheduled sampling).
Does not own: `ControlConfig`, saving / loading (`diffusion/control.py`), the boxes JSON
(`data/conditions.py`), training (`train/control_recipe.py`).

GLIGEN (Li et al. 2023, Eq. 5 / 8): v = v + beta * tanh(gamma) * TS(SA([v, h^e])), then
v = v + beta * tanh(gamma') * FF(v) as in the authors' GatedSelfAttentionDense; TS keeps the visual tokens.
Grounding tokens (their Eq. 4, video form here): h^e_{n,f} = MLP([e_n ; Fourier(b_{n,f}, tau_f)]), one per
object n per frame f (a box trajectory gives F tokens), e_n the base's own frozen text encoder's pooled states
of the object's phrase, b the box normalised by the frame side, tau_f = f / (F - 1) the frame's time (so a
token says which frame its box is for; the visual tokens carry their frame in their positions). An absent
object-frame (padding, or an object that is not in that frame) takes learned null features in place of e_n
and of the Fourier features before the MLP (the authors' PositionNet). gamma, gamma' start at 0: a fresh
GLIGEN adds exact zeros (a bit-equal no-op).

Where: between each block's self-attention and its cross-attention. The DiT block computes
x + cross(norm_c(x)) right after self-attention, so a forward hook on `norm_c` sees that x, computes
g = GSA(x) and returns norm_c(x + g), and a forward hook on `cross` adds g to its output:
x + g + cross(norm_c(x + g)) is the block with the gated layer inserted there. A block called without text
(cond None) runs neither; it then gets the gated layer on its output.

Scheduled sampling (GLIGEN Sec. 3.3): beta = 1 for the first beta fraction of the sampler's steps, 0 after
(`first_steps`); it needs the sampler's timestep list, which `Controlled(..., timesteps=)` gets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .blocks import Attention, FeedForward
from ..errors import ConfigError, DataError

BOX_COORDS = 5  # x0, y0, x1, y1 (normalised) and the frame's time tau


@dataclass
class Grounding:
    """A batch of box trajectories with phrases: what a GLIGEN control reads."""

    boxes: Tensor  # (B, N, F, 4) float [x0, y0, x1, y1] / frame side, in [0, 1]
    phrases: Tensor  # (B, N, D_text) pooled text-encoder states of each object's phrase
    valid: Tensor  # (B, N, F) bool: object n has a box in frame f (False: padding / absent)

    def __len__(self) -> int:
        return self.boxes.shape[0]

    def repeat(self, k: int) -> "Grounding":
        """The batch tiled k times (B -> k*B, like classifier-free guidance's [cond; uncond] halves)."""
        return Grounding(self.boxes.repeat(k, 1, 1, 1), self.phrases.repeat(k, 1, 1), self.valid.repeat(k, 1, 1))

    def to(self, device: Any = None, dtype: torch.dtype | None = None) -> "Grounding":
        return Grounding(self.boxes.to(device, dtype), self.phrases.to(device, dtype), self.valid.to(device))

    @staticmethod
    def cat(items: "list[Grounding]") -> "Grounding":
        """Concatenate batches, padding the object axis with invalid (null) objects."""
        if not items:
            raise DataError("no grounding conditions to collate")
        n = max(g.boxes.shape[1] for g in items)
        F_ = {g.boxes.shape[2] for g in items}
        if len(F_) != 1:
            raise DataError(f"grounding conditions of different frame counts {sorted(F_)} cannot share a batch")

        def pad(x: Tensor, dim_n: int = 1) -> Tensor:
            extra = n - x.shape[dim_n]
            return x if not extra else torch.cat([x, x.new_zeros(x.shape[0], extra, *x.shape[2:])], dim_n)

        return Grounding(torch.cat([pad(g.boxes) for g in items]), torch.cat([pad(g.phrases) for g in items]),
                         torch.cat([pad(g.valid) for g in items]))


def fourier_features(x: Tensor, freqs: int, temperature: float = 100.0) -> Tensor:
    """(..., K) -> (..., 2 * freqs * K): sin / cos of x at freqs temperature^(i / freqs), i < freqs (GLIGEN's FourierEmbedder)."""
    w = temperature ** (torch.arange(freqs, device=x.device, dtype=x.dtype) / freqs)  # (freqs,)
    a = x[..., None, :] * w[:, None]  # (..., freqs, K)
    return torch.cat([a.sin(), a.cos()], -2).flatten(-2)


class GroundingTokens(nn.Module):
    """Grounding (B, N, F) -> tokens h^e (B, N*F, D): MLP([phrase ; Fourier(box, tau)]), null features where absent."""

    def __init__(self, text_dim: int, freqs: int, out_dim: int, width: int = 256) -> None:
        super().__init__()
        self.freqs = freqs
        pos_dim = 2 * freqs * BOX_COORDS
        self.null_phrase = nn.Parameter(torch.zeros(text_dim))
        self.null_position = nn.Parameter(torch.zeros(pos_dim))
        self.mlp = nn.Sequential(nn.Linear(text_dim + pos_dim, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                                 nn.Linear(width, out_dim))

    def forward(self, g: Grounding) -> Tensor:
        B, N, F_, _ = g.boxes.shape
        tau = torch.linspace(0.0, 1.0, F_, device=g.boxes.device, dtype=g.boxes.dtype) if F_ > 1 else g.boxes.new_zeros(1)
        coords = torch.cat([g.boxes, tau[None, None, :, None].expand(B, N, F_, 1)], -1)  # (B, N, F, 5)
        m = g.valid[..., None].to(g.boxes.dtype)  # (B, N, F, 1)
        pos = fourier_features(coords, self.freqs) * m + (1 - m) * self.null_position  # (B, N, F, P)
        phrase = g.phrases[:, :, None].expand(B, N, F_, -1) * m + (1 - m) * self.null_phrase  # (B, N, F, D_text)
        return self.mlp(torch.cat([phrase, pos], -1)).flatten(1, 2)  # (B, N*F, D)


class GatedSelfAttention(nn.Module):
    """v (B, L, D), h^e (B, M, D) -> the update g (B, L, D): v + g is GLIGEN's gated self-attention + dense step."""

    def __init__(self, dim: int, heads: int, gain: float = 1.0) -> None:
        super().__init__()
        self.gain = gain  # tanh(gain * gamma): under Adam, gamma learns `gain` times faster (1 = the paper's)
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads, kind="self")
        self.norm2, self.ff = nn.LayerNorm(dim), FeedForward(dim, 4.0)
        self.gamma_attn = nn.Parameter(torch.zeros(()))  # tanh(0) = 0: the layer starts as an exact no-op
        self.gamma_dense = nn.Parameter(torch.zeros(()))

    def forward(self, v: Tensor, h: Tensor, scale: Tensor | float) -> Tensor:
        L = v.shape[1]
        gate_a, gate_d = torch.tanh(self.gain * self.gamma_attn), torch.tanh(self.gain * self.gamma_dense)
        a = scale * gate_a * self.attn(self.norm1(torch.cat([v, h], 1)))[:, :L]  # TS(SA([v, h]))
        return a + scale * gate_d * self.ff(self.norm2(v + a))


class DiTGligen(nn.Module):
    """GLIGEN for a DiT: grounding tokens plus a gated self-attention layer in each of the first `config.blocks` blocks."""

    def __init__(self, config: Any, base: Any, text_encoder: Any = None) -> None:
        super().__init__()
        self.config = config
        d = base.config.hidden
        self.tokens = GroundingTokens(base.config.context_dim, config.fourier_freqs, d)
        self.layers = nn.ModuleList([GatedSelfAttention(d, base.config.heads, config.gate_gain) for _ in range(config.blocks)])
        self.attach_text_encoder(text_encoder)

    def attach_text_encoder(self, text_encoder: Any) -> None:
        """The base model's (frozen) text encoder, which embeds the phrases; kept out of the state dict."""
        object.__setattr__(self, "_text_encoder", text_encoder)
        object.__setattr__(self, "_phrase_cache", {})  # phrase -> (D_text,): the encoder is frozen

    def gates(self) -> list[float]:
        """How open each layer's gates are: tanh(gain * gamma) of its attention and dense steps, in block order."""
        return [round(float(torch.tanh(g.gain * p.detach())), 4) for g in self.layers for p in (g.gamma_attn, g.gamma_dense)]

    # ------------------------------------------------------------------ conditions (bridges.control contract)
    @torch.no_grad()
    def embed_phrases(self, phrases: list[str]) -> Tensor:
        """Phrases -> (len, D_text): the base text encoder's token states pooled over each phrase's real tokens."""
        te = self._text_encoder
        if te is None:
            raise ConfigError("GLIGEN embeds phrases with the base model's text encoder: load the control with the"
                              " model (load_control_run(run, model)) or call attach_text_encoder(model.text_encoder)")
        dev = next(te.parameters()).device
        for p in phrases:  # one at a time: a phrase's embedding does not depend on what it was batched with
            if p not in self._phrase_cache:
                ids, mask = te.tokenize([p], strict=False)
                self._phrase_cache[p] = te(ids.to(dev), mask.to(dev)).pooled[0].float().cpu()
        return torch.stack([self._phrase_cache[p] for p in phrases])  # (len, D_text)

    def make_condition(self, kind: str, *, frames: int, size: int, tracks: Any = None, video: Any = None) -> Grounding:
        """One clip's box tracks (`data.conditions.BoxTrack`, pixels) -> Grounding of batch 1."""
        if kind != "boxes" or tracks is None:
            raise ConfigError(f"GLIGEN grounds boxes with phrases; it cannot read a {kind} condition (use --boxes FILE.json)")
        if not tracks:
            raise DataError("GLIGEN needs at least one box track")
        b = torch.stack([torch.as_tensor(t.boxes, dtype=torch.float64).float() for t in tracks])  # (N, F, 4)
        if b.shape[1] != frames:
            raise DataError(f"a box trajectory of {b.shape[1]} frames for a {frames}-frame clip; give one box per frame")
        valid = (b[..., 2] > b[..., 0]) & (b[..., 3] > b[..., 1])  # (N, F)
        return Grounding((b / float(size)).clamp(0.0, 1.0)[None], self.embed_phrases([t.phrase for t in tracks])[None],
                         valid[None])

    def collate_conditions(self, conditions: list[Grounding]) -> Grounding:
        return Grounding.cat(conditions)

    # ------------------------------------------------------------------ running inside the base DiT
    def install(self, base: nn.Module, grounding: Grounding, scale: Tensor | float) -> list[Any]:
        """Hook the gated layers into `base`'s first blocks for one forward; returns the hook handles to remove."""
        p = next(self.parameters())
        h = self.tokens(grounding.to(p.device, p.dtype))  # (B, N*F, D)
        handles = []
        for blk, layer in zip(base.blocks, self.layers):
            state: dict[str, Any] = {}

            def pre(_m: nn.Module, _args: tuple, state: dict = state) -> None:
                state.clear()

            def norm(m: nn.Module, args: tuple, _out: Tensor, state: dict = state, layer: nn.Module = layer) -> Tensor:
                x = args[0]  # (B, L, D): the block's stream after self-attention
                state["g"] = layer(x, h.to(x.dtype), scale)
                return m.forward(x + state["g"])  # cross-attention reads the grounded stream

            def cross(_m: nn.Module, _args: tuple, out: Tensor, state: dict = state) -> Tensor:
                state["done"] = True
                return out + state.pop("g")  # x + g + cross(norm_c(x + g))

            def post(_m: nn.Module, _args: tuple, out: Tensor, state: dict = state, layer: nn.Module = layer) -> Tensor:
                if state.get("done"):
                    return out
                return out + layer(out, h.to(out.dtype), scale)  # no text this call: on the block's output

            handles += [blk.register_forward_pre_hook(pre), blk.norm_c.register_forward_hook(norm),
                        blk.cross.register_forward_hook(cross), blk.register_forward_hook(post)]
        return handles


def first_steps(t: Tensor, timesteps: Tensor, beta: float) -> Tensor:
    """(B,) bool: t is among the first ceil(beta * N) of the sampler's N descending timesteps (GLIGEN's tau = beta * T).

    Any scheduler here (DDPM, DDIM, DPM-Solver++) evaluates the denoiser once per step at `timesteps[i]`, so
    "the first beta of the steps" is the timesteps >= timesteps[ceil(beta * N) - 1], whatever their spacing.
    """
    n_on = max(1, math.ceil(beta * len(timesteps) - 1e-9))
    return t.to(timesteps.device) >= timesteps[n_on - 1]
