"""Control metrics: whether the objects of a generated clip went where a control asked them to go.

Owns: `box_iou` / `mask_iou` (per frame), `found_objects` (the objects the probes find, with per-frame masks,
boxes and pixel support), `match_objects` (each requested object -> one found object), `score_clip` (one clip's
per-object-frame box and mask IoU plus its scored detections), `average_precision` (COCO-style AP at an IoU
threshold) and `ControlScores` (a run's accumulator: box IoU, AP@0.5, mask IoU, text accuracy, Frechet probe
distance against real clips).
Does not own: finding objects (`eval/objects.py`), reading their color / shape / motion (`eval/probes.py`), the
Frechet distance itself (`eval/metrics.py`), the conditions (`data/conditions.py`), generation (bench/).

Definitions (all per requested object and frame, over every frame of every clip of a run):
- Matching: a requested object whose phrase names a palette color is matched to the found object of that color
  (the probes key objects by color, at most one per color); the others take the remaining found object of
  highest mean box IoU over frames (greedy, highest first). Unmatched: IoU 0 in every frame.
- Box IoU: IoU of the requested box and the matched object's tight pixel box in that frame (0 where the object is
  absent). Boxes are [x0, y0, x1, y1] in pixels, x1 / y1 exclusive.
- Mask IoU: |R & G| / |R | G| of the requested object's mask R (for edge control: the source clip's object
  masks) and the matched object's pixels G in that frame; frames where both are empty do not count.
- AP@0.5 (COCO-style, one class "object", 101-point interpolated precision): every found object in every frame is
  a detection, scored by its pixel support there (the number of pixels of its color component: the probes'
  evidence that a real object is there; speckle and fragments score low); every requested object-frame is a
  ground truth. Per frame, detections in descending score greedily take the unmatched ground truth of highest
  IoU >= 0.5 (TP) or are FP; AP = mean over recall r in {0, 0.01, ..., 1} of max precision at recall >= r.
- Text accuracy: the probes' color and shape read against the prompt's attributes (`probes.prompt_accuracy`,
  as `duogen compare` scores generation); "text" is the mean of the two.
- Frechet probe distance: `metrics.frechet_distance` of `probes.reading_features` of the clips vs real clips.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..data.shapes import COLORS
from ..errors import DataError


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise IoU of boxes (N, 4) [x0, y0, x1, y1] (exclusive); a row with a negative coordinate (absent) -> 0."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    ix = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = ix * iy
    area = lambda x: np.clip(x[:, 2] - x[:, 0], 0, None) * np.clip(x[:, 3] - x[:, 1], 0, None)  # noqa: E731
    union = area(a) + area(b) - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)
    return np.where((a < 0).any(1) | (b < 0).any(1), 0.0, iou)


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-frame IoU of bool masks (F, H, W); NaN where both are empty (the frame does not count)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    inter = (a & b).sum((-2, -1)).astype(np.float64)
    union = (a | b).sum((-2, -1)).astype(np.float64)
    return np.where(union > 0, inter / np.maximum(union, 1), np.nan)


@dataclass
class Found:
    """One object the probes find in a clip."""

    color: str
    masks: np.ndarray = field(repr=False)  # (F, H, W) bool
    boxes: np.ndarray = field(repr=False)  # (F, 4) tight pixel box, -1 where absent
    support: np.ndarray = field(repr=False)  # (F,) pixels in each frame


def found_objects(video: np.ndarray, cfg: Any = None) -> list[Found]:
    """The objects `eval.objects.object_masks` finds in a uint8 clip (F, H, W, 3), with per-frame boxes."""
    from .objects import object_masks

    video = np.asarray(video)
    if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
        raise DataError(f"control metrics want a uint8 clip (F, H, W, 3); got {video.dtype} {video.shape}")
    out = []
    for color, m in object_masks(video, cfg).items():
        boxes = np.full((len(m), 4), -1, np.int64)
        for f in np.nonzero(m.any((1, 2)))[0]:
            ys, xs = np.nonzero(m[f])
            boxes[f] = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        out.append(Found(color, m, boxes, m.sum((1, 2)).astype(np.float64)))
    return out


def phrase_color(phrase: str) -> str | None:
    """The palette color a phrase names ("a red circle" -> "red"), or None."""
    words = str(phrase).lower().replace(",", " ").split()
    return next((w for w in words if w in COLORS), None)


def match_objects(phrases: Sequence[str], boxes: Sequence[np.ndarray], found: Sequence[Found]) -> list[int | None]:
    """Index into `found` for each requested object (phrase, boxes (F, 4)): by color, else by mean box IoU."""
    match: list[int | None] = [None] * len(phrases)
    used: set[int] = set()
    by_color = {o.color: i for i, o in enumerate(found)}
    for k, p in enumerate(phrases):
        i = by_color.get(phrase_color(p))
        if i is not None and i not in used:
            match[k] = i
            used.add(i)
    pairs = sorted(((box_iou(boxes[k], found[i].boxes).mean(), k, i) for k in range(len(phrases)) if match[k] is None
                    for i in range(len(found)) if i not in used), key=lambda x: -x[0])
    for iou, k, i in pairs:
        if iou > 0 and match[k] is None and i not in used:
            match[k] = i
            used.add(i)
    return match


@dataclass
class ClipControl:
    """One clip's control scores."""

    box_iou: np.ndarray  # (n_obj, F) per requested object-frame
    mask_iou: np.ndarray | None  # (n_obj, F), NaN where neither mask has pixels; None without requested masks
    detections: list[tuple[int, float, np.ndarray]]  # (frame, score = pixel support, box (4,))
    truths: list[np.ndarray]  # per frame: requested boxes (n, 4) present in it


def score_clip(video: np.ndarray, phrases: Sequence[str], boxes: Sequence[np.ndarray],
               masks: np.ndarray | None = None, cfg: Any = None) -> ClipControl:
    """Requested objects (phrase, boxes (F, 4)[, masks (n_obj, F, H, W)]) vs the objects found in `video`."""
    video = np.asarray(video)
    F = video.shape[0]
    boxes = [np.asarray(b, np.float64) for b in boxes]
    if any(b.shape != (F, 4) for b in boxes) or len(phrases) != len(boxes):
        raise DataError(f"requested boxes must be one (F={F}, 4) track per phrase")
    found = found_objects(video, cfg)
    match = match_objects(phrases, boxes, found)
    ious = np.stack([box_iou(b, found[i].boxes) if i is not None else np.zeros(F) for b, i in zip(boxes, match)]) \
        if boxes else np.zeros((0, F))
    m_iou = None
    if masks is not None:
        masks = np.asarray(masks, bool)
        if masks.shape[:2] != (len(boxes), F) or masks.shape[2:] != video.shape[1:3]:
            raise DataError(f"requested masks {masks.shape}: expected ({len(boxes)}, {F}, H, W) of the clip's size")
        empty = np.zeros(masks.shape[1:], bool)
        m_iou = np.stack([mask_iou(m, found[i].masks if i is not None else empty) for m, i in zip(masks, match)]) \
            if len(masks) else np.zeros((0, F))
    dets = [(f, float(o.support[f]), o.boxes[f]) for o in found for f in range(F) if o.support[f] > 0]
    truths = [np.array([b[f] for b in boxes if (b[f] >= 0).all() and b[f, 2] > b[f, 0] and b[f, 3] > b[f, 1]],
                       np.float64).reshape(-1, 4) for f in range(F)]
    return ClipControl(ious, m_iou, dets, truths)


def average_precision(detections: Sequence[tuple[Any, float, np.ndarray]], truths: dict[Any, np.ndarray],
                      iou_threshold: float = 0.5) -> float:
    """COCO-style AP (one class, 101 recall points) of scored detections (image key, score, box (4,)) against
    ground-truth boxes per image key {key: (n, 4)}; NaN without ground truth."""
    n_gt = sum(len(t) for t in truths.values())
    if n_gt == 0:
        return float("nan")
    order = sorted(range(len(detections)), key=lambda j: -detections[j][1])  # stable: ties keep their order
    taken = {k: np.zeros(len(t), bool) for k, t in truths.items()}
    tp = np.zeros(len(order))
    for r, j in enumerate(order):
        key, _, box = detections[j]
        gt = truths.get(key)
        if gt is None or not len(gt):
            continue
        ious = np.where(taken[key], -1.0, box_iou(gt, np.broadcast_to(np.asarray(box, np.float64), gt.shape)))
        best = int(np.argmax(ious))
        if ious[best] >= iou_threshold:
            taken[key][best] = True
            tp[r] = 1
    ctp = np.cumsum(tp)
    recall = ctp / n_gt
    precision = ctp / np.arange(1, len(order) + 1) if len(order) else np.zeros(0)
    envelope = np.maximum.accumulate(precision[::-1])[::-1] if len(order) else precision  # max precision at >= recall
    points = np.linspace(0, 1, 101)
    idx = np.searchsorted(recall, points, side="left")
    return float(np.mean([envelope[i] if i < len(envelope) else 0.0 for i in idx]))


def text_accuracy(readings: list[Any], attributes: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Color and shape accuracy of one clip's readings against its prompt's attributes, and their mean ("text")."""
    from .probes import prompt_accuracy

    acc = prompt_accuracy(readings, attributes)
    return {"color": acc["color"], "shape": acc["shape"], "text": (acc["color"] + acc["shape"]) / 2}


class ControlScores:
    """A run's clips, added one at a time; `summary()` gives every control figure of the run."""

    def __init__(self, cfg: Any = None) -> None:
        self.cfg = cfg  # the probes' ProbeConfig (None: the defaults)
        self.clips: list[ClipControl] = []
        self.text: list[dict[str, float]] = []
        self.features: list[np.ndarray] = []

    def add(self, video: np.ndarray, phrases: Sequence[str], boxes: Sequence[np.ndarray],
            attributes: Sequence[dict[str, Any]] | None = None, masks: np.ndarray | None = None) -> ClipControl:
        from .probes import probe_clip, reading_features

        video = np.asarray(video)
        clip = score_clip(video, phrases, boxes, masks, self.cfg)
        self.clips.append(clip)
        readings = probe_clip(video, self.cfg)
        self.features.append(reading_features(readings, video.shape[0], video.shape[1]))
        if attributes:
            self.text.append(text_accuracy(readings, attributes))
        return clip

    def summary(self, real_features: np.ndarray | None = None) -> dict[str, Any]:
        """box_iou (mean per object-frame), box_iou_050 (share of object-frames >= 0.5), ap50, mask_iou (or None),
        color / shape / text accuracy, fpd (against `real_features` (M, D) = `probes.probe_features` of real clips,
        or None), object_frames, clips."""
        from .metrics import frechet_distance, mean_accuracy

        if not self.clips:
            raise DataError("no clips scored")
        ious = np.concatenate([c.box_iou.ravel() for c in self.clips])
        masks = [c.mask_iou.ravel() for c in self.clips if c.mask_iou is not None]
        m = np.concatenate(masks) if masks else np.zeros(0)
        m = m[~np.isnan(m)]
        dets = [((i, f), s, b) for i, c in enumerate(self.clips) for f, s, b in c.detections]
        truths = {(i, f): t for i, c in enumerate(self.clips) for f, t in enumerate(c.truths)}
        acc = mean_accuracy(self.text) if self.text else {}
        feats = np.stack(self.features)
        fpd = frechet_distance(feats, real_features) if real_features is not None and len(feats) >= 2 else None
        return {
            "box_iou": float(ious.mean()) if ious.size else float("nan"),
            "box_iou_050": float((ious >= 0.5).mean()) if ious.size else float("nan"),
            "ap50": average_precision(dets, truths, 0.5),
            "mask_iou": float(m.mean()) if masks and m.size else None,
            "color": acc.get("color"), "shape": acc.get("shape"), "text": acc.get("text"),
            "fpd": fpd, "object_frames": int(ious.size), "clips": len(self.clips),
        }

