"""Control benchmark: where the objects go when a control asks, on any model (AR or diffusion) and any control.

    PYTHONPATH=src python bench/bench_control.py --model src/duogen/assets/reference/dit \
        --control runs/cn_boxes [--control runs/cn_mask:1] --data runs/shapes --n 64 \
        [--scales 0.5,1,2] [--beta 0.3,1] [--stack] [--section out/control.json]
    PYTHONPATH=src python bench/bench_control.py --table out/dit.json out/ar.json [--section out/both.json]

For the first `--n` clips of the data set's validation split, the clip's caption is the prompt and its ground
truth the condition: `boxes` controls read the clip's box tracks (phrase "a <color> <shape>" per object),
`mask` / `edges` controls the clip itself; each control module builds its own condition
(`bridges.control.condition_for` / `collate_conditions`: a raster for ControlNet / T2I-Adapter, grounding tokens
or token prefixes for the others). Rows, all with the same prompts and seeds: the real clips (what the probes read
on the ground truth: the ceiling), the model with the text alone, then each `--control` at each `--scales` value
(default: the RUN:scale it was given) and, for a control that has a schedule (GLIGEN), each `--beta`; `--stack`
adds one row with every control at once. Metrics (`eval.control_metrics`): per-frame box IoU of each requested
object vs the object the probes find, the share of object-frames with IoU >= 0.5, AP@0.5 (detections scored by
their pixel support), per-object mask IoU (the requested masks are the source clip's objects, which the probes read
exactly on the shapes world: also for edge control), the probes' color / shape accuracy against the prompt, and the
Frechet probe distance to the real validation clips. `cost x` is the sampling time relative to the text-only row.

The generator is loaded with `bridges.generate.load_generator`, so an AR model works as soon as its generator takes
`controls=`; a control run is loaded for the generator's denoiser (diffusion) or model (AR).
`--table` merges section files written by this script (`--section`) into one side-by-side table, e.g. both
paradigms at the same control-training budget.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

COLUMNS = ["paradigm", "control", "method", "condition", "scale", "beta", "train steps", "train min", "box IoU",
           "IoU>=0.5", "AP@0.5", "mask IoU", "color acc", "shape acc", "text acc", "FPD", "cost x"]
KEYS = ["paradigm", "control", "method", "condition", "scale", "beta", "train_steps", "train_minutes", "box_iou",
        "box_iou_050", "ap50", "mask_iou", "color", "shape", "text", "fpd", "cost"]


def _floats(s: str | None) -> list[float]:
    return [float(x) for x in s.split(",") if x.strip()] if s else []


def control_facts(directory: Path) -> dict[str, Any]:
    """method, condition, paradigm and the training budget (steps, minutes) of a control run's final/ dir."""
    from duogen.io import read_json

    conf = read_json(directory / "control.json") if (directory / "control.json").is_file() else {}
    facts = {"method": conf.get("method", "?"), "condition": conf.get("condition", "boxes"),
             "paradigm": conf.get("paradigm", "diffusion"), "train_steps": None, "train_minutes": None}
    for d in (directory, directory.parent):
        if (d / "summary.json").is_file():
            s = read_json(d / "summary.json")
            facts["train_steps"] = s.get("steps")
            sec = s.get("wall_s")
            facts["train_minutes"] = round(float(sec) / 60, 1) if sec else None
            break
    return facts


def load_control(gen: Any, directory: Path) -> Any:
    """The control module of a run for this generator (a DiT denoiser's control, or an AR model's)."""
    from duogen.bridges.control import load_control_run

    return load_control_run(directory, gen.model.denoiser if gen.kind == "diffusion" else gen.model)


def active(module: Any, condition: Any, scale: float, beta: float | None) -> Any:
    """An ActiveControl (the diffusion dataclass; the AR glue reads the same .module / .condition / .scale)."""
    from duogen.diffusion.control import ActiveControl

    kw = {"beta": beta} if beta is not None and "beta" in {f.name for f in dataclasses.fields(ActiveControl)} else {}
    ac = ActiveControl(module, condition, scale, **kw)
    if beta is not None and not kw:
        ac.beta = beta  # a module that reads its schedule from the active control
    return ac


def has_schedule(module: Any, method: str) -> bool:
    return method == "gligen" or hasattr(module, "beta") or hasattr(getattr(module, "config", None), "beta")


def requested(rows: Any) -> list[dict[str, Any]]:
    """Per clip: prompt, phrases, box tracks (F, 4), attributes, the source clip and its object masks (n_obj, F, H, W)."""
    from duogen.eval.control_metrics import found_objects, match_objects

    out = []
    for r in rows:
        video = np.asarray(r["video"], np.uint8)
        phrases = [f"a {a['color']} {a['shape']}" for a in r["attributes"]]
        boxes = [np.asarray(b, np.float64) for b in r["boxes"]]
        found = found_objects(video)
        match = match_objects(phrases, boxes, found)
        masks = np.stack([found[i].masks if i is not None else np.zeros(video.shape[:3], bool) for i in match])
        out.append({"prompt": r["caption"], "phrases": phrases, "boxes": boxes, "attributes": list(r["attributes"]),
                    "video": video, "masks": masks})
    return out


def conditions_for(module: Any, kind: str, clips: list[dict[str, Any]], frames: int, size: int) -> Any:
    from duogen.bridges.control import collate_conditions, condition_for
    from duogen.data.conditions import BoxTrack

    conds = [condition_for(module, kind, frames=frames, size=size, video=c["video"],
                           tracks=[BoxTrack(p, b) for p, b in zip(c["phrases"], c["boxes"])]) for c in clips]
    return collate_conditions(module, conds)


def measure(name: str, clips: list[dict[str, Any]], videos: list[np.ndarray], real_feats: np.ndarray) -> dict[str, Any]:
    from duogen.eval.control_metrics import ControlScores

    scores = ControlScores()
    for c, v in zip(clips, videos):
        scores.add(v, c["phrases"], c["boxes"], c["attributes"], c["masks"])
    return {"control": name, **scores.summary(real_feats)}


def run(a: argparse.Namespace) -> list[dict[str, Any]]:
    import torch

    from duogen.bridges.control import parse_control
    from duogen.bridges.generate import load_generator
    from duogen.data import load_dataset
    from duogen.eval.probes import probe_features
    from duogen.utils import progress

    torch.manual_seed(a.seed)
    gen = load_generator(a.model)
    codec = gen.codec if gen.kind == "ar" else gen.model._need_codec()
    F, S = int(codec.cfg.frames), int(codec.cfg.size)
    val = load_dataset(a.data)[a.split]
    clips = requested(val.select(range(min(a.n, len(val)))))
    real = val.select(range(min(a.real, len(val))))
    real_feats = probe_features([np.asarray(v, np.uint8) for v in real["video"]])

    settings: list[tuple[dict[str, Any], list[tuple[Any, str]]]] = []  # (row facts, [(module, kind, scale, beta)])
    loaded = []
    for spec in a.control:
        own = []  # RUN:0.5,1,2 sweeps this control alone
        if "," in spec.rpartition(":")[2]:
            spec, _, many = spec.rpartition(":")
            own = _floats(many)
        d, scale = parse_control(spec)
        facts = control_facts(d)
        module = load_control(gen, d)
        if facts["paradigm"] == "diffusion" and gen.kind == "ar":
            facts["paradigm"] = "ar"
        loaded.append((d, scale, facts, module))
        betas = _floats(a.beta) if has_schedule(module, facts["method"]) and a.beta else [None]
        for s in own or _floats(a.scales) or [scale]:
            for b in betas:
                settings.append(({**facts, "control": d.parent.name if d.name == "final" else d.name, "scale": s,
                                  "beta": b}, [(module, facts["condition"], s, b)]))
    if a.stack and len(loaded) > 1:
        settings.append(({"control": "+".join((d.parent.name if d.name == "final" else d.name) for d, *_ in loaded),
                          "method": "+".join(f["method"] for *_, f, _ in loaded),
                          "condition": "+".join(f["condition"] for *_, f, _ in loaded),
                          "paradigm": gen.kind, "scale": None, "beta": None},
                         [(m, f["condition"], s, None) for _, s, f, m in loaded]))

    rows = [{**measure("real clips (ceiling)", clips, [c["video"] for c in clips], real_feats),
             "paradigm": "data", "cost": None}]
    base_time = None
    for facts, ctl in [({"control": "text only", "paradigm": gen.kind}, [])] + settings:
        videos, t0 = [], time.perf_counter()
        for i in progress(range(0, len(clips), a.batch), desc=str(facts["control"]), unit="batch"):
            chunk = clips[i : i + a.batch]
            controls = [active(m, conditions_for(m, kind, chunk, F, S), s, b) for m, kind, s, b in ctl]
            kw = {"steps": a.steps} if gen.kind == "diffusion" and a.steps else {}
            res = gen.generate([c["prompt"] for c in chunk], n=1, seed=a.seed + i, controls=controls, **kw)
            videos.extend(np.asarray(v, np.uint8) for v in res.videos)
        dt = time.perf_counter() - t0
        base_time = base_time or dt
        rows.append({**measure(str(facts["control"]), clips, videos, real_feats), **facts,
                     "cost": round(dt / base_time, 2)})
        print(_line(rows[-1]), flush=True)
    return rows


def _cell(v: Any) -> Any:
    if isinstance(v, float):
        return None if np.isnan(v) else round(v, 3)
    return v


def _line(r: dict[str, Any]) -> str:
    return " | ".join("-" if r.get(k) is None else str(_cell(r.get(k))) for k in KEYS)


def plot(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Box IoU and mask IoU vs control scale, one line per control (and beta); the text-only model dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines: dict[str, list[tuple[float, float, float]]] = {}
    for r in rows:
        if r.get("scale") is not None:
            key = f"{r['control']} ({r['method']}, {r['condition']})" + (f" beta {r['beta']:g}" if r.get("beta") is not None else "")
            lines.setdefault(key, []).append((r["scale"], r["box_iou"], r["mask_iou"] if r["mask_iou"] is not None else np.nan))
    if not lines:
        return None
    base = next((r for r in rows if r["control"] == "text only"), None)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, j, name in ((axes[0], 1, "box IoU"), (axes[1], 2, "mask IoU")):
        for key, pts in lines.items():
            pts = sorted(pts)
            ax.plot([p[0] for p in pts], [p[j] for p in pts], marker="o", label=key)
        if base is not None and base.get({1: "box_iou", 2: "mask_iou"}[j]) is not None:
            ax.axhline(base[{1: "box_iou", 2: "mask_iou"}[j]], color="gray", ls="--", label="text only")
        ax.set_xlabel("control scale")
        ax.set_ylabel(name)
        ax.set_ylim(0, 1)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_section(path: Path, rows: list[dict[str, Any]], title: str, intro: str, notes: str, with_plot: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    png = plot(rows, path.with_suffix(".png")) if with_plot else None
    cmd = "PYTHONPATH=src python bench/bench_control.py " + shlex.join(sys.argv[1:])
    path.write_text(json.dumps({
        "title": title, "intro": intro,
        "tables": [{"caption": "control vs text only, same prompts and seeds", "columns": COLUMNS,
                    "rows": [[_cell(r.get(k)) for k in KEYS] for r in rows]}],
        "plots": [png.name] if png else [], "notes": notes, "command": cmd,
        "records": [{k: _cell(r.get(k)) for k in KEYS + ["object_frames", "clips"]} for r in rows]}, indent=1))


def merge_tables(files: list[str]) -> list[dict[str, Any]]:
    """The records of several section files, one after another (real-clip rows kept once)."""
    rows, seen_real = [], False
    for f in files:
        sec = json.loads(Path(f).read_text())
        if "records" not in sec:
            from duogen.errors import DataError

            raise DataError(f"{f}: not a section written by bench/bench_control.py --section (no records)")
        for r in sec["records"]:
            if r.get("paradigm") == "data":
                if seen_real:
                    continue
                seen_real = True
            rows.append(r)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="a duogen model directory (diffusion or AR)")
    ap.add_argument("--control", action="append", default=[],
                    help="RUN[:scale] of `duogen train control` (repeatable); RUN:0.5,1,2 sweeps this control's scale")
    ap.add_argument("--data", help="a shapes data set at the model's clip size (`duogen data make shapes`)")
    ap.add_argument("--split", default="validation")
    ap.add_argument("--n", type=int, default=64, help="clips (prompts + conditions) per row")
    ap.add_argument("--real", type=int, default=250, help="real clips of the split for the Frechet probe distance")
    ap.add_argument("--steps", type=int, default=25, help="diffusion sampling steps (AR: ignored)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--scales", default="", help="comma list; default: each control's own RUN:scale")
    ap.add_argument("--beta", default="", help="comma list of grounding fractions for scheduled controls (GLIGEN)")
    ap.add_argument("--stack", action="store_true", help="also one row with every --control at once")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--section", default=None, help="write a report section (JSON + plot PNG beside it)")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON")
    ap.add_argument("--table", nargs="+", default=None, help="merge section files of this script into one table")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    try:
        if a.table:
            rows = merge_tables(a.table)
            title, intro = "Control: both paradigms side by side", "Merged from: " + ", ".join(a.table)
        else:
            if not a.model or not a.data:
                ap.error("--model and --data are required (or --table FILES)")
            rows = run(a)
            title = f"Control ({Path(a.model).name}: {', '.join(a.control) or 'text only'})"
            intro = (f"{a.n} validation clips of {a.data}: caption = prompt, ground truth = condition; same seeds"
                     " in every row.")
    except Exception as e:  # a user's bad input: one line, exit 2
        from duogen.errors import DuogenError

        if isinstance(e, DuogenError):
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        raise
    print(" | ".join(COLUMNS))
    for r in rows:
        print(_line(r))
    if a.json:
        print(json.dumps([{k: _cell(r.get(k)) for k in KEYS} for r in rows]))
    if a.section:
        notes = ("box IoU: requested box vs the tight box of the object the probes find (matched by the phrase's"
                 " color, else by IoU), 0 where absent; AP@0.5: COCO 101-point, detections scored by pixel support;"
                 " mask IoU: per object vs the source clip's object; text acc = mean of color and shape accuracy;"
                 " FPD vs the real validation clips.")
        write_section(Path(a.section), rows, title, intro, notes, with_plot=True)


if __name__ == "__main__":
    main()
