"""Codec training losses: reconstruction, edges, quantizer terms and an optional adversarial term.

- `reconstruction_loss`: foreground-weighted L1 + L2. Objects cover a small part of
  a shapes-world frame, so an unweighted loss is minimised early by an empty
  black frame; pixels on or next to an object (target or prediction brighter
  than the background, dilated by one pixel) get `fg_weight` times the weight.
  With `fg_share` > 0 the weights are normalised per frame by object pixels instead
  (`balanced_weight`): objects get that share of each frame's loss, whatever their area.
- `mean_color_loss`: L1 between patch-mean colors of prediction and target (the
  color a patch reads as), off unless `color_weight` > 0.
- `gradient_loss`: L1 between the finite differences of prediction and target
  along each spatial axis, which rewards sharp edges in the right place.
- the quantizer's auxiliary loss (commitment for VQ, entropy + commitment for LFQ)
  is added by `codec_loss` with its own weight.
- `PatchDiscriminator` (a PatchGAN on frames, Isola et al. 2017) for images and
  `PatchDiscriminator3d` (the same on space-time patches) for video, picked by
  `build_discriminator`, + `hinge_d_loss` / `generator_adv_loss` (the hinge loss,
  Lim & Ye 2017), switched on after `adv_start` steps. Off by default: on the
  shapes world it does not help PSNR within minutes of CPU training.

This module owns loss math only; the training loop lives in
`duogen.train.tokenizer_recipe`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class CodecLossConfig:
    l1_weight: float = 1.0
    l2_weight: float = 1.0
    fg_weight: float = 4.0  # extra weight of foreground pixels (0 = plain loss)
    fg_threshold: float = -0.8  # a pixel is foreground where any channel exceeds this (in [-1, 1])
    fg_share: float = 0.0  # > 0: each frame's object pixels get this share of the loss, the background the rest (replaces fg_weight)
    color_weight: float = 0.0  # L1 between the mean colors of prediction and target in each color_patch x color_patch patch
    color_patch: int = 4  # side of the patches of the mean-color term (the codec's spatial factor)
    grad_weight: float = 0.5  # finite-difference edge term
    quantizer_weight: float = 1.0  # multiplies the quantizer's aux loss
    adv_weight: float = 0.0  # generator term against a PatchGAN (images) or a 3D PatchGAN (video); 0 = off
    adv_start: int = 2000  # optimizer step at which the adversarial term switches on


class LossOutput(NamedTuple):
    loss: Tensor
    n_items: int
    metrics: dict[str, float]


def _frames(x: Tensor) -> Tensor:
    """(B, C, F, H, W) or (B, C, H, W) -> (N, C, H, W)."""
    if x.ndim == 5:
        return x.transpose(1, 2).reshape(-1, x.shape[1], x.shape[3], x.shape[4])
    return x


def foreground_mask(target: Tensor, pred: Tensor, cfg: CodecLossConfig) -> Tensor:
    """(N, 1, H, W) float 0/1: object pixels of target or prediction (any channel above fg_threshold), dilated by 1."""
    fg = (target.amax(1, keepdim=True) > cfg.fg_threshold) | (pred.detach().amax(1, keepdim=True) > cfg.fg_threshold)
    return F.max_pool2d(fg.float(), 3, stride=1, padding=1)


def foreground_weight(target: Tensor, pred: Tensor, cfg: CodecLossConfig) -> Tensor:
    """Per-pixel weight (N, 1, H, W): 1 + fg_weight on (dilated) object pixels of target or prediction."""
    return 1.0 + cfg.fg_weight * foreground_mask(target, pred, cfg)


def balanced_weight(target: Tensor, pred: Tensor, cfg: CodecLossConfig) -> Tensor:
    """Per-pixel weight (N, 1, H, W) summing to 1 per frame: object pixels share fg_share, background the rest.

    The loss is then normalised by each frame's object pixels, not by its area, so a frame's few
    object pixels weigh as much whatever their number. A frame with no background (or no objects)
    gives all its weight to the pixels it has, uniformly: the plain per-frame mean.
    """
    m = foreground_mask(target, pred, cfg)
    n_fg = m.sum((1, 2, 3), keepdim=True)  # (N, 1, 1, 1)
    n_bg = m[0].numel() - n_fg
    share = torch.where(n_bg == 0, 1.0, torch.where(n_fg == 0, 0.0, cfg.fg_share))
    return share * m / n_fg.clamp(min=1) + (1 - share) * (1 - m) / n_bg.clamp(min=1)


def reconstruction_loss(pred: Tensor, target: Tensor, cfg: CodecLossConfig) -> Tensor:
    """Weighted mean of l1 * |e| + l2 * e^2 over pixels (weights normalised to mean 1 per batch;
    with fg_share > 0 to mean 1 per frame, split between objects and background by `balanced_weight`)."""
    p, t = _frames(pred.float()), _frames(target.float())
    w = balanced_weight(t, p, cfg) if cfg.fg_share > 0 else foreground_weight(t, p, cfg)
    e = p - t
    per_pixel = cfg.l1_weight * e.abs() + cfg.l2_weight * e.square()  # (N, C, H, W)
    return (per_pixel * w).sum() / (w.sum() * p.shape[1])


def mean_color_loss(pred: Tensor, target: Tensor, cfg: CodecLossConfig) -> Tensor:
    """L1 between the mean colors of prediction and target over color_patch x color_patch patches.

    A patch's mean color is what the probes and a viewer read first; a per-pixel loss lets a
    blurred edge and a wrong hue cost the same. Patches holding an object pixel weigh 1 + fg_weight
    (1 + 1 with fg_share > 0), others 1; weights normalised to mean 1 per batch.
    """
    p, t = _frames(pred.float()), _frames(target.float())
    k = cfg.color_patch
    pm, tm = F.avg_pool2d(p, k, ceil_mode=True), F.avg_pool2d(t, k, ceil_mode=True)  # (N, C, H/k, W/k)
    fg = F.max_pool2d(foreground_mask(t, p, cfg), k, ceil_mode=True)  # (N, 1, H/k, W/k)
    w = 1.0 + (1.0 if cfg.fg_share > 0 else cfg.fg_weight) * fg
    return ((pm - tm).abs() * w).sum() / (w.sum() * p.shape[1])


def gradient_loss(pred: Tensor, target: Tensor) -> Tensor:
    """L1 between horizontal and vertical finite differences of pred and target."""
    p, t = _frames(pred.float()), _frames(target.float())
    dx = (p[..., :, 1:] - p[..., :, :-1]) - (t[..., :, 1:] - t[..., :, :-1])
    dy = (p[..., 1:, :] - p[..., :-1, :]) - (t[..., 1:, :] - t[..., :-1, :])
    return dx.abs().mean() + dy.abs().mean()


def psnr(pred: Tensor, target: Tensor) -> Tensor:
    """Per-item PSNR in dB over all pixels, for tensors in [-1, 1] (computed on [0, 1], peak 1). Returns (B,)."""
    p = (pred.float().clamp(-1, 1) + 1) / 2
    t = (target.float().clamp(-1, 1) + 1) / 2
    mse = (p - t).square().flatten(1).mean(1).clamp(min=1e-10)
    return -10.0 * torch.log10(mse)


class PatchDiscriminator(nn.Module):
    """PatchGAN on single frames: (N, 3, H, W) -> (N, 1, H/4, W/4) real/fake logits per patch."""

    def __init__(self, ch: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, ch, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(ch, ch * 2, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(ch * 2, ch * 2, 3, 1, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(ch * 2, 1, 3, 1, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(_frames(x))


class PatchDiscriminator3d(nn.Module):
    """3D PatchGAN on clips: (B, 3, F, H, W) -> (B, 1, ceil(F/2), H/4, W/4) real/fake logits per space-time patch.

    A per-frame PatchGAN cannot see flicker or wrong motion; these kernels span three
    frames. Time is halved once (kernel 3, padding 1), so a one-frame clip fits too.
    """

    def __init__(self, ch: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv3d(3, ch, (3, 4, 4), (1, 2, 2), 1), nn.LeakyReLU(0.2),  # (B, ch, F, H/2, W/2)
            nn.Conv3d(ch, ch * 2, (3, 4, 4), (2, 2, 2), 1), nn.LeakyReLU(0.2),  # (B, 2ch, ceil(F/2), H/4, W/4)
            nn.Conv3d(ch * 2, ch * 2, 3, 1, 1), nn.LeakyReLU(0.2),
            nn.Conv3d(ch * 2, 1, 3, 1, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def build_discriminator(modality: str, ch: int = 32) -> nn.Module:
    """The adversary of a codec: a PatchGAN on frames for images, a 3D PatchGAN for video."""
    return PatchDiscriminator3d(ch) if modality == "video" else PatchDiscriminator(ch)


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    return F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean()


def generator_adv_loss(logits_fake: Tensor) -> Tensor:
    return -logits_fake.mean()


def adversarial_active(cfg: CodecLossConfig, step: int) -> bool:
    return cfg.adv_weight > 0 and step >= cfg.adv_start


def codec_loss(
    pred: Tensor,
    target: Tensor,
    aux_loss: Tensor,
    cfg: CodecLossConfig,
    *,
    step: int = 0,
    discriminator: nn.Module | None = None,
) -> LossOutput:
    """The generator-side loss of a codec: recon + edges + quantizer (+ adversarial after warm-up)."""
    rec = reconstruction_loss(pred, target, cfg)
    grad = gradient_loss(pred, target) if cfg.grad_weight > 0 else pred.new_zeros(())
    loss = rec + cfg.grad_weight * grad + cfg.quantizer_weight * aux_loss
    metrics = {"recon": float(rec.detach()), "grad": float(grad.detach()), "aux": float(aux_loss.detach())}
    if cfg.color_weight > 0:
        color = mean_color_loss(pred, target, cfg)
        loss = loss + cfg.color_weight * color
        metrics["color"] = float(color.detach())
    if discriminator is not None and adversarial_active(cfg, step):
        adv = generator_adv_loss(discriminator(pred.float()))
        loss = loss + cfg.adv_weight * adv
        metrics["adv_g"] = float(adv.detach())
    metrics["psnr"] = float(psnr(pred.detach(), target).mean())
    return LossOutput(loss, int(pred.shape[0]), metrics)
