"""Editing on the shipped reference models: how well each technique edits, and how much of the source it keeps.

Edits whose right answer the world knows: `duogen.data.edits.make_pair` rows of the validation and held-out splits
(color / shape / direction in turn; source = the world's clip, target = the same clip with one thing changed).
Every technique of `duogen.bridges.edit.METHODS` listed in ROWS runs on the AR reference and on the DiT reference
with the pair's canonical captions (source -> target). Per row:
- edit success: the probes (`duogen.eval.probes.probe_clip`) find an object of the target color, and for shape /
  direction edits read the target shape / motion on it;
- preserved: share of the attributes that should not change (the edited object's other two, all three of any
  other object) that the probes read at their world value;
- box IoU: per-frame IoU of the read boxes with the world's target boxes (the source's, moved for direction edits);
- PSNR out: PSNR outside the world's edit mask (the object in source and target) against the codec's own
  reconstruction of the source (what a perfect edit would leave there);
- seconds and forward passes per edited clip (AR: decoder token evaluations, both streams when guided;
  diffusion: denoiser evaluations; timings on a loaded shared CPU, one thread).
Plus: the automatic masks' IoU with the world's mask (latent grid and pixels; DiffEdit's score map thresholded per
cell, and pooled over the source's lit segments), inversion reconstruction PSNR at guidance 1 and 3 (DDIM vs
null-text; AR: exact), the strength trade-off of SDEdit (plot), and "world target through the codec" (the
probes on the right answer itself: the ceiling of what they can confirm).

Run: OMP_NUM_THREADS=1 python bench/bench_edit.py [--pairs 12] [--section runs/bench_edit/section.json]
edit2's techniques join with one line each in ROWS: ("p2p", "prompt-to-prompt", {"tau": 0.6}).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

# (method, label, settings): every row runs on both paradigms; mask "world" = the pair's true edit mask,
# "auto" = DiffEdit's automatic mask (`diffedit.auto_mask`, default pooling) made first
ROWS: list[tuple[str, str, dict[str, Any]]] = [
    ("sdedit", "sdedit strength 0.6", {"strength": 0.6}),
    ("sdedit", "sdedit strength 0.8, world mask", {"strength": 0.8, "mask": "world"}),
    ("diffedit", "diffedit (auto mask)", {}),
    ("invert", "invert + transfer", {}),
    ("invert", "invert + transfer, auto mask", {"mask": "auto"}),
]
STEPS = 20  # diffusion sampling steps (the references were scored with 20)
STRENGTHS = (0.2, 0.4, 0.6, 0.8, 1.0)
KIND_OF = {"color": "color", "shape": "shape", "direction": "motion"}


def pairs(n: int) -> list[dict[str, Any]]:
    from duogen.data.edits import make_pair
    from duogen.data.shapes import load_world_config

    cfg = load_world_config("tiny")  # the references' world
    half = (n + 1) // 2
    return [make_pair(cfg, s, i) for s in ("validation", "heldout") for i in range(half)][:n]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of boxes (F, 4) [x0, y0, x1, y1] per frame; a frame where a box is absent (-1) scores 0."""
    x0, y0 = np.maximum(a[:, 0], b[:, 0]), np.maximum(a[:, 1], b[:, 1])
    x1, y1 = np.minimum(a[:, 2], b[:, 2]), np.minimum(a[:, 3], b[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = lambda z: (z[:, 2] - z[:, 0]) * (z[:, 3] - z[:, 1])  # noqa: E731
    union = area(a) + area(b) - inter
    ok = (a[:, 0] >= 0) & (union > 0)
    return float(np.where(ok, inter / np.maximum(union, 1), 0.0).mean())


def score(video: np.ndarray, row: dict[str, Any], recon: np.ndarray) -> dict[str, float]:
    """Success, preservation, box IoU and PSNR outside the mask of one edited clip."""
    from duogen.bridges.edit.prep import psnr
    from duogen.eval.probes import probe_clip

    readings = {r.color: r for r in probe_clip(video)}
    tgt = row["target_attributes"]
    kind = row["edit"]
    r0 = readings.get(tgt[0]["color"])
    key = KIND_OF[kind]
    ok = r0 is not None and (kind == "color" or getattr(r0, key if key != "color" else "color") == tgt[0][key])
    checks = []
    for j, a in enumerate(tgt):
        r = readings.get(a["color"])
        for k in ("color", "shape", "motion"):
            if j == 0 and k == key:
                continue
            checks.append(r is not None and (k == "color" or getattr(r, k) == a[k]))
    boxes = np.asarray(row["target_boxes"])
    ious = [_iou(readings[a["color"]].boxes, boxes[j]) if a["color"] in readings else 0.0 for j, a in enumerate(tgt)]
    return {"success": float(ok), "preserved": float(np.mean(checks)), "box_iou": float(np.mean(ious)),
            "psnr_out": psnr(video, recon, ~row["mask"].astype(bool))}


def run_rows(gens: dict[str, Any], data: list[dict[str, Any]], n: int,
             only: str | None = None) -> tuple[list[list[Any]], dict[str, Any]]:
    from duogen.bridges.edit import METHODS, edit
    from duogen.bridges.edit.prep import encode_source, fit_clip
    from duogen.utils import progress

    recon = {(k, i): encode_source(g, fit_clip(g, r["source"])).reconstruction for k, g in gens.items()
             for i, r in enumerate(data)}
    table, extra = [], {"inversion_psnr_g3_null": {}}
    rows = [(m, lab, s) for m, lab, s in ROWS if m in METHODS and (only is None or only in lab)]
    bar = progress(total=len(rows) * len(gens) * len(data), desc="editing", unit="edit")
    oracle = {k: [score(encode_source(g, fit_clip(g, r["target"])).reconstruction, r, recon[k, i])
                  for i, r in enumerate(data)] for k, g in gens.items()}
    for kind in gens:
        table.append(_summarise("world target through the codec", kind, data, oracle[kind], [], []))
    for method, label, settings in rows:
        for kind, gen in gens.items():
            scores, secs, passes = [], [], []
            for i, r in enumerate(data):
                kw = dict(settings)
                mask = kw.get("mask")  # "world", "auto" or absent; an array compared with a string would not be a bool
                if mask == "world":
                    kw["mask"] = r["mask"].astype(bool)
                t = time.perf_counter()
                if mask == "auto":
                    from duogen.bridges.edit.diffedit import auto_mask

                    kw["mask"] = auto_mask(gen, r["source"], prompt=r["target_caption"],
                                           source_prompt=r["source_caption"], steps=STEPS, seed=i)
                if gen.kind == "diffusion":
                    kw.setdefault("steps", STEPS)
                res = edit(gen, r["source"], method, prompt=r["target_caption"], source_prompt=r["source_caption"],
                           n=n, seed=i, **kw)
                secs.append((time.perf_counter() - t) / n)
                passes.append(res.info.get("forward_passes", 0) / n)
                scores += [score(v, r, recon[kind, i]) for v in res.videos]
                if method == "invert" and gen.kind == "diffusion":
                    extra["inversion_psnr_g3_null"].setdefault(kind, []).append(res.info["inversion_psnr"])
                bar.update(1)
            table.append(_summarise(label, kind, data, scores, secs, passes, n))
    bar.close()
    return table, extra


def _summarise(label: str, kind: str, data: list[dict[str, Any]], scores: list[dict[str, float]],
               secs: list[float], passes: list[float], n: int = 1) -> list[Any]:
    edits = [r["edit"] for r in data for _ in range(n)]
    by = {e: [s["success"] for s, k in zip(scores, edits) if k == e] for e in ("color", "shape", "direction")}
    pct = lambda v: round(100 * float(np.mean(v)), 1) if len(v) else None  # noqa: E731
    return [label, kind, pct(by["color"]), pct(by["shape"]), pct(by["direction"]),
            pct([s["preserved"] for s in scores]), round(float(np.mean([s["box_iou"] for s in scores])), 3),
            round(float(np.mean([s["psnr_out"] for s in scores])), 2), round(float(np.mean(secs)), 2) if secs else None,
            int(round(float(np.mean(passes)))) if passes else None]


def mask_table(gens: dict[str, Any], data: list[dict[str, Any]]) -> list[list[Any]]:
    from duogen.bridges.edit.diffedit import auto_mask
    from duogen.bridges.edit.prep import latent_grid, latent_mask

    out = []
    for kind, gen in gens.items():
        grid = latent_grid(gen)
        for pool in ("cells", "segments"):
            lat, pix = [], []
            for i, r in enumerate(data):
                m = auto_mask(gen, r["source"], prompt=r["target_caption"], source_prompt=r["source_caption"],
                              steps=STEPS, seed=i, pool=pool)
                w = r["mask"].astype(bool)
                lm, lw = latent_mask(m, grid), latent_mask(w, grid)
                lat.append((lm & lw).sum() / max(1, (lm | lw).sum()))
                pix.append((m & w).sum() / max(1, (m | w).sum()))
            out.append([kind, pool, round(float(np.mean(lat)), 3), round(float(np.mean(pix)), 3)])
    return out


def inversion_table(gens: dict[str, Any], data: list[dict[str, Any]], g3_null: dict[str, list[float]]) -> list[list[Any]]:
    from duogen.bridges.edit import edit

    out = []
    for kind, gen in gens.items():
        if gen.kind == "ar":
            exact = [edit(gen, r["source"], "invert", prompt=r["source_caption"], source_prompt=r["source_caption"],
                          seed=i).info["inversion_ids_exact"] for i, r in enumerate(data)]
            out.append([kind, "codec ids + Gumbel posterior", "3", f"exact ({100 * np.mean(exact):.0f}% of ids)", "-"])
            continue
        for g in (1.0, 3.0):
            ddim = [edit(gen, r["source"], "invert", prompt=r["source_caption"], source_prompt=r["source_caption"],
                         guidance=g, steps=STEPS, null_text=False).info["inversion_psnr"] for r in data]
            null = ddim if g == 1.0 else g3_null.get(kind, [])
            out.append([kind, "DDIM vs null-text", f"{g:g}", round(float(np.mean(ddim)), 2),
                        round(float(np.mean(null)), 2) if null else None])
    return out


def strength_curve(gens: dict[str, Any], data: list[dict[str, Any]], plot: Path | None) -> list[list[Any]]:
    from duogen.bridges.edit import edit
    from duogen.bridges.edit.prep import encode_source, fit_clip

    rows = []
    for kind, gen in gens.items():
        recon = [encode_source(gen, fit_clip(gen, r["source"])).reconstruction for r in data]
        for s in STRENGTHS:
            sc = []
            for i, r in enumerate(data):
                kw = {"steps": STEPS} if gen.kind == "diffusion" else {}
                v = edit(gen, r["source"], "sdedit", prompt=r["target_caption"], strength=s, seed=i, **kw).videos[0]
                sc.append(score(v, r, recon[i]))
            rows.append([kind, s, round(100 * float(np.mean([x["success"] for x in sc])), 1),
                         round(100 * float(np.mean([x["preserved"] for x in sc])), 1),
                         round(float(np.mean([x["psnr_out"] for x in sc])), 2)])
    if plot is not None:
        plot_curve(rows, "strength", "SDEdit", plot)
    return rows


def plot_curve(rows: list[list[Any]], xlabel: str, title: str, path: Path) -> None:
    """Rows [model, swept value, success %, preserved %, PSNR out dB] -> two panels (success and preservation
    against the value; PSNR outside the edit mask), one line per model, written to `path` (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
    for k, kind in enumerate(dict.fromkeys(r[0] for r in rows)):  # one color per model in both panels
        pts = [r for r in rows if r[0] == kind]
        ax[0].plot([r[1] for r in pts], [r[2] for r in pts], "o-", color=f"C{k}", label=f"{kind}: edit success")
        ax[0].plot([r[1] for r in pts], [r[3] for r in pts], "s--", color=f"C{k}", label=f"{kind}: preserved")
        ax[1].plot([r[1] for r in pts], [r[4] for r in pts], "o-", color=f"C{k}", label=kind)
    ax[0].set(xlabel=xlabel, ylabel="%", title=f"{title}: success vs preservation")
    ax[1].set(xlabel=xlabel, ylabel="dB", title="PSNR outside the edit mask")
    ax[0].legend(fontsize=7)
    ax[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _print(columns: list[str], rows: list[list[Any]], caption: str) -> None:
    print(f"\n{caption}\n| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for r in rows:
        print("| " + " | ".join("-" if v is None else str(v) for v in r) + " |")


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=12, help="edit pairs (half validation, half held-out)")
    ap.add_argument("--curve-pairs", type=int, default=6, help="pairs for the strength curve")
    ap.add_argument("--inversion-pairs", type=int, default=3, help="pairs for the DDIM inversion rows")
    ap.add_argument("--n", type=int, default=1, help="edited clips per pair")
    ap.add_argument("--section", default=None, help="write a report section (JSON + plot) here")
    ap.add_argument("--rows", default=None, help="only the ROWS whose label contains this text, and only that table")
    ref = Path(__file__).resolve().parents[1] / "src/duogen/assets/reference"
    ap.add_argument("--ar", default=str(ref / "ar"), help="the AR model (default: the shipped reference)")
    ap.add_argument("--dit", default=str(ref / "dit"), help="the diffusion model (default: the shipped reference)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from duogen.bridges.generate import load_generator

    gens = {"AR": load_generator(args.ar), "DiT": load_generator(args.dit)}
    data = pairs(args.pairs)
    t0 = time.perf_counter()
    cols = ["technique", "model", "color %", "shape %", "direction %", "preserved %", "box IoU", "PSNR out dB",
            "s / edit", "forward passes / edit"]
    table, extra = run_rows(gens, data, args.n, args.rows)
    _print(cols, table, f"Edit success and preservation, {len(data)} pairs ({', '.join(r['edit'] for r in data)})")
    if args.rows:
        return
    mcols = ["model", "pool", "IoU (latent grid)", "IoU (pixels)"]
    masks = mask_table(gens, data)
    _print(mcols, masks, "DiffEdit automatic mask vs the world's edit mask")
    icols = ["model", "inversion", "guidance", "DDIM PSNR dB", "null-text PSNR dB"]
    inv = inversion_table(gens, data[: args.inversion_pairs], extra["inversion_psnr_g3_null"])
    _print(icols, inv, "Inversion: reconstruction under the source prompt vs the codec's reconstruction")
    plot = None
    if args.section:
        Path(args.section).parent.mkdir(parents=True, exist_ok=True)
        plot = Path(args.section).with_name("edit_strength.png")
    ccols = ["model", "strength", "success %", "preserved %", "PSNR out dB"]
    curve = strength_curve(gens, data[: args.curve_pairs], plot)
    _print(ccols, curve, "SDEdit strength trade-off")
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    if args.section:
        cmd = "OMP_NUM_THREADS=1 python bench/bench_edit.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None)
        sec = {"title": "Editing: techniques on the reference models",
               "intro": __doc__.split("\n\n")[1].replace("\n", " "),
               "tables": [{"caption": "Edit success and preservation", "columns": cols, "rows": table},
                          {"caption": "Automatic masks (DiffEdit) vs the world's mask", "columns": mcols, "rows": masks},
                          {"caption": "Inversion reconstruction PSNR", "columns": icols, "rows": inv},
                          {"caption": "SDEdit strength trade-off", "columns": ccols, "rows": curve}],
               "plots": [plot.name] if plot else [], "command": cmd,
               "notes": "CPU, one thread, on a shared loaded machine: seconds are indicative only."}
        Path(args.section).write_text(json.dumps(sec, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
