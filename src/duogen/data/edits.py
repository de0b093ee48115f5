"""Edit pairs from the shapes world: the same clip with one thing changed, and what changed.

Row `i` of split `s` starts from the world's clip `i` of split `s` (`shapes.clip_spec`, so `source` is exactly
`make_clip(cfg, s, i).video`) and changes one attribute of its first object, cycling color / shape / direction
with `i % 3`:
- color: the object is repainted in another palette color (one the other object does not use), same track;
- shape: the object becomes another geometric shape of the same height (circle / square / triangle), its box
  centred where the old one was in every frame;
- direction: the object moves another way at the same speed (a still object gets a speed from the world's
  range), through the same position at the middle frame (or the first / last frame, whichever fits).
If a shape or direction edit cannot fit the frame (or would touch the other object) the row falls back to a
color edit, which always fits. Captions are canonical (`caption(..., paraphrase=False)`), so source and target
captions differ only in the changed words; `instruction` says the edit ("make it blue", "turn the square into
a circle", "make it move left"; with two objects the edited one is named). `mask` (F, H, W) is the union of
the edited object's pixels in source and target: where the edit may change pixels. Nothing else differs.

Owns: sampling and rendering edit pairs, `make_edits` (the `duogen data make edits` writer).
Does not own: the world itself (`shapes.py`), the editing techniques (`bridges/edit`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .shapes import (
    COLORS,
    DIGITS,
    GEOMETRIC,
    MOTION_NAMES,
    SPLITS,
    WorldConfig,
    _DIR_WORDS,
    _boxes,
    _motion_step,
    caption,
    clip_spec,
    paint,
    sprite,
)

EDIT_KINDS: tuple[str, ...] = ("color", "shape", "direction")
TARGET_MOTIONS: tuple[str, ...] = tuple(m for m in MOTION_NAMES if m != "still")


def _name(a: dict[str, Any]) -> str:
    return f"digit {a['shape']}" if a["shape"] in DIGITS else a["shape"]


def instruction(kind: str, src: dict[str, Any], tgt: dict[str, Any], n_objects: int) -> str:
    """The imperative for one edit; with two objects the edited one is named by its color and shape."""
    it = "it" if n_objects == 1 else f"the {src['color']} {_name(src)}"
    if kind == "color":
        return f"make {it} {tgt['color']}"
    if kind == "shape":
        return f"turn the {_name(src) if n_objects == 1 else src['color'] + ' ' + _name(src)} into a {tgt['shape']}"
    return f"make {it} move {_DIR_WORDS[tgt['motion']][0]}"


def _apart(a: np.ndarray, b: np.ndarray, gap: int = 2) -> bool:
    """Boxes (F, 4) a and b at least `gap` px apart in every frame."""
    return bool(np.all((a[:, 2] + gap <= b[:, 0]) | (b[:, 2] + gap <= a[:, 0]) | (a[:, 3] + gap <= b[:, 1]) | (b[:, 3] + gap <= a[:, 1])))


def _fits(pos: np.ndarray, m: np.ndarray, cfg: WorldConfig) -> bool:
    h, w = m.shape
    return bool((pos >= 0).all() and (pos[:, 0] + w <= cfg.size).all() and (pos[:, 1] + h <= cfg.size).all())


def _try_shape(rng: np.random.Generator, attrs: list[dict[str, Any]], masks: list[np.ndarray], pos: np.ndarray,
               cfg: WorldConfig) -> tuple[dict[str, Any], np.ndarray, np.ndarray] | None:
    a, m = attrs[0], masks[0]
    for shape in rng.permutation([s for s in GEOMETRIC if s != a["shape"]]).tolist():
        new = sprite(shape, int(a["size"]))
        centre = pos[0] + np.array([m.shape[1], m.shape[0]]) / 2  # (F, 2) (x, y) box centres
        p = np.round(centre - np.array([new.shape[1], new.shape[0]]) / 2).astype(np.int64)
        if _fits(p, new, cfg) and (len(attrs) == 1 or _apart(_boxes([new], p[None])[0], _boxes(masks[1:], pos[1:])[0])):
            return {**a, "shape": shape}, new, p
    return None


def _try_direction(rng: np.random.Generator, attrs: list[dict[str, Any]], masks: list[np.ndarray], pos: np.ndarray,
                   cfg: WorldConfig) -> tuple[dict[str, Any], np.ndarray, np.ndarray] | None:
    a, m = attrs[0], masks[0]
    speed = float(a["speed"]) if a["motion"] != "still" else round(float(rng.uniform(*cfg.speed)), 2)
    t = np.arange(cfg.frames, dtype=np.float64)
    for motion in rng.permutation([d for d in TARGET_MOTIONS if d != a["motion"]]).tolist():
        dx, dy = _motion_step(motion, speed)
        for anchor in (cfg.frames // 2, 0, cfg.frames - 1):
            p = np.round(pos[0, anchor][None, :] + np.stack([dx * (t - anchor), dy * (t - anchor)], -1)).astype(np.int64)
            if _fits(p, m, cfg) and (len(attrs) == 1 or _apart(_boxes([m], p[None])[0], _boxes(masks[1:], pos[1:])[0])):
                return {**a, "motion": motion, "speed": speed}, m, p
    return None


def _object_mask(m: np.ndarray, p: np.ndarray, cfg: WorldConfig) -> np.ndarray:
    """Pixels (F, H, W) bool of one sprite at per-frame top-left corners p (F, 2)."""
    out = np.zeros((cfg.frames, cfg.size, cfg.size), bool)
    h, w = m.shape
    for f, (x, y) in enumerate(p):
        out[f, y : y + h, x : x + w] |= m
    return out


def make_pair(cfg: WorldConfig, split: str, index: int) -> dict[str, Any]:
    """Edit pair `index` of `split`: a pure function of (cfg, split, index); a row of `make_edits`."""
    attrs, masks, pos, _ = clip_spec(cfg, split, index)
    rng = np.random.default_rng([cfg.seed, SPLITS.index(split), index, 14])  # its own stream: clip_spec is unchanged
    kind = EDIT_KINDS[index % len(EDIT_KINDS)]
    found = {"shape": _try_shape, "direction": _try_direction}.get(kind, lambda *_: None)(rng, attrs, masks, pos, cfg)
    if found is None:
        kind = "color"
        others = {a["color"] for a in attrs}
        color = COLORS[int(rng.integers(len(COLORS)))]
        while color in others:
            color = COLORS[int(rng.integers(len(COLORS)))]
        found = ({**attrs[0], "color": color}, masks[0], pos[0])
    new_attr, new_mask, new_pos = found
    tgt_attrs = [new_attr] + attrs[1:]
    tgt_masks, tgt_pos = [new_mask] + masks[1:], np.concatenate([new_pos[None], pos[1:]])
    source, src_boxes = paint(masks, [a["color"] for a in attrs], pos, cfg)
    target, tgt_boxes = paint(tgt_masks, [a["color"] for a in tgt_attrs], tgt_pos, cfg)
    mask = _object_mask(masks[0], pos[0], cfg) | _object_mask(new_mask, new_pos, cfg)
    return {
        "source": source,
        "target": target,
        "mask": mask.astype(np.uint8),
        "source_caption": caption(attrs, cfg, rng, src_boxes, paraphrase=False),
        "target_caption": caption(tgt_attrs, cfg, rng, tgt_boxes, paraphrase=False),
        "instruction": instruction(kind, attrs[0], new_attr, len(attrs)),
        "edit": kind,
        "object": 0,
        "source_attributes": attrs,
        "target_attributes": tgt_attrs,
        "source_boxes": src_boxes.tolist(),
        "target_boxes": tgt_boxes.tolist(),
    }


def edit_features(frames: int, size: int) -> Any:
    import datasets

    from .folder import clip_features

    base = clip_features(frames, size)
    attrs, boxes = base["attributes"], base["boxes"]
    return datasets.Features({
        "source": datasets.Array4D((frames, size, size, 3), "uint8"),
        "target": datasets.Array4D((frames, size, size, 3), "uint8"),
        "mask": datasets.Array3D((frames, size, size), "uint8"),
        "source_caption": datasets.Value("string"),
        "target_caption": datasets.Value("string"),
        "instruction": datasets.Value("string"),
        "edit": datasets.Value("string"),
        "object": datasets.Value("int32"),
        "source_attributes": attrs,
        "target_attributes": attrs,
        "source_boxes": boxes,
        "target_boxes": boxes,
    })


def make_edits(out: str | Path, cfg: WorldConfig, *, overwrite: bool = False) -> dict[str, Any]:
    """Render `cfg.n` edit pairs over train / validation / heldout to an HF `DatasetDict` at `out`."""
    import time

    from .. import config
    from ..guards import check_fits
    from ..utils import progress
    from .folder import write_dataset

    cfg.check()
    out = Path(out)
    check_fits(out.parent, cfg.n * cfg.frames * cfg.size**2 * 7, f"{cfg.n} edit pairs")
    sizes = cfg.split_sizes()
    bar = progress(total=cfg.n, desc="rendering edit pairs", unit="pair")
    start = time.perf_counter()

    def rows(split: str) -> Any:
        def gen() -> Any:
            for i in range(sizes[split]):
                bar.update(1)
                yield make_pair(cfg, split, i)
        return gen

    counts = write_dataset(out, {s: rows(s) for s in SPLITS}, edit_features(cfg.frames, cfg.size), overwrite=overwrite)
    bar.close()
    config.save_yaml(cfg, out / "world.yaml")
    seconds = time.perf_counter() - start
    return {"out": str(out), "world": "shapes-edits", "size": cfg.size, "frames": cfg.frames, "splits": counts,
            "edits": list(EDIT_KINDS), "seconds": round(seconds, 2)}
