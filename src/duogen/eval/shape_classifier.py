"""The learned half of the probes: a small CNN that names the shape or digit of an object crop.

Input: the square intensity crop `objects.object_crops` makes (B, 16, 16) in [0, 1];
output: logits over `duogen.data.shapes.SHAPES` (circle, square, triangle, 0-9).
It is trained only on ground-truth renders of the shapes world (random sizes,
positions, colors, digit exemplars), some of them degraded (blur, 2x/4x
down-and-up sampling as a codec would, noise, dimming) so that it also reads
reconstructed and generated clips. The trained weights ship in
`duogen/assets/probe/` (config.json + model.safetensors); `duogen eval
train-probe` retrains them.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.shapes import COLORS, DIGITS, PALETTE, SHAPES, sprite
from ..errors import CheckpointError, DataError

ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "probe"


@dataclass
class ShapeClassifierConfig:
    crop: int = 16  # input side
    width: int = 16  # channels of the first conv; doubled once
    classes: tuple[str, ...] = SHAPES


class ShapeCNN(nn.Module):
    """Three conv stages (16 -> 8 -> 4 -> 2) and a two-layer head."""

    def __init__(self, cfg: ShapeClassifierConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.features = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        side = cfg.crop // 8
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * w * side * side, 128), nn.ReLU(), nn.Linear(128, len(cfg.classes)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, crop, crop) or (B, 1, crop, crop) in [0, 1] -> logits (B, n_classes)."""
        if x.ndim == 3:
            x = x[:, None]
        return self.head(self.features(x * 2.0 - 1.0))


class ShapeClassifier:
    """A loaded CNN in eval mode with a numpy-in, numpy-out `logits`."""

    def __init__(self, model: ShapeCNN):
        self.model = model.eval()
        self.cfg = model.cfg

    @torch.no_grad()
    def logits(self, crops: np.ndarray) -> np.ndarray:
        """crops (B, crop, crop) float in [0, 1] -> logits (B, n_classes) float32."""
        if len(crops) == 0:
            return np.zeros((0, len(self.cfg.classes)), np.float32)
        return self.model(torch.as_tensor(np.asarray(crops, np.float32))).float().numpy()

    def save_pretrained(self, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
        from .. import config
        from ..io import save_model_dir

        cfg = {"model": "shape_cnn", **config.to_dict(self.cfg), **(extra or {})}
        return save_model_dir(directory, cfg, self.model.state_dict())

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "ShapeClassifier":
        from .. import config
        from ..io import load_model_dir, load_weights_into

        cfg_dict, state = load_model_dir(directory)
        if cfg_dict.get("model") != "shape_cnn":
            raise CheckpointError(f"{directory}: not a shape classifier (config.json model={cfg_dict.get('model')!r})")
        fields = {k: cfg_dict[k] for k in ("crop", "width", "classes") if k in cfg_dict}
        cfg = config.from_dict(ShapeClassifierConfig, fields)
        if tuple(cfg.classes) != SHAPES:
            raise CheckpointError(f"{directory}: trained for classes {list(cfg.classes)}, the world has {list(SHAPES)}")
        model = ShapeCNN(cfg)
        load_weights_into(model, state, Path(directory) / "model.safetensors")
        return cls(model)


@functools.lru_cache(maxsize=4)
def load_shape_classifier(directory: str | None = None) -> ShapeClassifier:
    """The packaged classifier (cached), or one from `directory`."""
    path = Path(directory) if directory else ASSET_DIR
    if not (path / "model.safetensors").is_file():
        raise CheckpointError(f"no shape classifier at '{path}'; train one with `duogen eval train-probe`")
    return ShapeClassifier.from_pretrained(path)


# ----------------------------------------------------------------------------- training data


def _degrade(frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Codec/generator-like damage to a clean (H, W, 3) uint8 frame."""
    from scipy import ndimage

    x = frame.astype(np.float32)
    S = x.shape[0]
    if rng.random() < 0.5:  # 2x or 4x down (area) and back up (bilinear), as a spatial codec does
        k = 4 if rng.random() < 0.3 else 2
        small = x.reshape(S // k, k, S // k, k, 3).mean((1, 3))
        t = torch.from_numpy(small).permute(2, 0, 1)[None]
        x = F.interpolate(t, size=(S, S), mode="bilinear", align_corners=False)[0].permute(1, 2, 0).numpy()
        x = x * rng.uniform(1.0, 1.6)  # undo some of the dimming of thin strokes, as a trained decoder would
    if rng.random() < 0.5:
        x = ndimage.gaussian_filter(x, sigma=(rng.uniform(0.3, 0.9),) * 2 + (0,))
    if rng.random() < 0.5:
        x = x * rng.uniform(0.6, 1.0)
    if rng.random() < 0.5:
        x = x + rng.normal(0.0, rng.uniform(2.0, 14.0), x.shape)
    return np.clip(x, 0, 255).astype(np.uint8)


def training_crops(n: int, rng: np.random.Generator, crop: int = 16, clean_fraction: float = 0.4) -> tuple[np.ndarray, np.ndarray]:
    """n labelled crops (n, crop, crop) float32 and labels (n,) from fresh single-object renders."""
    from .objects import ProbeConfig, object_crops, object_masks

    pcfg = ProbeConfig()
    xs, ys = [], []
    while len(xs) < n:
        S = 32 if rng.random() < 0.7 else 64
        k = int(rng.integers(len(SHAPES)))
        shape = SHAPES[k]
        size = int(rng.integers(round(S * 9 / 32), round(S * 17 / 32) + 1))
        # Digits: mostly the world's 5 exemplars (the first 5 of the top 40), sometimes 35 more for variety.
        ex = int(rng.integers(5)) if rng.random() < 0.7 else int(rng.integers(40))
        m = sprite(shape, size, ex, 40) if shape in DIGITS else sprite(shape, size)
        h, w = m.shape
        color = COLORS[int(rng.integers(len(COLORS)))]
        frame = np.zeros((S, S, 3), np.uint8)
        y0, x0 = int(rng.integers(0, S - h + 1)), int(rng.integers(0, S - w + 1))
        frame[y0 : y0 + h, x0 : x0 + w][m] = PALETTE[color]
        if rng.random() >= clean_fraction:
            frame = _degrade(frame, rng)
        masks = object_masks(frame[None], pcfg)
        if color not in masks:
            continue  # damaged beyond recognition as an object: the probe would not classify it either
        c = object_crops(frame[None], masks[color], crop)
        xs.append(c[0])
        ys.append(k)
    return np.stack(xs), np.asarray(ys, np.int64)


# ----------------------------------------------------------------------------- training


@dataclass
class FitConfig:
    """The training budget and optimizer of one CNN fit (the same for every arm that compares data)."""

    steps: int = 3000
    batch_size: int = 128
    lr: float = 2e-3
    seed: int = 0


def batch_counts(shares: Sequence[float], batch_size: int) -> list[int]:
    """Examples per pool in one batch: round(share * batch_size) each, the last pool taking the rest."""
    counts = [round(s * batch_size) for s in shares[:-1]]
    return counts + [batch_size - sum(counts)]


def fit_shape_cnn(pools: Sequence[tuple[np.ndarray, np.ndarray]], shares: Sequence[float] | None = None,
                  fit: FitConfig | None = None, cfg: ShapeClassifierConfig | None = None,
                  desc: str = "training shape probe") -> tuple[ShapeClassifier, float]:
    """Train a fresh CNN on labelled crops and return it with the last batch's loss.

    pools: (crops (n, crop, crop) float32 in [0, 1], labels (n,) int64) per source; every batch draws
    round(share * batch_size) examples from each pool (the last pool takes the rest), uniformly with
    replacement, so sources mixed in a ratio keep it in every step. AdamW with a one-cycle schedule.
    """
    from ..utils import progress

    fit = fit or FitConfig()
    cfg = cfg or ShapeClassifierConfig()
    counts = batch_counts([1.0 / len(pools)] * len(pools) if shares is None else shares, fit.batch_size)
    tensors = [(torch.from_numpy(np.asarray(X, np.float32)), torch.from_numpy(np.asarray(Y, np.int64)))
               for X, Y in pools]
    for (Xt, _), k in zip(tensors, counts):
        if k > 0 and len(Xt) == 0:
            raise DataError("a training pool for the shape classifier is empty (no object was found in its clips)")
    torch.manual_seed(fit.seed)
    model = ShapeCNN(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=fit.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=fit.lr, total_steps=fit.steps, pct_start=0.1)
    g = torch.Generator().manual_seed(fit.seed)
    model.train()
    loss_val = float("nan")
    for _ in progress(range(fit.steps), desc=desc, unit="step"):
        xs, ys = [], []
        for (Xt, Yt), k in zip(tensors, counts):
            if k > 0:
                idx = torch.randint(0, len(Xt), (k,), generator=g)
                xs.append(Xt[idx])
                ys.append(Yt[idx])
        x, y = torch.cat(xs), torch.cat(ys)  # (B, crop, crop), (B,)
        # Shift by up to 1 px: crops of generated objects are not pixel-exact.
        dx, dy = (int(v) for v in torch.randint(-1, 2, (2,), generator=g))
        x = torch.roll(x, shifts=(dy, dx), dims=(1, 2))
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        loss_val = float(loss.detach())
    return ShapeClassifier(model), loss_val


def train_shape_classifier(out: str | Path | None = None, *, seed: int = 0, steps: int = 3000, batch_size: int = 128, n_train: int = 20000, lr: float = 2e-3) -> dict[str, Any]:
    """Train the CNN on fresh world renders and save it (default: the packaged asset)."""
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    cfg = ShapeClassifierConfig()
    X, Y = training_crops(n_train, rng, cfg.crop)
    Xv_clean, Yv_clean = training_crops(1000, rng, cfg.crop, clean_fraction=1.0)
    Xv_bad, Yv_bad = training_crops(1000, rng, cfg.crop, clean_fraction=0.0)
    clf, loss_val = fit_shape_cnn([(X, Y)], fit=FitConfig(steps=steps, batch_size=batch_size, lr=lr, seed=seed), cfg=cfg)
    model = clf.model.eval()
    acc_clean = float((clf.logits(Xv_clean).argmax(1) == Yv_clean).mean())
    acc_bad = float((clf.logits(Xv_bad).argmax(1) == Yv_bad).mean())
    target = Path(out) if out else ASSET_DIR
    clf.save_pretrained(target, extra={"trained": {"seed": seed, "steps": steps, "batch_size": batch_size, "n_train": n_train, "lr": lr, "val_acc_clean": acc_clean, "val_acc_degraded": acc_bad}})
    load_shape_classifier.cache_clear()
    return {
        "out": str(target),
        "steps": steps,
        "final_loss": round(loss_val, 4),
        "val_acc_clean": round(acc_clean, 4),
        "val_acc_degraded": round(acc_bad, 4),
        "parameters": sum(p.numel() for p in model.parameters()),
        "seconds": round(time.perf_counter() - start, 1),
    }
