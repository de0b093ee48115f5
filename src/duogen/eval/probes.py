"""Probes that read a shapes-world clip back into attributes: what is there, what color, where it goes.

Analytic part: pixels brighter than a threshold are foreground; each is labelled
with the nearest palette color (after scaling its brightest channel to 1, so the
dim edges of a blurred or generated object keep their hue); per color and frame,
8-connected components smaller than a speckle size are dropped and what is left
is that color's object in that frame, provided its largest component holds at
least half of the color's pixels (pixels of one color scattered over the frame,
as in noise, are not an object). Tracking across frames is by color (the
world gives the objects of one clip distinct colors). From the centroid track a
least-squares line gives velocity (vx, vy): motion is "still" below a speed
threshold, otherwise the nearest of eight directions, or "incoherent" when the
line explains under `min_r2` of the track's variance (a shuffled clip's jumping
centroid is not a motion). Size is the median box side.

Learned part: the shape/digit CNN of `shape_classifier.py`, applied to each
frame's crop of the object; the clip's shape is the argmax of the mean logits.

Finding the objects (thresholds, masks, crops) lives in `objects.py`, which
the shape classifier's training data uses too. This module owns the readings
and the scores built on them: `prompt_accuracy`, `evaluate_dataset`, and the
Frechet probe distance between two sets of clips (a Frechet distance between
Gaussians fitted to probe features; not FVD).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..data.shapes import COLORS, MOTION_NAMES, MOTIONS, SHAPES
from ..errors import DataError
from .objects import ProbeConfig, object_crops, object_masks, scaled_thresholds

INCOHERENT = "incoherent"
@dataclass
class ObjectReading:
    """What the probes read about one object of a clip."""

    color: str
    motion: str  # one of MOTION_NAMES or "incoherent"
    speed: float  # px / frame
    velocity: tuple[float, float]  # (vx, vy), px / frame, y down
    r2: float  # share of the centroid track's variance explained by a line
    size: float  # median of max(box w, box h) over frames, px
    shape: str
    shape_prob: float  # softmax of the mean logits at `shape`
    shape_logits: np.ndarray  # (n_shapes,) mean over frames
    n_pixels: float  # mean pixel count over present frames
    present: np.ndarray = field(repr=False)  # (F,) bool
    track: np.ndarray = field(repr=False)  # (F, 2) centroid (x, y), nan where absent
    boxes: np.ndarray = field(repr=False)  # (F, 4) [x0, y0, x1, y1] exclusive, -1 where absent


# ----------------------------------------------------------------------------- motion


def _direction(vx: float, vy: float) -> str:
    """Nearest of the eight unit directions by angle."""
    best, best_cos = "right", -2.0
    for name, (ux, uy) in MOTIONS.items():
        if name == "still":
            continue
        cos = (vx * ux + vy * uy) / (math.hypot(ux, uy) * math.hypot(vx, vy) + 1e-12)
        if cos > best_cos:
            best, best_cos = name, cos
    return best


def fit_motion(track: np.ndarray) -> tuple[float, float, float]:
    """Least-squares line through the present points of a (F, 2) track -> (vx, vy, r2)."""
    t = np.arange(len(track), dtype=np.float64)
    ok = ~np.isnan(track[:, 0])
    if ok.sum() < 3:
        return 0.0, 0.0, 0.0
    t, p = t[ok], track[ok].astype(np.float64)
    tc = t - t.mean()
    pc = p - p.mean(0)
    v = (tc[:, None] * pc).sum(0) / (tc**2).sum()  # (2,) slope per coordinate
    ss_tot = (pc**2).sum()
    ss_res = ((pc - tc[:, None] * v) ** 2).sum()
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 1e-9 else 1.0
    return float(v[0]), float(v[1]), float(r2)


# ----------------------------------------------------------------------------- the probe


def probe_clip(video: np.ndarray, cfg: ProbeConfig | None = None, classifier: Any = None) -> list[ObjectReading]:
    """Read the objects of one clip, uint8 (F, H, W, 3); largest objects first."""
    cfg = cfg or ProbeConfig()
    video = np.asarray(video)
    if video.dtype.kind in "iu" and video.dtype != np.uint8 and video.size and 0 <= video.min() and video.max() <= 255:
        video = video.astype(np.uint8)  # e.g. int64, as `datasets`' numpy formatter returns it
    if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
        raise DataError(f"probe_clip wants a uint8 array (F, H, W, 3); got {video.dtype} {video.shape}")
    F, H, W, _ = video.shape
    _, _, still = scaled_thresholds(cfg, H)
    masks = object_masks(video, cfg)
    if not masks:
        return []
    if classifier is None:
        from .shape_classifier import load_shape_classifier

        classifier = load_shape_classifier()
    crops = {name: object_crops(video, m, cfg.crop) for name, m in masks.items()}
    logits_all = classifier.logits(np.concatenate(list(crops.values())))  # (sum n_present, n_shapes)
    readings, start = [], 0
    for name, m in masks.items():
        n = len(crops[name])
        logits = logits_all[start : start + n].mean(0)
        start += n
        present = m.any((1, 2))
        track = np.full((F, 2), np.nan)
        boxes = np.full((F, 4), -1, np.int64)
        for f in np.nonzero(present)[0]:
            ys, xs = np.nonzero(m[f])
            track[f] = xs.mean(), ys.mean()
            boxes[f] = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        vx, vy, r2 = fit_motion(track)
        speed = math.hypot(vx, vy)
        motion = "still" if speed < still else (_direction(vx, vy) if r2 >= cfg.min_r2 else INCOHERENT)
        side = np.maximum(boxes[present, 2] - boxes[present, 0], boxes[present, 3] - boxes[present, 1])
        p = np.exp(logits - logits.max())
        p /= p.sum()
        k = int(np.argmax(logits))
        readings.append(
            ObjectReading(
                color=name, motion=motion, speed=speed, velocity=(vx, vy), r2=r2, size=float(np.median(side)),
                shape=SHAPES[k], shape_prob=float(p[k]), shape_logits=logits, n_pixels=float(m.sum() / present.sum()),
                present=present, track=track, boxes=boxes,
            )
        )
    readings.sort(key=lambda r: -r.n_pixels)
    return readings


# ----------------------------------------------------------------------------- scores

KINDS = ("color", "direction", "shape", "count")


def prompt_accuracy(clip: np.ndarray | list[ObjectReading], attributes: Sequence[dict[str, Any]], cfg: ProbeConfig | None = None) -> dict[str, float]:
    """Fraction of a prompt's attributes the probes recover in `clip`, per attribute kind.

    Objects are matched by color: a prompt object whose color no reading has scores 0
    on every kind. `color` = share of prompt objects whose color was found; `direction`
    and `shape` = share of prompt objects found with that motion / shape; `count` = 1
    when the number of objects read equals the prompt's.
    """
    readings = clip if isinstance(clip, list) else probe_clip(clip, cfg)
    by_color = {r.color: r for r in readings}
    n = max(1, len(attributes))
    color = direction = shape = 0
    for a in attributes:
        r = by_color.get(a["color"])
        if r is None:
            continue
        color += 1
        direction += r.motion == a["motion"]
        shape += r.shape == a["shape"]
    return {
        "color": color / n,
        "direction": direction / n,
        "shape": shape / n,
        "count": float(len(readings) == len(attributes)),
    }


def evaluate_dataset(path: str | Path, split: str = "heldout", n: int = 1000, controls: bool = True) -> dict[str, Any]:
    """Mean per-attribute accuracy of the probes on a data set's ground-truth clips.

    With `controls`, the same clips are also probed with their frames shuffled (a fixed,
    never-identity permutation per clip) and replaced by uniform noise; their direction
    accuracy is reported beside `direction_chance`, the share of the most common motion
    among the clips' objects (the best a probe blind to motion can score).
    """
    from ..data import load_dataset, with_uint8_video
    from ..utils import progress

    dd = load_dataset(path)
    if split not in dd:
        raise DataError(f"data set '{path}' has no split '{split}'; it has: {', '.join(dd)}")
    ds = dd[split]
    n = min(int(n), len(ds))
    if n < 1:
        raise DataError(f"split '{split}' of '{path}' is empty")
    ds = with_uint8_video(ds.select(range(n)))
    totals = dict.fromkeys(KINDS, 0.0)
    shuffled_dir = noise_dir = 0.0
    motions: list[str] = []
    speed_err, size_err, matched = 0.0, 0.0, 0
    for i, row in enumerate(progress(ds, total=n, desc="probing", unit="clip")):
        video, attributes = row["video"], row["attributes"]
        readings = probe_clip(video)
        acc = prompt_accuracy(readings, attributes)
        for k in KINDS:
            totals[k] += acc[k]
        by_color = {r.color: r for r in readings}
        for a in attributes:
            motions.append(a["motion"])
            r = by_color.get(a["color"])
            if r is not None:
                speed_err += abs(r.speed - float(a["speed"]))
                size_err += abs(r.size - float(a["size"]))
                matched += 1
        if controls:
            rng = np.random.default_rng([0, i])
            perm = rng.permutation(len(video))
            while np.array_equal(perm, np.arange(len(video))):
                perm = rng.permutation(len(video))
            shuffled_dir += prompt_accuracy(video[perm], attributes)["direction"]
            noise_dir += prompt_accuracy(rng.integers(0, 256, video.shape, dtype=np.uint8), attributes)["direction"]
    out: dict[str, Any] = {"data": str(path), "split": split, "n": n}
    out.update({k: round(v / n, 4) for k, v in totals.items()})
    out["speed_mae_px_per_frame"] = round(speed_err / max(1, matched), 3)
    out["size_mae_px"] = round(size_err / max(1, matched), 3)
    if controls:
        out["direction_shuffled_frames"] = round(shuffled_dir / n, 4)
        out["direction_noise"] = round(noise_dir / n, 4)
        out["direction_chance"] = round(max(motions.count(m) for m in set(motions)) / len(motions), 4)
    return out


# ----------------------------------------------------------------------------- Frechet probe distance

_MAX_OBJ = 2


def reading_features(readings: list[ObjectReading], frames: int, size: int) -> np.ndarray:
    """(D,) features of one clip's readings (see `probe_features`)."""
    feat = [float(len(readings))]
    per_clip = (frames - 1) / size  # px/frame -> frame sides per clip
    for i in range(_MAX_OBJ):
        if i < len(readings):
            r = readings[i]
            onehot = np.eye(len(COLORS))[COLORS.index(r.color)]
            p = np.exp(r.shape_logits - r.shape_logits.max())
            p /= p.sum()
            v = [r.velocity[0] * per_clip, r.velocity[1] * per_clip, r.speed * per_clip]
            feat.extend([*onehot, *v, r.r2, r.size / size, *p, 1.0])
        else:
            feat.extend([0.0] * (len(COLORS) + 5 + len(SHAPES) + 1))
    return np.asarray(feat, np.float64)


def probe_features(clips: Sequence[np.ndarray] | np.ndarray, cfg: ProbeConfig | None = None) -> np.ndarray:
    """(N, D) features per clip from probe readings, for `frechet_probe_distance`.

    Per clip: the number of objects read, then for the two largest objects (zeros when
    absent): palette one-hot, velocity (vx, vy) and speed in frame sides per clip,
    line-fit r2, size / frame side, shape softmax, and a presence flag.
    """
    rows = []
    for video in clips:
        video = np.asarray(video)
        rows.append(reading_features(probe_clip(video, cfg), video.shape[0], video.shape[1]))
    return np.stack(rows)


def frechet_probe_distance(a: Sequence[np.ndarray] | np.ndarray, b: Sequence[np.ndarray] | np.ndarray, cfg: ProbeConfig | None = None) -> float:
    """Frechet probe distance (FPD) between two sets of clips: the Frechet distance
    (`metrics.frechet_distance`) between Gaussians fitted to their `probe_features`.
    It is not FVD: the features are the probes' readings (colors, motions, shapes),
    not a pretrained video network's activations."""
    from .metrics import frechet_distance

    fa, fb = probe_features(a, cfg), probe_features(b, cfg)
    if len(fa) < 2 or len(fb) < 2:
        raise DataError("the Frechet probe distance needs at least 2 clips in each set")
    return frechet_distance(fa, fb)
