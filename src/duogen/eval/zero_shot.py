"""Zero-shot classification scored on a shapes-world split: per attribute, and attribute binding.

For each single-object clip the candidates are the world's canonical captions of the clip with one attribute
set to each value the world has (color: 7, shape: 13, direction: 9 motions, `still` included), so they differ
in that attribute only and read like training captions (`duogen.data.shapes.caption`, no paraphrase). For
each two-object clip, binding asks the clip's caption against the caption with the two objects' colors
swapped ("a red circle ... and a blue square ..." vs "a blue circle ... and a red square ..."; chance 50%);
a clip whose swap reads the same (one shape and one motion for both) is skipped. Objects asks each two-object
clip's caption against the caption of each of its objects alone (chance 1/3): a score that ranks "a red circle
..." with "... and a blue square ..." does not count the objects a caption names. The supervised probes
(`duogen.eval.probes`) read the same clips as a baseline: an attribute is right when the probe reads it,
binding is right when the probe's readings match the true caption better than the swapped one (a tie is half),
objects when the probes count the clip's two objects.

Owns: candidate captions, `evaluate_zero_shot` (behind `duogen eval zero-shot`) and `score_split` (the
benchmark's loop over clips). Does not own: the classifiers (`duogen.bridges.classify`), the probes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..data.shapes import COLORS, MOTION_NAMES, SHAPES, WorldConfig, caption
from ..errors import DataError

ATTRIBUTES = ("color", "shape", "direction")
TWO_OBJECT_KINDS = ("binding", "objects")  # kinds asked of two-object clips
KINDS = ATTRIBUTES + TWO_OBJECT_KINDS
_KEY = {"color": "color", "shape": "shape", "direction": "motion"}  # attribute -> the world's attribute key
_VALUES = {"color": COLORS, "shape": SHAPES, "direction": MOTION_NAMES}


def canonical(attributes: Sequence[dict[str, Any]], cfg: WorldConfig | None = None) -> str:
    """The world's canonical caption of these objects (first template, no size / speed adjectives)."""
    return caption([dict(a) for a in attributes], cfg or WorldConfig(), np.random.default_rng(0), paraphrase=False)


def attribute_candidates(attrs: dict[str, Any], attribute: str, cfg: WorldConfig | None = None) -> tuple[list[str], int]:
    """One object's captions with `attribute` set to each of the world's values; the index of the true one."""
    key = _KEY[attribute]
    values = _VALUES[attribute]
    return [canonical([{**attrs, key: v}], cfg) for v in values], list(values).index(attrs[key])


def swapped(attributes: Sequence[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """Two objects with their colors exchanged; None when that describes the same clip (same shape and motion)."""
    a, b = (dict(x) for x in attributes)
    if a["shape"] == b["shape"] and a["motion"] == b["motion"]:
        return None
    return [{**a, "color": b["color"]}, {**b, "color": a["color"]}]


def binding_candidates(attributes: Sequence[dict[str, Any]], cfg: WorldConfig | None = None) -> list[str] | None:
    """[the clip's caption, the color-swapped caption] of a two-object clip, or None (see `swapped`)."""
    other = swapped(attributes)
    return None if other is None else [canonical(attributes, cfg), canonical(other, cfg)]


def objects_candidates(attributes: Sequence[dict[str, Any]], cfg: WorldConfig | None = None) -> list[str]:
    """[the two-object clip's caption, the first object's own caption, the second's]: does the classifier's score
    know that a caption naming one of the clip's objects leaves the other out? (A generator whose score does not
    can draw one object for a two-object prompt at little cost to its likelihood.)"""
    a, b = (dict(x) for x in attributes)
    return [canonical([a, b], cfg), canonical([a], cfg), canonical([b], cfg)]


def _probe_binding(readings: list[Any], attributes: Sequence[dict[str, Any]]) -> float:
    from .probes import prompt_accuracy

    def match(attrs: Sequence[dict[str, Any]]) -> float:
        acc = prompt_accuracy(readings, attrs)
        return acc["color"] + acc["direction"] + acc["shape"]

    true, other = match(attributes), match(swapped(attributes) or attributes)
    return 1.0 if true > other else 0.5 if true == other else 0.0


def _tally() -> dict[str, Any]:
    return {"clips": 0, "hits": 0, "probe": 0.0, "forward_passes": 0, "seconds": 0.0, "candidates": 0}


def score_split(gen: Any, rows: Sequence[tuple[np.ndarray, list[dict[str, Any]]]], kinds: Sequence[str], *,
                n: int, cfg: WorldConfig | None = None, seed: int = 0, diffusion: Any = None,
                progress_desc: str | None = None) -> dict[str, dict[str, Any]]:
    """Classify up to `n` clips per kind from `rows` ((video uint8 (F, H, W, 3), attributes) pairs, in order):
    single-object clips for the attributes, two-object clips with a distinct swap for binding, every two-object
    clip for objects. Returns per kind
    {clips, candidates, chance, accuracy, probe_accuracy, forward_passes_per_clip, seconds_per_clip}."""
    from ..bridges.classify import classify
    from ..utils import progress
    from .probes import probe_clip, prompt_accuracy

    for k in kinds:
        if k not in KINDS:
            raise DataError(f"unknown attribute {k!r}; allowed values: {', '.join(KINDS)}, all")
    t = {k: _tally() for k in kinds}
    bar = progress(total=n * len(kinds), desc=progress_desc or "zero-shot", unit="clip")
    for video, attributes in rows:
        want = [k for k in kinds if t[k]["clips"] < n and (k in TWO_OBJECT_KINDS) == (len(attributes) == 2)]
        if "binding" in want and swapped(attributes) is None:
            want.remove("binding")
        if not want:
            if all(t[k]["clips"] >= n for k in kinds):
                break
            continue
        readings = probe_clip(video)
        for k in want:
            if k == "binding":
                labels, truth = binding_candidates(attributes, cfg), 0
                probe = _probe_binding(readings, attributes)
            elif k == "objects":
                labels, truth = objects_candidates(attributes, cfg), 0
                probe = prompt_accuracy(readings, attributes)["count"]
            else:
                labels, truth = attribute_candidates(attributes[0], k, cfg)
                probe = prompt_accuracy(readings, attributes)[k]
            res = classify(gen, video, labels, seed=seed, diffusion=diffusion)
            s = t[k]
            s["clips"] += 1
            s["hits"] += res.labels[0] == labels[truth]
            s["probe"] += probe
            s["forward_passes"] += res.forward_passes
            s["seconds"] += res.seconds
            s["candidates"] = len(labels)
            bar.update(1)
    bar.close()
    out = {}
    for k, s in t.items():
        c = max(1, s["clips"])
        out[k] = {"clips": s["clips"], "candidates": s["candidates"],
                  "chance": round(1 / s["candidates"], 4) if s["candidates"] else None,
                  "accuracy": round(s["hits"] / c, 4), "probe_accuracy": round(s["probe"] / c, 4),
                  "forward_passes_per_clip": round(s["forward_passes"] / c, 1),
                  "seconds_per_clip": round(s["seconds"] / c, 4)}
    return out


def split_rows(data: str | Path, split: str) -> tuple[Any, WorldConfig]:
    """(video, attributes) rows of a data set's split, read lazily, and the world config it was made with."""
    from ..data import load_dataset, with_uint8_video
    from ..data.shapes import load_world_config

    dd = load_dataset(data)
    if split not in dd:
        raise DataError(f"data set '{data}' has no split '{split}'; it has: {', '.join(dd)}")
    ds = dd[split]
    if "attributes" not in ds.column_names:
        raise DataError(f"data set '{data}' has no `attributes` column: zero-shot scoring needs the shapes world"
                        " (`duogen data make shapes`)")
    world = Path(data) / "world.yaml"
    cfg = load_world_config("tiny", file=world) if world.is_file() else WorldConfig()
    ds = with_uint8_video(ds)
    return ((row["video"], [dict(a) for a in row["attributes"]]) for row in ds), cfg


def evaluate_zero_shot(model: str | Path, data: str | Path, attribute: str = "all", split: str = "validation",
                       n: int = 50, seed: int = 0, diffusion: Any = None) -> dict[str, Any]:
    """`duogen eval zero-shot`: accuracy per attribute (and binding) of a model as a zero-shot classifier on a
    split's first `n` suitable clips, beside the probes and chance, with forward passes and seconds per clip."""
    from ..bridges.classify import load_classifier

    kinds = list(KINDS) if attribute == "all" else [attribute]
    for k in kinds:
        if k not in KINDS:
            raise DataError(f"unknown attribute {k!r}; allowed values: {', '.join(KINDS)}, all")
    if n < 1:
        raise DataError(f"--n must be at least 1, got {n}")
    gen = load_classifier(model)
    rows, cfg = split_rows(data, split)
    res = score_split(gen, rows, kinds, n=n, cfg=cfg, seed=seed, diffusion=diffusion)
    short = [k for k, r in res.items() if r["clips"] < n]
    out: dict[str, Any] = {"model": str(model), "paradigm": gen.kind, "data": str(data), "split": split, **res}
    if short:
        out["note"] = f"the split had fewer than {n} suitable clips for: {', '.join(short)}"
    return out
