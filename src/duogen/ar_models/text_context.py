"""Text context: a few bidirectional transformer layers over the prompt's tokens, before the Llama reads them.

    ctx = TextContext(dim=128, heads=4, layers=1, length=spec.text_block, pad_id=vocab.tokens["<pad>"])
    x = ctx(ids, embeddings)  # (B,T,D): the text block's rows contextualised, every other row as it was

VideoPoet conditions its decoder on a text encoder's states (T5), not on raw token embeddings. A decoder of
one layer over raw embeddings cannot tell "a red circle and a blue square" from "a blue circle and a red
square": each video token's query reads the prompt's keys and values, and with one layer those come from each
token's embedding alone, so a color is not bound to the shape it names. These layers run over the text
block only (`<bos> <task> pad.. <bot> text <eot>`, the first `length` positions of every layout), bidirectionally
with the left padding masked out, with learned positions, and write their output over those rows. Their cost
is that of `layers` transformer layers on `length` tokens, a small part of one over the whole sequence.

Each block is pre-norm (attention, then an MLP) with its output projections starting at zero, and the
positions start at zero: a fresh model computes exactly what one without the context computes.

Owns: the module. Does not own: the layouts that put the text block first (`layouts.py`), the model that
calls it (`model.py`: training and scoring) and the KV-cached decoder (`sampling.py`: the prefix's first chunk).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..attention import sdpa_tensors


class _Block(nn.Module):
    """Pre-norm self-attention and GELU MLP; x (B,L,D), keep (B,1,1,L) bool (True: a key to attend to)."""

    def __init__(self, dim: int, heads: int, mlp: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, mlp), nn.Linear(mlp, dim)
        for lin in (self.proj, self.fc2):  # a fresh block is the identity
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        o = sdpa_tensors(q, k, v, keep)  # (B,H,L,Dh); float32 on a CPU under bf16 autocast, as every duogen attention
        x = x + self.proj(o.transpose(1, 2).reshape(B, L, D))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class TextContext(nn.Module):
    """`layers` bidirectional blocks over the first `length` rows (the text block) of a sequence's embeddings."""

    def __init__(self, dim: int, heads: int, layers: int, length: int, mlp: int | None = None, pad_id: int = 0):
        """`length`: the text block's tokens (`LayoutSpec.text_block`); `pad_id`: `<pad>`'s global id (masked out)."""
        super().__init__()
        self.length, self.pad_id = int(length), int(pad_id)
        self.pos = nn.Parameter(torch.zeros(self.length, dim))
        self.blocks = nn.ModuleList([_Block(dim, heads, mlp or 4 * dim) for _ in range(layers)])

    def forward(self, ids: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """ids (B,T), x (B,T,D) with T >= length, the sequence's first rows -> x with the text block replaced."""
        L = self.length
        if ids.shape[1] < L:
            raise ValueError(f"the text context reads the first {L} tokens of a sequence; got {ids.shape[1]}")
        keep = (ids[:, :L] != self.pad_id)[:, None, None, :]  # (B,1,1,L); <bos>, the task token, <bot>, <eot> always
        h = x[:, :L] + self.pos.to(x.dtype)
        for blk in self.blocks:
            h = blk(h, keep)
        return torch.cat([h.to(x.dtype), x[:, L:]], dim=1)
