"""Control conditions: where objects are, per frame, as boxes, masks or edges.

Owns: `BoxTrack` (one object's phrase and per-frame box), the boxes JSON format
(`tracks_to_json`, `parse_boxes`, `read_boxes`, `write_boxes`), ground-truth
conditions from the shapes world (`clip_tracks`, `clip_object_masks`),
`edge_maps` (Sobel, from any clip), `rasterize_boxes`, `mask_from_video` (a
user's segmentation video) and `check_condition` (size / length of a condition clip).
Does not own: the models that read a condition (`diffusion/control.py`), the
probes that find objects in generated clips (`eval/objects.py`).

Boxes JSON: a list with one entry per object,
`{"phrase": "a red circle", "boxes": [[x0, y0, x1, y1], ...]}`, one box per
frame, in pixels of the model's frame size, x to the right, y down, x1 / y1
exclusive (the world's `Clip.boxes` convention). Bad input: entries of the wrong
shape, a trajectory with the wrong number of frames, an empty or inverted box,
or a box wholly outside the frame are a one-line `DataError`; a box partly
outside the frame is clipped to it with a warning (an object entering or leaving
the frame is meaningful).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from .shapes import Clip, WorldConfig, clip_spec


@dataclass
class BoxTrack:
    """One object: its phrase and its box in every frame."""

    phrase: str
    boxes: np.ndarray  # (F, 4) float [x0, y0, x1, y1], pixels, x1 / y1 exclusive


# ----------------------------------------------------------------------------- boxes JSON


def clip_tracks(clip: Clip) -> list[BoxTrack]:
    """The world's ground-truth boxes of a clip, one track per object, phrase "a <color> <shape>"."""
    return [
        BoxTrack(f"a {a['color']} {a['shape']}", clip.boxes[k].astype(np.float64))
        for k, a in enumerate(clip.attributes)
    ]


def tracks_to_json(tracks: list[BoxTrack]) -> list[dict[str, Any]]:
    """Tracks -> the JSON-ready list (integers stay integers)."""
    out = []
    for t in tracks:
        b = np.asarray(t.boxes)
        vals = b.astype(np.int64).tolist() if np.all(b == np.round(b)) else b.tolist()
        out.append({"phrase": t.phrase, "boxes": vals})
    return out


def write_boxes(path: str | Path, tracks: list[BoxTrack]) -> Path:
    from ..io import atomic_write_json

    return atomic_write_json(path, tracks_to_json(tracks))


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)


def parse_boxes(obj: Any, frames: int, size: int | tuple[int, int], source: str = "boxes") -> list[BoxTrack]:
    """Validate a parsed boxes JSON for clips of `frames` frames of `size` (side or (H, W)).

    Raises DataError (one line) for a bad entry; clips partly-outside boxes with a warning.
    """
    H, W = (size, size) if isinstance(size, int) else size
    if not isinstance(obj, list) or not obj:
        raise DataError(f"{source}: expected a non-empty JSON list of {{\"phrase\": ..., \"boxes\": [[x0, y0, x1, y1], ...]}}")
    tracks = []
    for i, e in enumerate(obj):
        where = f"{source}: entry {i}"
        if not isinstance(e, dict) or set(e) != {"phrase", "boxes"}:
            raise DataError(f"{where}: expected an object with exactly the keys \"phrase\" and \"boxes\"")
        if not isinstance(e["phrase"], str) or not e["phrase"].strip():
            raise DataError(f"{where}: \"phrase\" must be a non-empty string")
        boxes = e["boxes"]
        if not isinstance(boxes, list) or not all(isinstance(b, list) and len(b) == 4 and all(map(_number, b)) for b in boxes):
            raise DataError(f"{where}: \"boxes\" must be a list of [x0, y0, x1, y1] number lists, one per frame")
        if len(boxes) != frames:
            raise DataError(f"{where}: {len(boxes)} boxes for a {frames}-frame clip; give exactly one box per frame")
        b = np.asarray(boxes, np.float64)  # (F, 4)
        bad = np.nonzero((b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1]))[0]
        if len(bad):
            raise DataError(f"{where}: frame {bad[0]}: box {boxes[bad[0]]} is empty or inverted; need x0 < x1 and y0 < y1")
        clipped = np.stack([b[:, 0].clip(0, W), b[:, 1].clip(0, H), b[:, 2].clip(0, W), b[:, 3].clip(0, H)], -1)
        gone = np.nonzero((clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1]))[0]
        if len(gone):
            raise DataError(f"{where}: frame {gone[0]}: box {boxes[gone[0]]} lies wholly outside the {W}x{H} frame")
        moved = np.nonzero((clipped != b).any(-1))[0]
        if len(moved):
            warnings.warn(
                f"{where}: {len(moved)} box(es) reach outside the {W}x{H} frame (first: frame {moved[0]}); clipped to it",
                UserWarning,
                stacklevel=2,
            )
        tracks.append(BoxTrack(e["phrase"], clipped))
    return tracks


def read_boxes(path: str | Path, frames: int, size: int | tuple[int, int]) -> list[BoxTrack]:
    """Read and validate a boxes JSON file (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: boxes file not found")
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    return parse_boxes(obj, frames, size, source=str(path))


def rasterize_boxes(tracks: list[BoxTrack], frames: int, size: int | tuple[int, int]) -> np.ndarray:
    """Tracks -> (n_obj, F, H, W) bool: a pixel is in a box when its center is (x0 <= x + 0.5 <= x1)."""
    H, W = (size, size) if isinstance(size, int) else size
    out = np.zeros((len(tracks), frames, H, W), bool)
    xc, yc = np.arange(W) + 0.5, np.arange(H) + 0.5
    for k, t in enumerate(tracks):
        b = np.asarray(t.boxes)
        if b.shape != (frames, 4):
            raise DataError(f"track {t.phrase!r}: boxes {b.shape}, expected ({frames}, 4)")
        inx = (xc[None] >= b[:, :1]) & (xc[None] <= b[:, 2:3])  # (F, W)
        iny = (yc[None] >= b[:, 1:2]) & (yc[None] <= b[:, 3:4])  # (F, H)
        out[k] = iny[:, :, None] & inx[:, None, :]
    return out


def rasterize_paths(tracks: list[BoxTrack], frames: int, size: int | tuple[int, int], radius: int = 1) -> np.ndarray:
    """The motion path of each box: (n_obj, F, H, W) bool, a (2r+1)-square at the box center in each frame.

    Says where an object goes, not how big it is (a drag-style trajectory); center = ((x0 + x1) / 2, (y0 + y1) / 2).
    """
    squares = []
    for t in tracks:
        b = np.asarray(t.boxes, np.float64)  # (F, 4)
        cx, cy = np.floor((b[:, 0] + b[:, 2]) / 2), np.floor((b[:, 1] + b[:, 3]) / 2)  # the center pixel
        squares.append(BoxTrack(t.phrase, np.stack([cx - radius, cy - radius, cx + radius + 1, cy + radius + 1], -1)))
    return rasterize_boxes(squares, frames, size)


# ----------------------------------------------------------------------------- masks and edges


def clip_object_masks(cfg: WorldConfig, split: str, index: int) -> np.ndarray:
    """Ground-truth visible masks (n_obj, F, H, W) bool of world clip `index` of `split`.

    Painted in the world's order: a later object hides the earlier ones where they overlap.
    """
    attributes, masks, pos, _ = clip_spec(cfg, split, index)
    F, S = cfg.frames, cfg.size
    out = np.zeros((len(masks), F, S, S), bool)
    for k, m in enumerate(masks):
        h, w = m.shape
        for f in range(F):
            x, y = pos[k, f]
            out[k, f, y : y + h, x : x + w] = m
            out[:k, f] &= ~out[k, f]
    return out


def mask_from_video(frames: np.ndarray, threshold: int = 127) -> np.ndarray:
    """A user's segmentation video (F, H, W, 3) or (F, H, W) uint8 -> (F, H, W) bool (brightest channel > threshold)."""
    v = np.asarray(frames)
    if v.dtype != np.uint8 or v.ndim not in (3, 4):
        raise DataError(f"mask video: expected uint8 (F, H, W[, 3]), got {v.dtype} {v.shape}")
    return (v.max(-1) if v.ndim == 4 else v) > threshold


def edge_maps(frames: np.ndarray, threshold: float = 0.25) -> np.ndarray:
    """Edges of any clip: (F, H, W, 3) uint8 -> (F, H, W) bool, deterministic.

    Sobel gradient magnitude of each frame's brightest channel (in [0, 1]),
    per frame, `|G| = sqrt(G_x^2 + G_y^2) > threshold * 4` (4 = the Sobel
    response to a unit step); zero padding, so an object touching the frame
    border keeps its edge there.
    """
    from scipy import ndimage

    v = np.asarray(frames)
    if v.dtype != np.uint8 or v.ndim != 4 or v.shape[-1] != 3:
        raise DataError(f"edge maps: expected a uint8 clip (F, H, W, 3), got {v.dtype} {v.shape}")
    g = v.max(-1).astype(np.float64) / 255.0  # (F, H, W)
    # per frame: ndimage.sobel on the whole (F, H, W) array would also smooth across frames
    gx = np.stack([ndimage.sobel(fr, axis=1, mode="constant") for fr in g])
    gy = np.stack([ndimage.sobel(fr, axis=0, mode="constant") for fr in g])
    return np.hypot(gx, gy) > threshold * 4.0


def check_condition(cond: np.ndarray, frames: int, size: int | tuple[int, int], what: str = "condition") -> np.ndarray:
    """A condition clip (F, H, W[, C]) must match the model's frames and size: DataError otherwise."""
    H, W = (size, size) if isinstance(size, int) else size
    c = np.asarray(cond)
    if c.ndim not in (3, 4) or c.shape[:3] != (frames, H, W):
        raise DataError(
            f"{what}: clip of shape {c.shape[:3]} (frames, H, W) does not match the model's ({frames}, {H}, {W});"
            " give one condition frame per generated frame at the model's size"
        )
    return c


CONDITIONS = ("boxes", "mask", "edges")


def condition_clip(kind: str, frames: int, size: int | tuple[int, int], *, video: np.ndarray | None = None,
                   tracks: list[BoxTrack] | None = None) -> np.ndarray:
    """One control condition (F, H, W) bool: `boxes` rasterised from `tracks` (all objects in one channel),
    `mask` from a segmentation / shapes clip (`mask_from_video`: on the black world, the objects), `edges` of a
    clip (`edge_maps`). The clip is checked against (frames, size) first."""
    if kind not in CONDITIONS:
        raise DataError(f"condition {kind!r}; choose one of {', '.join(CONDITIONS)}")
    if kind == "boxes":
        if tracks is None:
            raise DataError("a boxes condition needs box tracks (a boxes JSON file)")
        return rasterize_boxes(tracks, frames, size).any(0)
    if video is None:
        raise DataError(f"a {kind} condition needs a clip")
    v = check_condition(video, frames, size, what=f"{kind} clip")
    return mask_from_video(v) if kind == "mask" else edge_maps(v)
