"""Quantizers: thin adapters over `vector-quantize-pytorch` behind one interface.

Every quantizer here takes a channel-first latent `z` of shape (B, D, *S) (S is
any spatial / temporal layout: (T,), (H, W), (F, H, W)) and returns a
`QuantizerOutput(quantized, ids, aux_loss, stats)`:

- `quantized` (B, D, *S): the quantized latent, with straight-through gradients;
- `ids` (B, *S) integer codes, or (B, *S, Q) for residual VQ (Q levels);
- `aux_loss`: a scalar to add to the training loss (commitment / entropy terms);
- `stats`: {"usage": fraction of the codebook hit in this batch, "perplexity":
  exp(entropy of the batch's code histogram)} as floats.

Besides the forward pass each quantizer has the three maps a codec needs:
`continuous(z)` (the pre-quantization latent, in the same space as `quantized`:
for FSQ the bounded value before rounding), `latents_to_ids(latents)` and
`ids_to_latents(ids)`. In eval mode `ids_to_latents(forward(z).ids) ==
forward(z).quantized` and `latents_to_ids(continuous(z)) == forward(z).ids`.

This module owns the adapters and the codebook statistics; the codecs
(`image_codec`, `video_codec`, `audio_codec`) own everything around them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import torch
from einops import rearrange
from torch import Tensor, nn

from ..errors import ConfigError


@dataclass
class QuantizerConfig:
    """Which quantizer and its sizes. `dim` is the number of latent channels it receives."""

    kind: Literal["fsq", "vq", "lfq", "rvq"] = "fsq"
    dim: int = 4
    levels: list[int] = field(default_factory=lambda: [8, 5, 5, 5])  # fsq: codebook = prod(levels)
    codebook_size: int = 1024  # vq / lfq / rvq (per level)
    num_quantizers: int = 4  # rvq levels
    decay: float = 0.99  # vq / rvq EMA decay of the codebook
    kmeans_init: bool = True  # vq / rvq: initialise the codebook by k-means on the first batch
    kmeans_iters: int = 10
    dead_code_threshold: float = 2.0  # vq / rvq: codes with EMA cluster size below this are re-seeded from the batch (0 = off)
    commitment_weight: float = 0.25  # vq / rvq / lfq
    entropy_weight: float = 0.1  # lfq: entropy penalty (MAGVIT-v2 eq. 5)
    diversity_gamma: float = 1.0  # lfq: weight of the codebook-entropy part
    symmetric: bool = False  # fsq: levels spread evenly over [-1, 1] (tanh, then round; Zhao et al. 2024 sec. 3.2) instead of the original grid
    noise_dropout: float = 0.0  # fsq with symmetric, training only: share of latent values given uniform noise instead of rounding only
    fsq_entropy_weight: float = 0.0  # fsq, training only: weight of the code-entropy term (`fsq_entropy_loss`: MAGVIT-v2's eq. 5 on FSQ's soft codes); 0 = off
    fsq_entropy_temperature: float = 0.25  # fsq: softness of the soft codes, in squared level units
    fsq_entropy_cell_weight: float = 1.0  # fsq: weight of the term's per-position part (each position sure of its code) against its batch part (1); 0 = the batch part alone

    def check(self) -> None:
        if self.kind == "fsq":
            if len(self.levels) != self.dim:
                raise ConfigError(f"fsq needs one level per latent channel: dim={self.dim} but levels={self.levels}")
            if any(lv < 3 for lv in self.levels):
                raise ConfigError(f"fsq levels must be >= 3, got {self.levels}")
            if not 0 <= self.noise_dropout < 1:
                raise ConfigError(f"noise_dropout is {self.noise_dropout}; it is a share in [0, 1)")
            if self.noise_dropout > 0 and not self.symmetric:
                raise ConfigError("noise_dropout needs the symmetric fsq grid: set quantizer.symmetric=true")
            if self.fsq_entropy_weight < 0 or self.fsq_entropy_temperature <= 0 or self.fsq_entropy_cell_weight < 0:
                raise ConfigError(
                    f"fsq_entropy_weight and fsq_entropy_cell_weight must be >= 0 and fsq_entropy_temperature > 0, got"
                    f" {self.fsq_entropy_weight}, {self.fsq_entropy_cell_weight} and {self.fsq_entropy_temperature}"
                )
        elif self.kind == "lfq":
            bits = math.log2(self.codebook_size)
            if bits != int(bits) or int(bits) != self.dim:
                raise ConfigError(
                    f"lfq needs codebook_size = 2**dim: dim={self.dim}, codebook_size={self.codebook_size}"
                )
            if self.codebook_size > 2**16:
                raise ConfigError("lfq codebook_size above 2**16 is very slow on CPU; use fsq for large codebooks")
        if self.kind in ("vq", "rvq", "lfq") and self.codebook_size < 2:
            raise ConfigError("codebook_size must be at least 2")
        if self.kind == "rvq" and self.num_quantizers < 1:
            raise ConfigError("num_quantizers must be at least 1")

    @property
    def vocab_size(self) -> int:
        """Number of distinct ids per position (per level for rvq)."""
        return int(math.prod(self.levels)) if self.kind == "fsq" else int(self.codebook_size)


class QuantizerOutput(NamedTuple):
    quantized: Tensor  # (B, D, *S)
    ids: Tensor  # (B, *S) or (B, *S, Q)
    aux_loss: Tensor  # scalar
    stats: dict[str, float]


def code_stats(ids: Tensor, codebook_size: int) -> dict[str, float]:
    """Usage (fraction of codes hit) and perplexity (exp entropy of the code histogram) of flat `ids`."""
    counts = torch.bincount(ids.detach().long().reshape(-1), minlength=codebook_size).float()
    p = counts / counts.sum().clamp(min=1)
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return {"usage": (counts > 0).float().mean().item(), "perplexity": entropy.exp().item()}


class CodebookUsage:
    """Accumulates a code histogram over many batches (for eval: usage over a whole split)."""

    def __init__(self, codebook_size: int, levels: int = 1):
        self.codebook_size = codebook_size
        self.counts = torch.zeros(levels, codebook_size, dtype=torch.long)

    def update(self, ids: Tensor) -> None:
        ids = ids.detach().long().cpu()
        if self.counts.shape[0] == 1:
            ids = ids.unsqueeze(-1)
        for q in range(self.counts.shape[0]):
            self.counts[q] += torch.bincount(ids[..., q].reshape(-1), minlength=self.codebook_size)

    def stats(self) -> dict[str, float]:
        p = self.counts.float() / self.counts.sum(-1, keepdim=True).clamp(min=1)  # (Q, K)
        plogp = torch.where(p > 0, p * p.clamp(min=1e-30).log(), torch.zeros_like(p))
        return {
            "usage": (self.counts > 0).float().mean().item(),
            "perplexity": (-plogp.sum(-1)).exp().mean().item(),
            "tokens": int(self.counts[0].sum()),
        }


def fsq_entropy_loss(
    u: Tensor, levels: list[int], temperature: float, batch_mask: Tensor | None = None, cell_weight: float = 1.0
) -> Tensor:
    """MAGVIT-v2's entropy penalty (Yu et al. 2023, eq. 5) on FSQ's soft codes.

    `u` (N, D) is each position's bounded latent in level units, before rounding: channel c's
    levels sit at 0, 1, ..., L_c - 1. Each channel's soft assignment is p_c(l) ∝ exp(-(u_c - l)^2 /
    temperature), and a position's soft code is their product over channels (FSQ's codes are
    the level tuples). Returns w * E_n[H(p_n)] - H(E_m[p_m]) (w = `cell_weight`): low when each position sits
    on one code and the batch spreads over many codes (the codebook's usage). The batch
    average is over the product codebook (prod(levels) codes), built one channel at a time,
    and over the positions `batch_mask` (N,) selects (all by default; none: no batch part).
    """
    u = u.float()
    logps = [
        torch.log_softmax(-(u[:, c : c + 1] - torch.arange(n, device=u.device, dtype=u.dtype)) ** 2 / temperature, -1)
        for c, n in enumerate(levels)
    ]  # per channel (N, L_c)
    per_position = cell_weight * sum(-(lp.exp() * lp).sum(-1).mean() for lp in logps)  # a product's entropy: the channels' sum
    rows = slice(None) if batch_mask is None else batch_mask.reshape(-1)
    joint = u.new_ones(u[rows].shape[0], 1)  # (M, codes so far)
    if joint.shape[0] == 0:
        return per_position
    for lp in logps:
        joint = (joint.unsqueeze(-1) * lp[rows].exp().unsqueeze(1)).reshape(joint.shape[0], -1)
    avg = joint.mean(0)
    return per_position + (avg * avg.clamp(min=1e-12).log()).sum()


def _to_seq(z: Tensor) -> tuple[Tensor, tuple[int, ...]]:
    """(B, D, *S) -> (B, N, D) float32, and S."""
    spatial = tuple(z.shape[2:])
    return rearrange(z.float(), "b d ... -> b (...) d"), spatial


def _from_seq(x: Tensor, spatial: tuple[int, ...]) -> Tensor:
    """(B, N, D) -> (B, D, *S)."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *spatial)


class Quantizer(nn.Module):
    """One adapter for FSQ, VQ (EMA, k-means init, dead-code replacement), LFQ and residual VQ."""

    def __init__(self, cfg: QuantizerConfig):
        super().__init__()
        cfg.check()
        self.cfg = cfg
        from vector_quantize_pytorch import FSQ, LFQ, ResidualVQ, VectorQuantize

        if cfg.kind == "fsq":
            # Mentzer et al. 2023, "Finite Scalar Quantization": bound each channel, round to L levels.
            self.q = FSQ(levels=list(cfg.levels), dim=cfg.dim, preserve_symmetry=cfg.symmetric, noise_dropout=cfg.noise_dropout)
        elif cfg.kind == "vq":
            # van den Oord et al. 2017 with EMA codebook updates (their appendix A.1).
            self.q = VectorQuantize(
                dim=cfg.dim, codebook_size=cfg.codebook_size, decay=cfg.decay, kmeans_init=cfg.kmeans_init,
                kmeans_iters=cfg.kmeans_iters, threshold_ema_dead_code=cfg.dead_code_threshold,
                commitment_weight=cfg.commitment_weight,
            )
        elif cfg.kind == "lfq":
            # Yu et al. 2023 (MAGVIT-v2) lookup-free quantization: sign of each channel is one bit.
            self.q = LFQ(
                dim=cfg.dim, codebook_size=cfg.codebook_size, entropy_loss_weight=cfg.entropy_weight,
                commitment_loss_weight=cfg.commitment_weight, diversity_gamma=cfg.diversity_gamma,
            )
        else:
            # Zeghidour et al. 2021 (SoundStream) residual VQ: each level quantizes the previous residual.
            self.q = ResidualVQ(
                dim=cfg.dim, num_quantizers=cfg.num_quantizers, codebook_size=cfg.codebook_size,
                decay=cfg.decay, kmeans_init=cfg.kmeans_init, kmeans_iters=cfg.kmeans_iters,
                threshold_ema_dead_code=cfg.dead_code_threshold, commitment_weight=cfg.commitment_weight,
            )

    @property
    def codebook_size(self) -> int:
        return self.cfg.vocab_size

    @property
    def num_levels(self) -> int:
        return self.cfg.num_quantizers if self.cfg.kind == "rvq" else 1

    # -------------------------------------------------------------- forward

    def forward(self, z: Tensor, entropy_mask: Tensor | None = None) -> QuantizerOutput:
        """z (B, D, *S) -> QuantizerOutput; quantization always runs in float32. `entropy_mask` (B, *S) bool: the
        positions whose codes FSQ's code-entropy term spreads over the codebook (default: all)."""
        x, spatial = _to_seq(z)  # (B, N, D)
        with torch.autocast(device_type=z.device.type, enabled=False):
            kind = self.cfg.kind
            if kind == "fsq":
                quantized, ids = self.q(x)
                aux = x.new_zeros(())
                if self.training and self.cfg.fsq_entropy_weight > 0:
                    aux = self.cfg.fsq_entropy_weight * fsq_entropy_loss(
                        self._level_units(x), self.cfg.levels, self.cfg.fsq_entropy_temperature, batch_mask=entropy_mask,
                        cell_weight=self.cfg.fsq_entropy_cell_weight,
                    )
            elif kind == "lfq":
                out = self.q(x)
                quantized, ids, aux = out.quantized, out.indices, out.entropy_aux_loss
            else:
                quantized, ids, aux = self.q(x)
                aux = aux.sum()
        ids = ids.long()
        stats = self._stats(ids)
        ids = ids.reshape(ids.shape[0], *spatial, *ids.shape[2:])  # (B, *S[, Q])
        return QuantizerOutput(_from_seq(quantized, spatial), ids, aux, stats)

    def _stats(self, ids: Tensor) -> dict[str, float]:
        if self.cfg.kind == "rvq":
            per = [code_stats(ids[..., q], self.codebook_size) for q in range(ids.shape[-1])]
            return {k: sum(s[k] for s in per) / len(per) for k in per[0]}
        return code_stats(ids, self.codebook_size)

    # -------------------------------------------------------------- the codec maps

    def continuous(self, z: Tensor) -> Tensor:
        """The pre-quantization latent (B, D, *S), in the space `quantized` lives in.

        FSQ: the bounded value before rounding, so `round` of it gives the codes
        (the bound is the library's `bound()` without `round_ste`). VQ / LFQ / RVQ:
        the encoder output itself.
        """
        if self.cfg.kind != "fsq":
            return z.float()
        x, spatial = _to_seq(z)
        return _from_seq(self._fsq_bound(x), spatial)

    def _fsq_bound(self, x: Tensor) -> Tensor:
        """FSQ: (B, N, D) encoder output -> the bounded value before rounding, in the space `quantized` lives in."""
        if self.cfg.symmetric:  # the library's symmetry_preserving_bound without floor_ste: 2u/(L-1) - 1 = tanh(x)
            return torch.tanh(x)
        levels = self.q._levels.to(x.dtype)
        eps = 1e-3
        half_l = (levels - 1) * (1 + eps) / 2
        offset = torch.where(self.q._levels % 2 == 0, 0.5, 0.0).to(x.dtype)
        shift = torch.atanh(offset / half_l)
        bounded = torch.tanh(x + shift) * half_l - offset
        return bounded / (self.q._levels // 2).to(x.dtype)

    def _level_units(self, x: Tensor) -> Tensor:
        """FSQ: (B, N, D) encoder output -> (B*N, D) bounded values in level units (level k of a channel at k)."""
        bounded = self._fsq_bound(x)  # (B, N, D), in [-1, 1]-ish
        levels = self.q._levels.to(bounded.dtype)
        if self.cfg.symmetric:
            units = (levels - 1) * (bounded + 1) / 2
        else:
            units = bounded * (levels // 2) + levels // 2
        return units.reshape(-1, units.shape[-1])

    @torch.no_grad()
    def latents_to_ids(self, latents: Tensor) -> Tensor:
        """Nearest code of each position: (B, D, *S) -> (B, *S) (or (B, *S, Q) for rvq). No codebook update."""
        x, spatial = _to_seq(latents)  # (B, N, D)
        kind = self.cfg.kind
        if kind == "fsq" and self.cfg.symmetric:
            top = (self.q._levels - 1).to(x.dtype)
            level_idx = torch.minimum(torch.floor(top * (x + 1) / 2 + 0.5).clamp(min=0), top)  # (B, N, D) in [0, L-1]
            ids = self.q.codes_to_indices(level_idx * 2 / top - 1).long()
        elif kind == "fsq":
            half_width = (self.q._levels // 2).to(x.dtype)
            lo = -half_width
            hi = (self.q._levels - 1 - self.q._levels // 2).to(x.dtype)
            level_idx = torch.maximum(torch.minimum(torch.round(x * half_width), hi), lo)
            ids = self.q.codes_to_indices(level_idx / half_width).long()
        elif kind == "lfq":
            bits = (x > 0).long()  # (B, N, D)
            ids = (bits * self.q.mask.long()).sum(-1)
        elif kind == "vq":
            ids = torch.cdist(x, self.q.codebook.float().unsqueeze(0).expand(x.shape[0], -1, -1)).argmin(-1)
        else:
            residual, levels = x, []
            for cb in self.q.codebooks:  # (K, D) each
                idx = torch.cdist(residual, cb.float().unsqueeze(0).expand(x.shape[0], -1, -1)).argmin(-1)
                residual = residual - cb[idx]
                levels.append(idx)
            ids = torch.stack(levels, dim=-1)  # (B, N, Q)
        return ids.reshape(ids.shape[0], *spatial, *ids.shape[2:])

    def ids_to_latents(self, ids: Tensor) -> Tensor:
        """(B, *S) ids (or (B, *S, Q) for rvq) -> quantized latent (B, D, *S)."""
        ids = ids.long()
        if self.cfg.kind == "rvq":
            spatial = tuple(ids.shape[1:-1])
            flat = ids.reshape(ids.shape[0], -1, ids.shape[-1])  # (B, N, Q)
            out = self.q.get_output_from_indices(flat)  # (B, N, D)
        else:
            spatial = tuple(ids.shape[1:])
            flat = ids.reshape(ids.shape[0], -1)  # (B, N)
            if self.cfg.kind == "fsq":
                out = self.q._indices_to_codes(flat)  # (B, N, D)
            elif self.cfg.kind == "lfq":
                out = self.q.indices_to_codes(flat)
            else:
                out = self.q.codebook[flat]
        return _from_seq(out.float(), spatial)

    def check_ids(self, ids: Tensor) -> None:
        """Raise DataError for ids outside [0, codebook_size)."""
        from ..errors import DataError

        if ids.dtype.is_floating_point:
            raise DataError(f"ids must be an integer tensor, got {ids.dtype}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.codebook_size):
            raise DataError(
                f"ids out of range: got values in [{int(ids.min())}, {int(ids.max())}], "
                f"this codec's vocabulary is [0, {self.codebook_size})"
            )


def build_quantizer(cfg: QuantizerConfig) -> Quantizer:
    return Quantizer(cfg)
