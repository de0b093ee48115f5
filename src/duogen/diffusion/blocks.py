"""Building blocks shared by every denoiser: attention (with processors), embeddings, norms, convs.

Shape notation: B batch, C channels, F frames, H W height width, T tokens,
D width, nh heads, hs head size.

Attention is reachable from outside without editing model code. Every
`Attention` layer computes q, k, v and hands them, as an `AttentionCall`, to a
*processor*: a callable `processor(call) -> (B, nh, Tq, hs)`. The default is
`sdpa` (torch's fused `scaled_dot_product_attention`). The call carries the
sampler's step and the guidance role ("cond" / "uncond": a guided batch is
split in halves, one processor call each); the call object and the tools below
live in `duogen.attention`, shared with the AR model, so one technique works on
both paradigms. A processor can be set

- per call: `attn(x, processor=p)`;
- on a model: `set_attention_processor(model, p)` or, scoped,
  `with attention_processor(model, p): model(z_t, t, cond)`, optionally only
  for layers whose qualified name / kind passes a filter.

`AttentionStore` captures the attention probabilities of every layer it sees
(attention maps); a processor that edits `attention_probs(call)` before
multiplying by `call.v` replaces them (prompt-to-prompt). This module owns no
model; the U-Nets and the DiT assemble these pieces.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..attention import (  # noqa: F401  (re-exported: the denoisers' processor API)
    AttentionCall,
    AttentionStore,
    Processor,
    apply_probs,
    attention_context,
    attention_layers,
    attention_probs,
    attention_processor,
    run_processor,
    sdpa,
    set_attention_processor,
)

AttentionKind = Literal["self", "cross", "temporal"]


# ----------------------------------------------------------------------------- conditioning


@dataclass
class TextCond:
    """What a denoiser is conditioned on: text token embeddings and their mask.

    tokens: (B, T, D) float; mask: (B, T) bool, True for real tokens (at least
    one per row); pooled: (B, D) or None, a sentence vector (DiT adds it to the
    time embedding).
    """

    tokens: Tensor
    mask: Tensor
    pooled: Tensor | None = None

    def __post_init__(self) -> None:
        if self.tokens.dim() != 3 or self.mask.shape != self.tokens.shape[:2]:
            raise ValueError(
                f"TextCond wants tokens (B,T,D) and mask (B,T); got {tuple(self.tokens.shape)}"
                f" and {tuple(self.mask.shape)}"
            )

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def index(self, idx: Tensor | slice) -> "TextCond":
        return TextCond(self.tokens[idx], self.mask[idx], None if self.pooled is None else self.pooled[idx])

    def repeat(self, n: int) -> "TextCond":
        """Each sample repeated n times in place: (B, ...) -> (B*n, ...)."""
        rep = lambda x: None if x is None else x.repeat_interleave(n, dim=0)  # noqa: E731
        return TextCond(rep(self.tokens), rep(self.mask), rep(self.pooled))

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "TextCond":
        """Move to a device and/or cast the float parts (the mask stays bool)."""
        pooled = None if self.pooled is None else self.pooled.to(device=device, dtype=dtype)
        return TextCond(self.tokens.to(device=device, dtype=dtype), self.mask.to(device=device), pooled)

    @staticmethod
    def cat(conds: "list[TextCond]") -> "TextCond":
        """Concatenate along the batch, padding T to the longest (padding is masked out)."""
        T = max(c.tokens.shape[1] for c in conds)

        def pad(x: Tensor, value: float | bool) -> Tensor:
            extra = T - x.shape[1]
            if extra == 0:
                return x
            shape = (x.shape[0], extra, *x.shape[2:])
            return torch.cat([x, torch.full(shape, value, dtype=x.dtype, device=x.device)], dim=1)

        pooled = None if any(c.pooled is None for c in conds) else torch.cat([c.pooled for c in conds])
        return TextCond(
            torch.cat([pad(c.tokens, 0.0) for c in conds]),
            torch.cat([pad(c.mask, False) for c in conds]),
            pooled,
        )


# ----------------------------------------------------------------------------- attention
# The call object, the default processor, the probability tools, `AttentionStore` and installing processors
# live in `duogen.attention`, shared with the AR model; they are re-exported here for the denoisers' users.


class RMSNorm(nn.Module):
    """RMSNorm whose weight follows the input dtype, so bf16 autocast keeps the fused kernel."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight.to(x.dtype), self.eps)


class Attention(nn.Module):
    """Multi-head attention: self-attention (context=None) or cross-attention to a context.

    forward(x (B, Tq, D), context (B, Tk, Dc) | None, mask (B, Tk) bool | None) -> (B, Tq, D).
    The score computation is delegated to a processor (see the module docstring).
    """

    def __init__(self, dim: int, heads: int, context_dim: int | None = None, kind: AttentionKind = "self",
                 qk_norm: bool = False) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by {heads} heads")
        self.heads, self.kind, self.name = heads, kind, kind
        self.processor: Processor | None = None
        kv_dim = context_dim or dim
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(kv_dim, 2 * dim, bias=False)
        self.to_out = nn.Linear(dim, dim)
        hs = dim // heads
        # RMS-normalised q and k keep attention logits bounded (stabilises bf16 training).
        self.q_norm = RMSNorm(hs) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(hs) if qk_norm else nn.Identity()

    def forward(self, x: Tensor, context: Tensor | None = None, mask: Tensor | None = None,
                processor: Processor | None = None) -> Tensor:
        ctx = x if context is None else context
        q = rearrange(self.to_q(x), "b t (nh hs) -> b nh t hs", nh=self.heads)  # (B, nh, Tq, hs)
        k, v = rearrange(self.to_kv(ctx), "b t (two nh hs) -> two b nh t hs", two=2, nh=self.heads)
        q, k = self.q_norm(q), self.k_norm(k)
        attn_mask = None if mask is None else mask[:, None, None, :].to(torch.bool)  # (B, 1, 1, Tk)
        proc = processor or self.processor
        if proc is None:  # the fast path; with a processor, it is told the step and each guidance half's role
            out = sdpa(AttentionCall(self, q, k, v, attn_mask))  # (B, nh, Tq, hs)
        else:
            out = run_processor(proc, self, q, k, v, attn_mask)  # (B, nh, Tq, hs)
        return self.to_out(rearrange(out, "b nh t hs -> b t (nh hs)"))


# ----------------------------------------------------------------------------- embeddings, norms, MLPs


def sinusoidal_embedding(pos: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Transformer sinusoids (Vaswani et al. 2017, Sec. 3.5): pos (N,) -> (N, dim), [cos | sin]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=pos.device, dtype=torch.float32) / half)
    args = pos.float()[:, None] * freqs[None]  # (N, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def sincos_positions(f: int, h: int, w: int, dim: int, device: torch.device) -> Tensor:
    """Fixed positions (F*H*W, dim): 2D sine-cosine over (h, w) (half the width each, as DiT)
    plus 1D sine-cosine over frames (zero when f == 1, so images get plain 2D positions)."""
    half = dim // 2
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    spatial = torch.cat([sinusoidal_embedding(ys.flatten(), half), sinusoidal_embedding(xs.flatten(), half)], dim=-1)
    frames = sinusoidal_embedding(torch.arange(f, device=device), dim) if f > 1 else torch.zeros(1, dim, device=device)
    return (frames[:, None, :] + spatial[None, :, :]).reshape(f * h * w, dim)  # (F*H*W, D)


class TimestepEmbedder(nn.Module):
    """t (B,) -> (B, D): sinusoids of the (possibly fractional) timestep, then an MLP (DDPM / DiT)."""

    def __init__(self, dim: int, freq_dim: int = 256) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(sinusoidal_embedding(t, self.freq_dim).to(self.mlp[0].weight.dtype))


def timesteps_for(t: Tensor | float | int, batch: int, device: torch.device) -> Tensor:
    """Broadcast a scalar or (B,) timestep to a float (B,) tensor."""
    t = torch.as_tensor(t, device=device)
    if t.dim() == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"timestep must be a scalar or shape ({batch},), got {tuple(t.shape)}")
    return t.float()


def norm_groups(channels: int, max_groups: int = 32) -> int:
    """The largest group count <= max_groups that divides `channels`."""
    return next(g for g in range(min(max_groups, channels), 0, -1) if channels % g == 0)


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm normalises each sample on its own, so outputs never mix across the batch."""
    return nn.GroupNorm(norm_groups(channels), channels, eps=1e-6)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN (DiT, Peebles & Xie 2023): x (B, T, D) * (1 + scale) + shift, with (B, D) modulations."""
    return x * (1 + scale[:, None]) + shift[:, None]


class FeedForward(nn.Module):
    """Position-wise MLP: D -> mult*D -> D with tanh-GELU (as in DiT)."""

    def __init__(self, dim: int, mult: float = 4.0) -> None:
        super().__init__()
        hidden = int(dim * mult)
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def zero_(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters so a residual branch starts as an exact no-op."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


# ----------------------------------------------------------------------------- convolutional pieces (U-Nets)

ConvKind = Literal["2d", "2+1d", "3d"]


class Conv(nn.Module):
    """A 3x3 convolution over images (B, C, H, W) or videos (B, C, F, H, W).

    "2d": per-frame 3x3 (images, or videos frame by frame); "2+1d": a 3x3
    spatial conv then a 3-tap temporal conv (R(2+1)D, Tran et al. 2018);
    "3d": a full 3x3x3 conv. Frames are never downsampled.
    """

    def __init__(self, in_ch: int, out_ch: int, kind: ConvKind = "2d") -> None:
        super().__init__()
        self.kind = kind
        if kind == "3d":
            self.conv = nn.Conv3d(in_ch, out_ch, 3, padding=1)
        else:
            self.conv = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        # the temporal taps run as a (3, 1) Conv2d over (F, H*W): no transpose, the fast mkldnn path
        self.temporal = nn.Conv2d(out_ch, out_ch, (3, 1), padding=(1, 0)) if kind == "2+1d" else None

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 4 or self.kind == "3d":
            return self.conv(x)
        b, f = x.shape[0], x.shape[2]
        x = self.conv(rearrange(x, "b c f h w -> (b f) c h w"))
        if self.temporal is None:
            return rearrange(x, "(b f) c h w -> b c f h w", b=b)
        h, w = x.shape[-2:]
        x = self.temporal(rearrange(x, "(b f) c h w -> b c f (h w)", b=b))  # (B, C, F, H*W)
        return rearrange(x, "b c f (h w) -> b c f h w", h=h)


def _per_frame(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """Apply a 2D op to (B, C, H, W) directly or to every frame of (B, C, F, H, W)."""
    if x.dim() == 4:
        return fn(x)
    b = x.shape[0]
    y = fn(rearrange(x, "b c f h w -> (b f) c h w"))
    return rearrange(y, "(b f) c h w -> b c f h w", b=b)


class Downsample(nn.Module):
    """Halve H and W with a stride-2 3x3 conv (frames kept)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return _per_frame(self.conv, x)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour then a 3x3 conv (frames kept)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return _per_frame(lambda y: self.conv(F.interpolate(y, scale_factor=2.0, mode="nearest")), x)


class ResBlock(nn.Module):
    """Residual block with a time-embedding shift/scale (DDPM / improved DDPM), image or video.

    forward(x (B, C, [F,] H, W), emb (B, E)) -> (B, out, [F,] H, W). The second conv's output
    is zero-initialised so each block starts as its skip path.
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, kind: ConvKind = "2d", dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1, self.conv1 = group_norm(in_ch), Conv(in_ch, out_ch, kind)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2, self.drop = group_norm(out_ch), nn.Dropout(dropout)
        self.conv2 = Conv(out_ch, out_ch, kind)
        # Zero only the conv that writes the output. Zeroing both halves of a (2+1)D conv deadlocks them:
        # each one's gradient is a product with the other's zero weights, so neither ever moves.
        zero_(self.conv2.temporal if self.conv2.temporal is not None else self.conv2.conv)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb)).chunk(2, dim=-1)  # (B, out) each
        extra = (1,) * (h.dim() - 2)
        h = self.norm2(h) * (1 + scale.view(*scale.shape, *extra)) + shift.view(*shift.shape, *extra)
        h = self.conv2(self.drop(F.silu(h)))
        return _per_frame(self.skip, x) + h


class TransformerBlock(nn.Module):
    """Pre-norm self-attention, cross-attention to text, MLP; tokens (B, T, D) -> (B, T, D)."""

    def __init__(self, dim: int, heads: int, context_dim: int | None, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads, kind="self")
        self.cross = Attention(dim, heads, context_dim, kind="cross") if context_dim else None
        self.norm2 = nn.LayerNorm(dim) if context_dim else None
        self.norm3, self.mlp = nn.LayerNorm(dim), FeedForward(dim, mlp_ratio)

    def forward(self, x: Tensor, cond: TextCond | None, mask: Tensor | None = None) -> Tensor:
        """x (B, T, D); cond: text to cross-attend to; mask (B, T) bool: which of x's tokens are real."""
        x = x + self.attn(self.norm1(x), mask=mask)
        if self.cross is not None and cond is not None:
            x = x + self.cross(self.norm2(x), cond.tokens, cond.mask)
        return x + self.mlp(self.norm3(x))


class PositionEmbedding(nn.Module):
    """(F, H, W) grid -> (F, H*W, C): fixed sine-cosine positions through a zero-initialised linear map,
    so a layer that adds them starts exactly as it was without them."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.dim = ch + ch % 4  # sincos_positions wants a multiple of 4
        self.proj = zero_(nn.Linear(self.dim, ch))

    def forward(self, f: int, h: int, w: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        pos = sincos_positions(f, h, w, self.dim, device).to(self.proj.weight.dtype)  # (F*H*W, dim)
        return self.proj(pos).to(dtype).reshape(f, h * w, -1)


class SpatialTransformer(nn.Module):
    """Attention over the H*W positions of each image / frame, with cross-attention to text.

    (B, C, [F,] H, W) -> same shape; the output projection is zero-initialised
    so the block starts as the identity (Stable Diffusion's layout).

    For videos, `positions` adds a learned embedding of each token's (frame,
    row, column), so the text cross-attention can ask for different things in
    different frames (where an object is at frame f of "moves left") and
    attention can relate positions across frames; `joint` attends over all
    F*H*W tokens of a clip at once instead of frame by frame (cheap at a
    U-Net's coarse levels, where a clip has few tokens).
    """

    def __init__(self, ch: int, heads: int, context_dim: int | None, depth: int = 1,
                 positions: bool = False, joint: bool = False) -> None:
        super().__init__()
        self.norm, self.proj_in = group_norm(ch), nn.Linear(ch, ch)
        self.pos_embed = PositionEmbedding(ch) if positions else None
        self.joint = joint
        self.blocks = nn.ModuleList([TransformerBlock(ch, heads, context_dim) for _ in range(depth)])
        self.proj_out = zero_(nn.Linear(ch, ch))

    def forward(self, x: Tensor, cond: TextCond | None) -> Tensor:
        if x.dim() == 4:
            h, w = x.shape[-2:]
            y = self.proj_in(rearrange(self.norm(x), "b c h w -> b (h w) c"))
            for blk in self.blocks:
                y = blk(y, cond)
            return x + rearrange(self.proj_out(y), "b (h w) c -> b c h w", h=h, w=w)
        b, c, f, h, w = x.shape
        y = self.norm(rearrange(x, "b c f h w -> (b f) c h w"))  # GroupNorm frame by frame
        y = self.proj_in(rearrange(y, "(b f) c h w -> b f (h w) c", b=b))
        if self.pos_embed is not None:
            y = y + self.pos_embed(f, h, w, x.device, y.dtype)[None]
        if self.joint:
            y, frame_cond = rearrange(y, "b f t c -> b (f t) c"), cond
        else:
            y, frame_cond = rearrange(y, "b f t c -> (b f) t c"), (cond.repeat(f) if cond is not None else None)
        for blk in self.blocks:
            y = blk(y, frame_cond)
        pattern = "b (f h w) c -> b c f h w" if self.joint else "(b f) (h w) c -> b c f h w"
        return x + rearrange(self.proj_out(y), pattern, b=b, f=f, h=h, w=w)


class TemporalTransformer(nn.Module):
    """Self-attention along frames at every spatial position (video U-Net temporal layers).

    (B, C, F, H, W) -> same shape. Frame positions enter as sinusoids; the
    output projection is zero-initialised (the block starts as the identity).
    With `context_dim`, each position's frame sequence also cross-attends to
    the text, so the temporal layers know which motion the prompt asks for.
    """

    def __init__(self, ch: int, heads: int, context_dim: int | None = None) -> None:
        super().__init__()
        self.norm, self.proj_in = group_norm(ch), nn.Linear(ch, ch)
        self.norm1, self.attn = nn.LayerNorm(ch), Attention(ch, heads, kind="temporal")
        self.cross = Attention(ch, heads, context_dim, kind="cross") if context_dim else None
        self.norm_cross = nn.LayerNorm(ch) if context_dim else None
        self.norm2, self.mlp = nn.LayerNorm(ch), FeedForward(ch, 4.0)
        self.proj_out = zero_(nn.Linear(ch, ch))

    def forward(self, x: Tensor, cond: TextCond | None = None) -> Tensor:
        b, c, f, h, w = x.shape
        y = rearrange(self.norm(x), "b c f h w -> (b h w) f c")  # (B*H*W, F, C)
        y = self.proj_in(y) + sinusoidal_embedding(torch.arange(f, device=x.device), c).to(y.dtype)
        y = y + self.attn(self.norm1(y))
        if self.cross is not None and cond is not None:
            pos_cond = cond.repeat(h * w)  # (B*H*W, T, D), sample-major like y
            y = y + self.cross(self.norm_cross(y), pos_cond.tokens, pos_cond.mask)
        y = y + self.mlp(self.norm2(y))
        y = rearrange(self.proj_out(y), "(b h w) f c -> b c f h w", b=b, h=h, w=w)
        return x + y
