"""Generated data for a more robust classifier (Gowal et al. 2021, "Improving Robustness using Generated
Data"), on the shapes world: the world's shape CNN trained on real clips, on generated clips, and on both.

Arms (equal budgets: the same steps, batch size, optimizer and seeds for every arm):
- `real`: crops of the first `n_real` clips of the train split, labelled by their ground truth;
- `gen-<model>`: crops of clips a generator made from train captions, labelled by the prompt's
  attributes (whatever the generator drew; a prompt object whose color is not found is skipped), or
  with `labels="pseudo"` by the real arm's first-seed classifier, as Gowal et al. label their samples;
- `real+<model>`: both, every batch `ratio` generated and `1 - ratio` real (Gowal et al.'s mix).
Each trained CNN is scored on real validation clips, on the held-out compositions (heldout split: (shape,
color) pairs never in train) and on the validation clips corrupted (`corruptions.py`: noise, blur, color
shift at one severity). The unit is an object: its shape is the argmax of its frames' mean logits.

Crops: the objects are found on the clean clip (`objects.object_masks`); the CNN reads each frame's
box around the object (1 px margin), unmasked, as `objects.object_crops` crops it. A corrupted clip is
cropped at its clean clip's boxes, so the classifier is tested, not the segmentation.

Generated clips are made in batches (call c uses seed + c) and cached as npz under `cache_dir`, keyed
by the model's weights, the prompts and the sampling settings, so reruns only train.

Owns: crops and labels from clips, the generated-clip cache, the arms, their evaluation, results.json,
the plot and the report section. Does not own: the CNN and its training loop (`shape_classifier.py`),
the corruptions (`corruptions.py`), generators (`duogen.bridges.generate`).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np

from ..data.shapes import SHAPES
from ..errors import CheckpointError, ConfigError, DataError
from .corruptions import KINDS as CORRUPTIONS
from .corruptions import corrupt
from .shape_classifier import FitConfig, ShapeClassifier, fit_shape_cnn

SPLITS_NEEDED = ("train", "validation", "heldout")
EVAL_SPLITS = ("validation", "heldout", "corrupted")
CACHE_VERSION = 1


@dataclass
class GeneratedDataConfig:
    n_real: int = 500  # real train clips (the first of the train split)
    n_generated: int = 512  # generated clips per model, from train captions spread over the split
    ratio: float = 0.5  # share of generated examples in every batch of a mixed arm, in (0, 1]
    steps: int = 800  # training steps per arm
    batch_size: int = 128  # crops per step
    lr: float = 2e-3
    seeds: int = 3  # training seeds per arm (seed, seed + 1, ...)
    seed: int = 0  # also the generation seed and the corruption seed
    n_eval: int = 400  # clips per evaluation split
    severity: int = 3  # corruption severity, 1-5
    guidance: float = 3.0  # classifier-free guidance for both paradigms
    diffusion_steps: int = 20  # DPM-Solver++ steps
    gen_batch: int = 32  # clips per generate call
    margin: int = 1  # px added around each object's box
    labels: str = "prompt"  # generated crops' labels: the prompt's shape, or "pseudo": the real arm's reading

    def check(self) -> None:
        if not 0.0 < self.ratio <= 1.0:
            raise ConfigError(f"--ratio must be in (0, 1] (the share of generated examples per batch), got {self.ratio}")
        for name in ("n_real", "n_generated", "steps", "batch_size", "seeds", "n_eval", "gen_batch", "diffusion_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.labels not in ("prompt", "pseudo"):
            raise ConfigError(f"--labels must be prompt or pseudo, got {self.labels!r}")
        if not 1 <= self.severity <= 5:
            raise ConfigError(f"--severity must be 1 to 5, got {self.severity}")


class Crops(NamedTuple):
    """Labelled crops of objects: x (n, crop, crop) float32 in [0, 1], y (n,) shape index, obj (n,) object id."""

    x: np.ndarray
    y: np.ndarray
    obj: np.ndarray


def _box_mask(mask: np.ndarray, margin: int) -> np.ndarray:
    """(F, H, W) object mask -> per frame its bounding box (grown by `margin` px) filled."""
    out = np.zeros_like(mask)
    H, W = mask.shape[1:]
    for f in range(len(mask)):
        ys, xs = np.nonzero(mask[f])
        if len(ys):
            out[f, max(0, ys.min() - margin) : min(H, ys.max() + 1 + margin),
                max(0, xs.min() - margin) : min(W, xs.max() + 1 + margin)] = True
    return out


def clip_crops(videos: Sequence[np.ndarray], attributes: Sequence[Sequence[dict[str, Any]]],
               sources: Sequence[np.ndarray] | None = None, margin: int = 1, desc: str | None = None) -> Crops:
    """Crops of every prompt object found (by its color) in `videos`, labelled with its attribute's shape;
    read from `sources` (e.g. corrupted copies) at the boxes found in `videos` when given."""
    from ..utils import progress
    from .objects import ProbeConfig, object_crops, object_masks

    pcfg = ProbeConfig()
    xs, ys, objs, k = [], [], [], 0
    items = zip(videos, attributes, sources if sources is not None else videos)
    for video, attrs, src in progress(items, total=len(videos), desc=desc, unit="clip", disable=None if desc else True):
        masks = object_masks(np.asarray(video), pcfg)
        for a in attrs:
            m = masks.get(a["color"])
            if m is None:
                continue
            c = object_crops(np.asarray(src), _box_mask(m, margin), pcfg.crop)  # (n_present, crop, crop)
            xs.append(c)
            ys.append(np.full(len(c), SHAPES.index(a["shape"]), np.int64))
            objs.append(np.full(len(c), k, np.int64))
            k += 1
    if not xs:
        return Crops(np.zeros((0, pcfg.crop, pcfg.crop), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64))
    return Crops(np.concatenate(xs), np.concatenate(ys), np.concatenate(objs))


def object_predictions(clf: ShapeClassifier, crops: Crops) -> tuple[np.ndarray, np.ndarray]:
    """(predicted shape, label) per object: the argmax of the mean logits over its frames, and its crops' label."""
    logits = clf.logits(crops.x)  # (n, n_shapes)
    n_obj = int(crops.obj.max()) + 1 if len(crops.obj) else 0
    summed = np.zeros((n_obj, logits.shape[1]))
    np.add.at(summed, crops.obj, logits)
    label = np.zeros(n_obj, np.int64)
    label[crops.obj] = crops.y
    return summed.argmax(1), label


def object_accuracy(clf: ShapeClassifier, crops: Crops) -> float:
    """Share of objects whose argmax of the mean logits over their frames is their shape."""
    if len(crops.x) == 0:
        return float("nan")
    pred, label = object_predictions(clf, crops)
    return float((pred == label).mean())


def pseudo_label(clf: ShapeClassifier, crops: Crops) -> tuple[Crops, float]:
    """`crops` relabelled by `clf`'s reading of each object (Gowal et al.'s pseudo-labels), and the share of
    objects where that reading agrees with the old (prompt) label."""
    if len(crops.x) == 0:
        return crops, float("nan")
    pred, label = object_predictions(clf, crops)
    return crops._replace(y=pred[crops.obj]), float((pred == label).mean())


# ----------------------------------------------------------------------------- data


def load_world(path: str | Path) -> Any:
    """The data set with the splits this evaluation needs, videos as uint8 (one-line DataError otherwise)."""
    from ..data import load_dataset, with_uint8_video

    dd = load_dataset(path)
    missing = [s for s in SPLITS_NEEDED if s not in dd]
    if missing:
        raise DataError(f"data set '{path}' lacks the split(s) {', '.join(missing)}; make a shapes world with"
                        f" `duogen data make shapes --out DIR`")
    for s in SPLITS_NEEDED:
        if len(dd[s]) == 0 or "attributes" not in dd[s].column_names or "video" not in dd[s].column_names:
            raise DataError(f"split '{s}' of '{path}' is empty or has no video / attributes (a shapes world has both)")
    return with_uint8_video(dd)


def _rows(split: Any, idx: Sequence[int]) -> tuple[list[np.ndarray], list[Any], list[str]]:
    rows = split.select(list(idx))
    return [np.asarray(v, np.uint8) for v in rows["video"]], list(rows["attributes"]), list(rows["caption"])


def check_generator_dir(directory: str | Path, kind: str) -> None:
    """A model directory whose config.json says `kind` (one-line CheckpointError otherwise)."""
    from ..io import read_json

    path = Path(directory)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a directory; give a trained {kind} model directory (RUN/final)")
    conf = read_json(path / "config.json")
    if not isinstance(conf, dict) or conf.get("kind") != kind:
        got = conf.get("kind") if isinstance(conf, dict) else None
        raise CheckpointError(f"{path}: config.json kind is {got!r}, not a {kind} generator; give a {kind} model"
                              " directory (RUN/final)")


def _sampling(kind: str, cfg: GeneratedDataConfig) -> dict[str, Any]:
    if kind == "diffusion":
        return {"guidance": cfg.guidance, "steps": cfg.diffusion_steps, "sampler": "dpm"}
    return {"guidance": cfg.guidance}


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def generated_clips(model_dir: str | Path, captions: Sequence[str], cfg: GeneratedDataConfig,
                    cache_dir: str | Path, name: str = "") -> tuple[np.ndarray, bool]:
    """uint8 clips (N, F, H, W, 3), one per caption, from the cache when there; and whether they were cached."""
    from ..bridges.generate import load_generator
    from ..io import file_sha256, read_json
    from ..utils import progress

    model_dir = Path(model_dir)
    kind = read_json(model_dir / "config.json").get("kind")
    kw = _sampling(kind, cfg)
    weights = model_dir / "model.safetensors"
    key = _fingerprint(CACHE_VERSION, file_sha256(weights) if weights.is_file() else str(model_dir.resolve()),
                      list(captions), cfg.seed, cfg.gen_batch, kw)
    path = Path(cache_dir) / f"generated_{key}.npz"
    if path.is_file():
        with np.load(path) as z:
            return z["clips"], True
    gen = load_generator(model_dir)
    clips = []
    starts = range(0, len(captions), cfg.gen_batch)
    for c, i in enumerate(progress(starts, desc=f"generating with {name or model_dir.name}", unit="call")):
        clips.append(gen.generate(list(captions[i : i + cfg.gen_batch]), n=1, seed=cfg.seed + c, **kw).videos)
    out = np.concatenate(clips)  # (N, F, H, W, 3) uint8
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez_compressed(tmp, clips=out, captions=np.asarray(list(captions)))
    tmp.replace(path)
    return out, False


# ----------------------------------------------------------------------------- arms


@dataclass
class ArmPlan:
    name: str
    pools: list[str]  # names of the crop pools it draws from
    shares: list[float]  # share of every batch from each pool
    fit: FitConfig = field(default_factory=FitConfig)


def arm_plans(models: Sequence[str], cfg: GeneratedDataConfig, seed: int) -> list[ArmPlan]:
    """real, gen-<m> and real+<m> for each model name: one FitConfig (same steps, batch, lr, seed) for all."""
    fit = FitConfig(steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, seed=seed)
    plans = [ArmPlan("real", ["real"], [1.0], fit)]
    for m in models:
        plans.append(ArmPlan(f"gen-{m}", [m], [1.0], fit))
    for m in models:
        plans.append(ArmPlan(f"real+{m}", ["real", m], [1.0 - cfg.ratio, cfg.ratio], fit))
    return plans


def _mean_std(v: Sequence[float]) -> tuple[float, float]:
    a = np.asarray(v, np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def run_generated_data(models: dict[str, tuple[str, str]], data: str | Path, out: str | Path,
                       cfg: GeneratedDataConfig, cache_dir: str | Path | None = None,
                       command: str = "") -> dict[str, Any]:
    """Train every arm for every seed, score it on every evaluation split, write results.json,
    accuracy.png and section.json under `out`. models: name -> (kind "ar" | "diffusion", model dir)."""
    from ..io import atomic_write_json
    from ..utils import progress

    cfg.check()
    t0 = time.perf_counter()
    out = Path(out)
    cache_dir = Path(cache_dir) if cache_dir else out.parent / ".cache" / "generated-data"
    dd = load_world(data)
    train = dd["train"]
    n_real = min(cfg.n_real, len(train))
    videos, attrs, _ = _rows(train, range(n_real))
    pools = {"real": clip_crops(videos, attrs, margin=cfg.margin, desc="cropping real clips")}
    gen_idx = np.linspace(0, len(train) - 1, min(cfg.n_generated, len(train))).round().astype(int)
    gen_rows = train.select_columns(["attributes", "caption"]).select(gen_idx)
    gen_attrs, gen_caps = list(gen_rows["attributes"]), list(gen_rows["caption"])
    gen_info: dict[str, Any] = {}
    for name, (kind, model_dir) in models.items():
        clips, cached = generated_clips(model_dir, gen_caps, cfg, cache_dir, name)
        crops = clip_crops(list(clips), gen_attrs, margin=cfg.margin, desc=f"cropping {name} clips")
        pools[name] = crops
        n_obj = sum(len(a) for a in gen_attrs)
        found = int(crops.obj.max()) + 1 if len(crops.obj) else 0
        gen_info[name] = {"kind": kind, "model": str(model_dir), "clips": len(clips), "cached": cached,
                          "objects_asked": n_obj, "objects_found": found,
                          "label_agreement": _label_agreement(list(clips), gen_attrs),
                          "sampling": _sampling(kind, cfg)}
    if cfg.labels == "pseudo":  # the teacher is the real arm's first-seed model (same data, budget and seed)
        teacher, _ = fit_shape_cnn([(pools["real"].x, pools["real"].y)], fit=arm_plans([], cfg, cfg.seed)[0].fit,
                                   desc="training the pseudo-labeller")
        for name in models:
            pools[name], gen_info[name]["pseudo_agrees_with_prompt"] = pseudo_label(teacher, pools[name])
    evals: dict[str, Crops] = {}
    corrupted: dict[str, Crops] = {}
    for split in ("validation", "heldout"):
        v, a, _ = _rows(dd[split], range(min(cfg.n_eval, len(dd[split]))))
        evals[split] = clip_crops(v, a, margin=cfg.margin, desc=f"cropping {split} clips")
        if split == "validation":
            stack = np.stack(v)  # (N, F, H, W, 3)
            for kind in CORRUPTIONS:
                bad = corrupt(stack, kind, cfg.severity, cfg.seed)
                corrupted[kind] = clip_crops(v, a, sources=list(bad), margin=cfg.margin)
    runs: list[dict[str, Any]] = []
    plans_all = [arm_plans([m for m in models if len(pools[m].x)], cfg, cfg.seed + s) for s in range(cfg.seeds)]
    todo = [p for plans in plans_all for p in plans]
    for plan in progress(todo, desc="training arms", unit="arm"):
        clf, loss = fit_shape_cnn([(pools[p].x, pools[p].y) for p in plan.pools], plan.shares, plan.fit,
                                  desc=f"training {plan.name}")
        scores = {s: object_accuracy(clf, evals[s]) for s in evals}
        per_kind = {k: object_accuracy(clf, c) for k, c in corrupted.items()}
        scores["corrupted"] = float(np.mean(list(per_kind.values())))
        runs.append({"arm": plan.name, "seed": plan.fit.seed, "pools": plan.pools, "shares": plan.shares,
                     "steps": plan.fit.steps, "batch_size": plan.fit.batch_size, "lr": plan.fit.lr,
                     "final_loss": round(loss, 4), "accuracy": scores, "corrupted_by_kind": per_kind})
    arms = _summarize(runs)
    res = {
        "config": asdict(cfg), "data": str(data), "models": gen_info,
        "pools": {k: {"crops": len(c.x), "objects": int(c.obj.max()) + 1 if len(c.obj) else 0} for k, c in pools.items()},
        "eval_objects": {k: int(c.obj.max()) + 1 if len(c.obj) else 0 for k, c in evals.items()},
        "arms": arms, "targets": _targets(arms, list(models)), "runs": runs,
        "skipped": [m for m in models if not len(pools[m].x)],
        "seconds": round(time.perf_counter() - t0, 1), "command": command,
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "results.json", res)
    from .generated_data_report import write_plot, write_section

    write_plot(res, out / "accuracy.png")
    write_section(res, out / "section.json")
    return res


def _label_agreement(clips: Sequence[np.ndarray], attrs: Sequence[Any]) -> float:
    """Share of prompt objects whose shape the packaged probe reads in the generated clip (prompt_accuracy):
    how often a generated example's label is right, the ceiling of what generated-only training can learn."""
    from .probes import prompt_accuracy

    if not clips:
        return float("nan")
    return float(np.mean([prompt_accuracy(c, a)["shape"] for c, a in zip(clips, attrs)]))


def _summarize(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per arm: mean and sample std over seeds of each split's accuracy, and the budget it trained with."""
    arms: dict[str, Any] = {}
    for r in runs:
        a = arms.setdefault(r["arm"], {"steps": r["steps"], "batch_size": r["batch_size"], "shares": r["shares"],
                                      "pools": r["pools"], "seeds": [], "_acc": {s: [] for s in EVAL_SPLITS}})
        a["seeds"].append(r["seed"])
        for s in EVAL_SPLITS:
            a["_acc"][s].append(r["accuracy"][s])
    for a in arms.values():
        acc = a.pop("_acc")
        a["mean"] = {s: _mean_std(v)[0] for s, v in acc.items()}
        a["std"] = {s: _mean_std(v)[1] for s, v in acc.items()}
    return arms


def _targets(arms: dict[str, Any], models: Sequence[str]) -> dict[str, Any]:
    """The issue's targets per model: gen-only >= 90% of real (validation); real+gen >= real + 3 points on
    the corrupted or the held-out split."""
    out: dict[str, Any] = {}
    real = arms.get("real")
    for m in models:
        g, mix = arms.get(f"gen-{m}"), arms.get(f"real+{m}")
        if real is None or g is None or mix is None:
            continue
        rel = g["mean"]["validation"] / real["mean"]["validation"] if real["mean"]["validation"] else float("nan")
        gains = {s: mix["mean"][s] - real["mean"][s] for s in ("corrupted", "heldout")}
        out[m] = {"gen_over_real_validation": rel, "gen_only_met": bool(rel >= 0.9),
                  "mix_gain_points": {s: 100 * v for s, v in gains.items()},
                  "mix_met": bool(max(gains.values()) >= 0.03)}
    return out
