"""The AR-vs-diffusion comparison: same prompts, same seeds, same probes, one results dict.

`compare(models, prompts, ...)` samples every model at every sampling setting
of its sweep, scores the clips with the probes (`duogen.eval.probes`), adds
set-level metrics (`duogen.eval.metrics`) and the training cost read from each
model's run directory, and writes the raw clips losslessly (`clips/*.npz`) so
`rescore(report_dir)` can recompute every accuracy. The HTML page is
`duogen.eval.report`'s job; loading a model directory is `duogen.bridges`'.

Seeds policy: with `per_call=1`, prompt i is sampled with seed `seed + i` for
every model and setting (its N samples come from that one call); with
`per_call=c`, prompts go c at a time (much faster for the AR sampler, whose
cost is per decoding step) and call k uses `seed + k*c`. Either way every
model sees the same seeds for the same prompts.

Cost units: diffusion settings count denoiser forward passes per clip (steps,
times 2 under classifier-free guidance, which evaluates conditional and
unconditional branches); AR settings count the tokens the generator reports
sampling per clip (times 2 under guidance: two streams).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..errors import CheckpointError, ConfigError, DataError
from . import metrics
from .files import read_metrics, slug

Clips = np.ndarray  # uint8 (P, N, F, H, W, 3): prompts x samples


# ----------------------------------------------------------------------------- inputs


@dataclass
class Prompt:
    """One prompt: its caption, the ground-truth attributes the probes check, where it came from."""

    caption: str
    attributes: list[dict[str, Any]] = field(default_factory=list)
    split: str = "custom"  # "validation" | "heldout" | "custom"


@dataclass
class Setting:
    """One sampling configuration of a model: a label and the keyword arguments of `generate`."""

    label: str
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelEntry:
    """A named model in a comparison: its generator, kind ("ar" | "diffusion") and sampling sweep.

    The first setting is the headline: the one the clip grid and the metrics table show.
    """

    name: str
    generator: Any
    kind: str
    settings: list[Setting]
    path: str | None = None


def diffusion_settings(steps: Sequence[int] = (10, 20, 50), guidance: float | None = None) -> list[Setting]:
    """DDIM at every step count (largest first: the headline) and DPM-Solver++(2M) at counts up to 20."""
    g = {} if guidance is None else {"guidance": guidance}
    steps = sorted({int(s) for s in steps}, reverse=True)
    out = [Setting(f"ddim-{s}", {"sampler": "ddim", "steps": s, **g}) for s in steps]
    out += [Setting(f"dpm++-{s}", {"sampler": "dpm_solver", "steps": s, **g}) for s in steps if s <= 20]
    return out


def ar_settings(guidance: float = 3.0, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                layout_candidates: int = 1) -> list[Setting]:
    """AR with classifier-free guidance (the headline) and without it (guidance None: one stream).

    `temperature`, `top_k`, `top_p` and `layout_candidates` (an AR model's best of K first frames) apply to
    both; a value other than plain sampling's (1, 0 = off, 1 = off, 1) is named in the labels ("cfg-5 t0.5",
    "cfg-3 lc4").
    """
    extra: dict[str, Any] = {}
    if temperature != 1.0:
        extra["temperature"] = temperature
    if top_k:
        extra["top_k"] = top_k
    if top_p != 1.0:
        extra["top_p"] = top_p
    if layout_candidates != 1:
        extra["layout_candidates"] = int(layout_candidates)
    tag = "".join(f" {p}{extra[k]:g}" for k, p in (("temperature", "t"), ("top_k", "k"), ("top_p", "p"),
                                                   ("layout_candidates", "lc")) if k in extra)
    out = [Setting(f"cfg-{guidance:g}{tag}", {"guidance": guidance, **extra})]
    if guidance != 1.0:
        out.append(Setting(f"no-cfg{tag}", {"guidance": None, **extra}))
    return out


def load_prompts(path: str | Path) -> list[Prompt]:
    """Prompts from a file: JSON/JSONL objects {caption, attributes?, split?}, or one caption per line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: prompt file not found")
    text = path.read_text().strip()
    if not text:
        raise DataError(f"{path}: prompt file is empty")
    try:
        items = json.loads(text) if text.startswith("[") else None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if items is None:
        items = []
        for i, line in enumerate(text.splitlines()):
            line = line.strip()
            if not line:
                continue
            if line.startswith("{"):
                try:
                    items.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{i + 1}: not valid JSON ({e})") from None
            else:
                items.append({"caption": line})
    prompts = []
    for i, it in enumerate(items):
        if isinstance(it, str):
            it = {"caption": it}
        if not isinstance(it, dict) or not isinstance(it.get("caption"), str):
            raise DataError(f"{path}: item {i} needs a string 'caption'")
        prompts.append(Prompt(it["caption"], list(it.get("attributes") or []), str(it.get("split", "custom"))))
    return prompts


def dataset_prompts(data_dir: str | Path, per_split: int = 16) -> list[Prompt]:
    """The world's validation prompts and held-out compositions: the first `per_split` distinct captions of each."""
    from ..data import load_dataset

    dd = load_dataset(data_dir)
    prompts: list[Prompt] = []
    for split in ("validation", "heldout"):
        if split not in dd:
            continue
        ds = dd[split]
        seen: set[str] = set()
        for i in range(len(ds)):
            if len(seen) >= per_split:
                break
            row = ds[i]
            cap = str(row["caption"])
            if cap in seen:
                continue
            seen.add(cap)
            prompts.append(Prompt(cap, [dict(a) for a in row["attributes"]], split))
    if not prompts:
        raise DataError(f"{data_dir}: no validation or heldout clips to take prompts from")
    return prompts


def real_clips(data_dir: str | Path, max_clips: int = 256) -> np.ndarray:
    """Real clips to compare against: the held-out and validation splits, uint8 (N, F, H, W, 3)."""
    from ..data import load_dataset

    dd = load_dataset(data_dir)
    out = []
    for split in ("heldout", "validation"):
        if split in dd and len(out) < max_clips:
            ds = dd[split].with_format("numpy")
            k = min(len(ds), max_clips - len(out))
            out.extend(np.asarray(v, np.uint8) for v in ds.select(range(k))["video"])
    if len(out) < 2:
        raise DataError(f"{data_dir}: fewer than 2 held-out/validation clips to compare against")
    return np.stack(out)


# ----------------------------------------------------------------------------- model directories


def run_dir_of(model_dir: str | Path) -> Path:
    """A model dir written by the engine is RUN/final; other dirs are their own run dir."""
    model_dir = Path(model_dir)
    return model_dir.parent if model_dir.name == "final" else model_dir


def _find_key(obj: Any, names: Sequence[str]) -> Any:
    """The first value under any of `names`, searching nested dicts breadth first."""
    queue = [obj]
    while queue:
        cur = queue.pop(0)
        if isinstance(cur, Mapping):
            for n in names:
                if n in cur and not isinstance(cur[n], Mapping):
                    return cur[n]
            queue.extend(v for v in cur.values() if isinstance(v, Mapping))
    return None


def model_config(model_dir: str | Path) -> dict[str, Any]:
    """The resolved configuration that produced a model: the run's config.yaml and the model's config.json."""
    import yaml

    model_dir = Path(model_dir)
    out: dict[str, Any] = {}
    cfg = model_dir / "config.json"
    if cfg.is_file():
        out["model"] = json.loads(cfg.read_text())
    run_yaml = run_dir_of(model_dir) / "config.yaml"
    if run_yaml.is_file():
        out["run"] = yaml.safe_load(run_yaml.read_text())
    return out


def _existing_dir(val: Any, base: Path) -> Path | None:
    if not isinstance(val, str) or not val:
        return None
    p = Path(val)
    for cand in (p, base / p):
        if (cand / "dataset_dict.json").is_file():
            return cand
    return None


def find_dataset(model_dir: str | Path) -> Path | None:
    """The data set a model was trained on: a "data" key in its run config, else the "trained_on"
    of the codec its config.json names (the codec recipe records it)."""
    model_dir = Path(model_dir)
    cfg = model_config(model_dir)
    for section in (cfg.get("run"), cfg.get("model")):
        found = _existing_dir(_find_key(section or {}, ("data", "data_dir", "dataset", "data_path")), run_dir_of(model_dir))
        if found:
            return found
    codec = _find_key(cfg.get("model") or {}, ("codec", "tokenizer", "codec_dir"))
    codec_dirs = [model_dir / "codec"]  # diffusion model dirs carry a copy of their codec
    if isinstance(codec, str) and codec:
        codec_dirs.insert(0, Path(codec) if Path(codec).is_absolute() else model_dir / codec)
    for cdir in codec_dirs:
        if (cdir / "config.json").is_file():
            found = _existing_dir(_find_key(json.loads((cdir / "config.json").read_text()), ("trained_on", "data")), cdir)
            if found:
                return found
    return None


def count_weights(model_dir: str | Path) -> int:
    """Parameters stored in the model's own model.safetensors (the shared codec is not counted)."""
    from safetensors import safe_open

    path = Path(model_dir) / "model.safetensors"
    if not path.is_file():
        return 0
    n = 0
    with safe_open(str(path), framework="np") as f:
        for k in f.keys():
            n += math.prod(f.get_slice(k).get_shape())
    return int(n)


def training_info(model_dir: str | Path) -> dict[str, Any]:
    """Training FLOPs, wall time and steps from the engine's summary.json (else the last metrics row)."""
    run = run_dir_of(model_dir)
    summary: dict[str, Any] = {}
    if (run / "summary.json").is_file():
        summary = json.loads((run / "summary.json").read_text())
    rows = read_metrics(run)
    last = rows[-1] if rows else {}

    def pick(*names: str) -> Any:
        for src in (summary, last):
            v = _find_key(src, names)
            if v is not None:
                return v
        return None

    # summary.json's wall_s is the last session's; metrics rows carry the run's cumulative wall time
    walls = [v for v in (_find_key(summary, ("wall_s",)), _find_key(last, ("wall_s",))) if isinstance(v, (int, float))]
    return {
        "run_dir": str(run),
        "flops": pick("flops", "total_flops"),
        "wall_s": max(walls) if walls else None,
        "steps": pick("steps", "step"),
        "final_loss": pick("final_loss", "loss"),
        "stopped": summary.get("stopped"),
    }


def load_model(name: str, model_dir: str | Path, settings: list[Setting] | None = None, *,
               steps_sweep: Sequence[int] = (10, 20, 50), guidance: float | None = None,
               ar_sampling: Mapping[str, Any] | None = None) -> ModelEntry:
    """Load a generator from a model dir (`duogen.bridges.generate.load_generator`) with its default sweep.

    `ar_sampling`: temperature / top_k / top_p / layout_candidates for an AR model's settings (`ar_settings`); a
    diffusion model ignores it."""
    from ..bridges.generate import load_generator

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise CheckpointError(f"{model_dir}: not a model directory (no config.json); pass RUN/final")
    gen = load_generator(model_dir)
    kind = "diffusion" if getattr(gen, "kind", "") == "diffusion" else "ar"
    if settings is None:
        if kind == "diffusion":
            if guidance is None:  # the model's own default scale, written out so the cost counts its streams
                guidance = _find_key(json.loads((model_dir / "config.json").read_text()), ("guidance",))
            settings = diffusion_settings(steps_sweep, guidance)
        else:
            settings = ar_settings(3.0 if guidance is None else guidance, **(ar_sampling or {}))
    return ModelEntry(name=name, generator=gen, kind=kind, settings=settings, path=str(model_dir))


# ----------------------------------------------------------------------------- sampling


def _as_uint8(videos: Any) -> np.ndarray:
    """Generator output -> uint8 (B, F, H, W, 3), from uint8 arrays or float (B, 3, F, H, W) in [-1, 1]."""
    if hasattr(videos, "detach"):
        videos = videos.detach().float().cpu().numpy()
    v = np.asarray(videos)
    if v.dtype == np.uint8:
        return v
    if v.ndim == 5 and v.shape[1] == 3 and v.shape[-1] != 3:
        v = v.transpose(0, 2, 3, 4, 1)  # (B, 3, F, H, W) -> (B, F, H, W, 3)
    return ((v.astype(np.float32) + 1) * 127.5).round().clip(0, 255).astype(np.uint8)


def _result_cost(result: Any, kind: str, kwargs: Mapping[str, Any], n_clips: int) -> tuple[float, str]:
    """Network evaluations per clip, conditional and unconditional streams counted separately.

    AR: the tokens the generator reports sampling (`GenerationResult.tokens`, all clips of the
    call) per clip, times 2 under guidance. Diffusion: the denoiser evaluations it reports
    (`GenerationResult.forward_passes`: clips x steps x streams) per clip, else steps x streams.
    """
    g = kwargs.get("guidance")
    streams = 2 if g is not None and float(g) != 1.0 else 1
    if kind == "diffusion":
        fp = getattr(result, "forward_passes", 0)
        if isinstance(fp, (int, float)) and fp > 0:
            return float(fp) / n_clips, "forward passes"
        steps = kwargs.get("steps")
        if steps is None:
            raise ConfigError("a diffusion sampling setting must name its number of steps")
        return float(steps) * streams, "forward passes"
    tokens = getattr(result, "tokens", 0)
    if not isinstance(tokens, (int, float)) or tokens <= 0:
        raise ConfigError("the AR generator did not report how many tokens it sampled (GenerationResult.tokens)")
    return float(tokens) / n_clips * streams, "tokens"


def sample(entry: ModelEntry, setting: Setting, prompts: Sequence[Prompt], n: int, seed: int,
           per_call: int = 1) -> tuple[Clips, float, float, str]:
    """Sample N clips per prompt -> (clips (P, N, F, H, W, 3), seconds per clip, cost per clip, unit).

    Prompts go to `generate` `per_call` at a time: call k takes prompts [k*c, (k+1)*c) with
    seed `seed + k*c`, and clip (i, j) is row (i - k*c)*n + j of its call (the bridge's order).
    With per_call=1 every prompt has its own seed, independent of the prompt list.
    """
    clips, seconds, cost, unit = [], 0.0, 0.0, ""
    c = max(1, int(per_call))
    for k in range(0, len(prompts), c):
        chunk = [p.caption for p in prompts[k : k + c]]
        t0 = time.perf_counter()
        res = entry.generator.generate(chunk, n=n, seed=seed + k, **setting.kwargs)
        seconds += time.perf_counter() - t0
        v = _as_uint8(getattr(res, "videos", res))
        if v.shape[0] != len(chunk) * n:
            raise ConfigError(f"{entry.name}: generate returned {v.shape[0]} clips for {len(chunk)} prompts x n={n}")
        per_clip, unit = _result_cost(res, entry.kind, setting.kwargs, v.shape[0])
        cost += per_clip * len(chunk)
        clips.append(v.reshape((len(chunk), n) + v.shape[1:]))
    P = max(1, len(prompts))
    return np.concatenate(clips), seconds / (P * n), cost / P, unit


# ----------------------------------------------------------------------------- scoring


def read_clips(clips: Clips) -> list[list[Any]]:
    """Probe readings of every clip, [prompt][sample]; read once, then scored and featurized."""
    from .probes import probe_clip

    return [[probe_clip(c) for c in per_prompt] for per_prompt in clips]


def score_readings(readings: list[list[Any]], prompts: Sequence[Prompt]) -> list[list[dict[str, float]]]:
    """Per-attribute prompt accuracy for every clip: [prompt][sample] -> {kind: fraction}."""
    from .probes import prompt_accuracy

    return [[{k: float(v) for k, v in prompt_accuracy(r, p.attributes).items()} if p.attributes else {} for r in row]
            for p, row in zip(prompts, readings)]


def score_clips(clips: Clips, prompts: Sequence[Prompt]) -> list[list[dict[str, float]]]:
    """Per-attribute prompt accuracy of uint8 clips (P, N, F, H, W, 3) against their prompts."""
    return score_readings(read_clips(clips), prompts)


PerClip = list[list[dict[str, float]]]


def _grouped(per_clip: PerClip, prompts: Sequence[Prompt], key: Callable[[Prompt], Any],
             stat: Callable[[PerClip], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """`stat` of the per-prompt rows of each group of prompts with the same `key` (None: in no group), by str(key)."""
    groups = sorted({key(p) for p in prompts} - {None})
    return {str(g): stat([row for row, p in zip(per_clip, prompts) if key(p) == g]) for g in groups}


def _per_split(per_clip: PerClip, prompts: Sequence[Prompt],
               stat: Callable[[PerClip], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """`stat` of the per-prompt rows over all prompts ("all") and over each prompt split."""
    return {"all": stat(per_clip), **_grouped(per_clip, prompts, lambda p: p.split, stat)}


def _mean(rows: PerClip) -> dict[str, float]:
    return metrics.mean_accuracy(a for row in rows for a in row)


def accuracy_table(per_clip: PerClip, prompts: Sequence[Prompt]) -> dict[str, dict[str, float]]:
    """Mean accuracy per attribute kind, per prompt split and over all prompts."""
    return _per_split(per_clip, prompts, _mean)


def accuracy_stderr(per_clip: PerClip, prompts: Sequence[Prompt]) -> dict[str, dict[str, Any]]:
    """The standard error of each `accuracy_table` entry, prompts as the units (`metrics.accuracy_stderr`)."""
    return _per_split(per_clip, prompts, metrics.accuracy_stderr)


def grouped_accuracy(per_clip: PerClip, prompts: Sequence[Prompt], key: Callable[[Prompt], Any]) -> dict[str, dict[str, Any]]:
    """Per group of prompts with the same `key` (None: in no group), by str(key): the mean accuracy per attribute
    kind ("accuracy"), its standard error with prompts as the units ("stderr") and the number of prompts."""
    return _grouped(per_clip, prompts, key, lambda rows: {
        "accuracy": _mean(rows), "stderr": metrics.accuracy_stderr(rows), "prompts": len(rows)})


def accuracy_by_objects(per_clip: PerClip, prompts: Sequence[Prompt]) -> dict[str, dict[str, Any]]:
    """`grouped_accuracy` over the prompts with the same number of objects: {"1": ..., "2": ...}. Where a
    paradigm loses its accuracy shows here: a one-layer AR model at the demo's budget draws one object's color
    92-100% of the time and two objects' 62-72%, the DiT 95-100% and 89-98% (docs/demo_runs/record.md)."""
    return grouped_accuracy(per_clip, prompts, lambda p: len(p.attributes) or None)


def features(clips: np.ndarray) -> np.ndarray:
    """Probe features (N, D) of uint8 clips (N, F, H, W, 3)."""
    from .probes import probe_features

    return np.asarray(probe_features(np.asarray(clips)), np.float64).reshape(len(clips), -1)


def setting_metrics(clips: Clips, prompts: Sequence[Prompt], real_feats: np.ndarray | None,
                    real_change: float | None) -> dict[str, Any]:
    """Every number for one (model, setting): accuracies, Frechet probe distance, diversity, temporal change."""
    from .probes import reading_features

    P, N, F, H = clips.shape[:4]
    readings = read_clips(clips)
    per_clip = score_readings(readings, prompts)
    feats = np.stack([reading_features(r, F, H) for row in readings for r in row]).astype(np.float64)  # (P*N, D)
    change = metrics.temporal_change(clips.reshape((P * N,) + clips.shape[2:]))
    return {
        "accuracy": accuracy_table(per_clip, prompts),
        "accuracy_stderr": accuracy_stderr(per_clip, prompts),
        "accuracy_by_objects": accuracy_by_objects(per_clip, prompts),
        "per_clip_accuracy": per_clip,
        "frechet_probe_distance": metrics.frechet_distance(feats, real_feats) if real_feats is not None and P * N >= 2 else None,
        "diversity": metrics.diversity(feats.reshape(P, N, -1)),
        "temporal_change": change,
        "temporal_change_ratio": change / real_change if real_change else None,
    }


# ----------------------------------------------------------------------------- the comparison


def compare(models: Sequence[ModelEntry], prompts: Sequence[Prompt], out: str | Path, *, n: int = 4,
            seed: int = 0, real: np.ndarray | None = None, data_dir: str | Path | None = None,
            per_call: int = 1, report: bool = True, log: Callable[[str], None] | None = None,
            sections: Sequence[str | Path] = ()) -> dict[str, Any]:
    """Sample, score and write `out/results.json`, `out/clips/*.npz` (and the HTML report); return the results.

    `sections`: bridge benchmark section files (`report.load_section`), shown after the generation results.

    `real` (uint8 (N, F, H, W, 3)) are the real clips the Frechet probe distance and
    the temporal-change ratio compare against; without them those two numbers are None.
    """
    from ..io import atomic_write_json

    if not models:
        raise ConfigError("compare needs at least one model")
    names = [m.name for m in models]
    if len(set(map(slug, names))) != len(names):
        raise ConfigError(f"model names must be distinct (after slugging): {names}")
    if not prompts:
        raise DataError("compare needs at least one prompt")
    if n < 1:
        raise ConfigError(f"n must be >= 1, got {n}")
    out = Path(out)
    (out / "clips").mkdir(parents=True, exist_ok=True)
    say = log or (lambda s: None)
    from .report import load_section

    loaded_sections = [load_section(f) for f in sections]  # checked before any sampling

    real_feats = features(real) if real is not None else None
    real_change = metrics.temporal_change(real) if real is not None else None
    results: dict[str, Any] = {
        "n": n,
        "seed": seed,
        "per_call": per_call,
        "seeds_policy": ("prompt i uses seed + i for every model and setting" if per_call == 1 else
                         f"prompts go {per_call} per call; call k uses seed + k*{per_call} for every model and setting"),
        "data": str(data_dir) if data_dir else None,
        "prompts": [asdict(p) for p in prompts],
        "real": {"clips": int(len(real)) if real is not None else 0, "temporal_change": real_change},
        "models": [],
        "sections": loaded_sections,
    }
    for m in models:
        md: dict[str, Any] = {"name": m.name, "kind": m.kind, "path": m.path, "settings": []}
        if m.path:
            md["parameters"] = count_weights(m.path)
            md["training"] = training_info(m.path)
            md["config"] = model_config(m.path)
        else:
            md["parameters"] = int(sum(p.numel() for p in getattr(m.generator, "parameters", lambda: [])()))
            md["training"], md["config"] = {}, {}
        for s in m.settings:
            say(f"{m.name} / {s.label}: sampling {len(prompts)} prompts x {n}")
            clips, latency, cost, unit = sample(m, s, prompts, n, seed, per_call)
            rel = f"clips/{slug(m.name)}__{slug(s.label)}.npz"
            np.savez_compressed(out / rel, clips=clips)
            sm = setting_metrics(clips, prompts, real_feats, real_change)
            md["settings"].append({
                "label": s.label, "kwargs": s.kwargs, "clips": rel,
                "latency_s_per_clip": latency, "cost_per_clip": cost, "cost_unit": unit, **sm,
            })
        md["headline"] = md["settings"][0]["label"]
        results["models"].append(md)
    atomic_write_json(out / "results.json", results)
    if report:
        from .report import write_report

        results["report"] = str(write_report(out, results))
    return results


def _named(specs: Sequence[str], default: str) -> list[tuple[str, str]]:
    """["DIR", "NAME=DIR", ...] -> [(name, dir)]; unnamed dirs get `default` (numbered when repeated)."""
    out = []
    for i, spec in enumerate(specs):
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = (default if len(specs) == 1 else f"{default} {i + 1}"), spec
        out.append((name.strip(), path.strip()))
    return out


def compare_dirs(ar: Sequence[str] = (), diffusion: Sequence[str] = (), *, out: str | Path, prompts: str | Path | None = None,
                 n: int = 4, seed: int = 0, data: str | Path | None = None, steps_sweep: str | Sequence[int] = (10, 20, 50),
                 guidance: float | None = None, per_split: int = 8, extra: Sequence[str] = (),
                 per_call: int = 8, log: Callable[[str], None] | None = None,
                 sections: Sequence[str | Path] = (), ar_sampling: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """`duogen compare`: load model dirs, pick prompts and real clips, run `compare`; return results + headline.

    `ar_sampling`: temperature / top_k / top_p / layout_candidates of every AR model's settings (`ar_settings`)."""
    if isinstance(steps_sweep, str):
        try:
            steps_sweep = [int(s) for s in steps_sweep.split(",") if s.strip()]
        except ValueError:
            raise ConfigError(f"--steps-sweep must be comma-separated integers, got {steps_sweep!r}") from None
    if not steps_sweep or min(steps_sweep) < 1:
        raise ConfigError(f"--steps-sweep needs positive step counts, got {steps_sweep}")
    models = []
    for want, specs, default in (("ar", ar, "AR"), ("diffusion", diffusion, "diffusion"), (None, extra, "model")):
        for name, path in _named(specs, default):
            m = load_model(name, path, steps_sweep=steps_sweep, guidance=guidance, ar_sampling=ar_sampling)
            if want is not None and m.kind != want:
                raise ConfigError(f"{path} is {'an AR' if m.kind == 'ar' else 'a diffusion'} model; pass it with --{m.kind}")
            models.append(m)
    if not models:
        raise ConfigError("give at least one model: --ar DIR and/or --diffusion DIR")
    data_dir = Path(data) if data else next((d for m in models if (d := find_dataset(m.path)) is not None), None)
    if prompts:
        prompt_list = load_prompts(prompts)
    elif data_dir is not None:
        prompt_list = dataset_prompts(data_dir, per_split=per_split)
    else:
        raise DataError("no prompts: the models' run configs name no data set; pass --data DIR or --prompts FILE")
    real = real_clips(data_dir) if data_dir is not None else None
    res = compare(models, prompt_list, out, n=n, seed=seed, real=real, data_dir=data_dir, per_call=per_call, log=log,
                  sections=sections)
    res["headline"] = headline(out).get("models", {})
    return res


def headline(report_dir: str | Path) -> dict[str, Any]:
    """The numbers the demo prints: report path and, per model, headline accuracy by kind and training cost."""
    report_dir = Path(report_dir)
    res_path = report_dir / "results.json"
    if not res_path.is_file():
        return {}
    res = json.loads(res_path.read_text())
    out: dict[str, Any] = {"report": str(report_dir / "report.html"), "models": {}}
    for m in res["models"]:
        s = next(st for st in m["settings"] if st["label"] == m["headline"])
        tr = m.get("training") or {}
        out["models"][m["name"]] = {
            "sampling": s["label"],
            "accuracy": {k: round(v, 4) for k, v in s["accuracy"].get("all", {}).items()},
            "heldout_accuracy": {k: round(v, 4) for k, v in s["accuracy"].get("heldout", {}).items()},
            "accuracy_stderr": {k: None if v is None else round(v, 4)
                                for k, v in (s.get("accuracy_stderr") or {}).get("all", {}).items()},
            "accuracy_by_objects": {n: {k: round(v, 4) for k, v in g["accuracy"].items()}
                                    for n, g in (s.get("accuracy_by_objects") or {}).items()},
            "frechet_probe_distance": s.get("frechet_probe_distance"),
            "train_flops": tr.get("flops"),
            "train_wall_s": tr.get("wall_s"),
            "latency_s_per_clip": s["latency_s_per_clip"],
        }
    return out


def rescore(report_dir: str | Path) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """Re-score the saved lossless clips with the probes: {model: {setting: accuracy table}}."""
    report_dir = Path(report_dir)
    res_path = report_dir / "results.json"
    if not res_path.is_file():
        raise DataError(f"{report_dir}: no results.json (not a compare report)")
    results = json.loads(res_path.read_text())
    prompts = [Prompt(**p) for p in results["prompts"]]
    out: dict[str, dict[str, Any]] = {}
    for m in results["models"]:
        out[m["name"]] = {}
        for s in m["settings"]:
            with np.load(report_dir / s["clips"]) as z:
                clips = z["clips"]
            out[m["name"]][s["label"]] = accuracy_table(score_clips(clips, prompts), prompts)
    return out
