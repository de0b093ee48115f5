"""Finding the objects of a shapes-world clip: the probes' thresholds, per-pixel palette colors, masks, crops.

Owns: `ProbeConfig`, `color_labels`, `object_masks` and `object_crops` (the
crops the shape classifier reads). Shared by the probes (`probes.py`) and the
shape classifier's training data (`shape_classifier.py`), which sit above it.
Does not own: motion, readings or scores (`probes.py`), the CNN (`shape_classifier.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data.shapes import COLORS, PALETTE

_PAL = np.array([PALETTE[c] for c in COLORS], np.float32)  # (C, 3)
_PAL_UNIT = _PAL / _PAL.max(1, keepdims=True)  # brightest channel = 1


@dataclass
class ProbeConfig:
    """Thresholds, stated at 32x32; pixel counts scale with area, speeds with side."""

    fg_threshold: int = 60  # a pixel is foreground when its brightest channel exceeds this (0-255)
    speckle_px: int = 4  # components smaller than this are noise
    min_object_px: int = 10  # a color counts as an object in a frame from this many pixels
    min_present: float = 0.5  # an object must be present in at least this share of frames
    min_largest_share: float = 0.5  # an object's largest component holds this share of its color's pixels
    still_speed: float = 0.4  # px/frame below which an object is "still"
    min_r2: float = 0.7  # share of the track's variance a straight line must explain
    crop: int = 16  # side of the square crop the shape classifier reads


def color_labels(frames: np.ndarray, fg_threshold: int = 60) -> np.ndarray:
    """(F, H, W, 3) uint8 -> (F, H, W) int8 palette index per pixel, -1 for background."""
    peak = frames.max(-1)  # (F, H, W)
    lab = np.full(peak.shape, -1, np.int8)
    fg = peak > fg_threshold
    x = frames[fg].astype(np.float32)  # (N, 3) foreground pixels only
    unit = x / x.max(-1, keepdims=True)
    # argmin_c |unit - p_c|^2 = argmin_c (|p_c|^2 - 2 unit . p_c)
    score = (_PAL_UNIT**2).sum(-1) - 2.0 * unit @ _PAL_UNIT.T  # (N, C)
    lab[fg] = score.argmin(-1)
    return lab


def scaled_thresholds(cfg: ProbeConfig, size: int) -> tuple[int, int, float]:
    """(speckle px, min object px, still speed) for frames of side `size` (pixel counts scale with area, speeds with side)."""
    area = (size / 32.0) ** 2
    return max(1, round(cfg.speckle_px * area)), max(2, round(cfg.min_object_px * area)), cfg.still_speed * size / 32.0


def object_masks(frames: np.ndarray, cfg: ProbeConfig | None = None) -> dict[str, np.ndarray]:
    """Per palette color found as an object: its (F, H, W) bool mask, speckle removed."""
    from scipy import ndimage

    cfg = cfg or ProbeConfig()
    F, H, W, _ = frames.shape
    speckle, min_px, _ = scaled_thresholds(cfg, H)
    lab = color_labels(frames, cfg.fg_threshold)
    C = len(COLORS)
    flat = lab.reshape(F, -1).astype(np.int64)
    idx = (np.arange(F)[:, None] * (C + 1) + flat + 1).ravel()
    counts = np.bincount(idx, minlength=F * (C + 1)).reshape(F, C + 1)[:, 1:]  # (F, C) pixels per color
    out: dict[str, np.ndarray] = {}
    eight = np.ones((3, 3), bool)
    for c, name in enumerate(COLORS):
        if (counts[:, c] >= min_px).sum() < cfg.min_present * F:
            continue
        mask = np.zeros((F, H, W), bool)
        for f in range(F):
            if counts[f, c] < min_px:
                continue
            comp, n = ndimage.label(lab[f] == c, structure=eight)
            if n == 0:
                continue
            sizes = np.bincount(comp.ravel(), minlength=n + 1)
            if sizes[1:].max() < cfg.min_largest_share * counts[f, c]:
                continue  # scattered pixels (noise), not an object
            keep = sizes >= speckle
            keep[0] = False
            m = keep[comp]
            if m.sum() >= min_px:
                mask[f] = m
        if mask.any((1, 2)).sum() >= cfg.min_present * F:
            out[name] = mask
    return out


def object_crops(frames: np.ndarray, mask: np.ndarray, side: int = 16) -> np.ndarray:
    """Square crops (n_present, side, side) float in [0, 1] of one object's intensity.

    Intensity = the brightest channel inside the object's mask; the crop is its box,
    padded to a square around the center and resized, then scaled to peak 1 (so
    size, color and brightness do not reach the classifier).
    """
    import torch
    import torch.nn.functional as Fn

    crops = []
    for f in range(mask.shape[0]):
        ys, xs = np.nonzero(mask[f])
        if len(ys) == 0:
            continue
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        img = np.where(mask[f], frames[f].max(-1), 0).astype(np.float32)[y0:y1, x0:x1]
        h, w = img.shape
        s = max(h, w)
        sq = np.zeros((s, s), np.float32)
        sq[(s - h) // 2 : (s - h) // 2 + h, (s - w) // 2 : (s - w) // 2 + w] = img
        crops.append(sq)
    if not crops:
        return np.zeros((0, side, side), np.float32)
    out = [
        Fn.interpolate(torch.from_numpy(c)[None, None], size=(side, side), mode="bilinear", antialias=True, align_corners=False)[0, 0]
        for c in crops
    ]
    x = torch.stack(out)  # (n, side, side)
    x = x / x.flatten(1).amax(1).clamp_min(1e-6)[:, None, None]
    return x.numpy()
