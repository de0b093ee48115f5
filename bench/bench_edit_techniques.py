"""Prompt-to-Prompt, Imagic and InstructPix2Pix on held-out edit pairs, both paradigms, scored by the probes.

    python bench/bench_edit_techniques.py --data runs/data/edits --methods p2p,imagic,ip2p \
        --ar src/duogen/assets/reference/ar --dit src/duogen/assets/reference/dit \
        --ip2p-ar runs/ip2p_ar/final --ip2p-dit runs/ip2p_dit/final --pairs 15 [--section out.json]

Each pair (source clip, its caption, the target caption, the instruction, the world's rendered target, the
edited object's mask) is edited by each technique; the probes (`duogen.eval.probes`) read the result:
- success: the edited object shows the target attribute (color: the target color is found and the source
  color is gone; shape / direction: the object of the target color has the target shape / motion);
- preserved: every attribute the edit did not change (of the edited object, found by its target color or else
  its source color, and of the other objects) reads as in the target (= the source for those attributes);
- PSNR out: PSNR outside the edit's mask against the codec's own reconstruction of the source (dB).
Rows "source (no edit)" and "target (ground truth)" score the inputs themselves: the floor and the probes'
ceiling. p2p rows also give `prompt attention`: the share of the source run's attention on the prompt's words.
With --section, one plot per sweep (success and preservation against tau / image scale / eta, per paradigm),
drawn by bench_edit.plot_curve; Imagic's eta sweep optimises and fine-tunes once per pair and samples every eta.
Every row ran on a loaded shared 2-core CPU, one thread: seconds are for comparison within the run only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


def score(clip: np.ndarray, row: dict[str, Any], recon: np.ndarray) -> dict[str, float]:
    from duogen.eval.probes import probe_clip

    src, tgt, kind = row["source_attributes"], row["target_attributes"], str(row["edit"])
    readings = probe_clip(clip)
    by_color = {r.color: r for r in readings}
    r0 = by_color.get(tgt[0]["color"])
    if kind == "color":
        ok = r0 is not None and (src[0]["color"] == tgt[0]["color"] or src[0]["color"] not in by_color)
    elif kind == "shape":
        ok = r0 is not None and r0.shape == tgt[0]["shape"]
    else:
        ok = r0 is not None and r0.motion == tgt[0]["motion"]
    r_obj = r0 or by_color.get(src[0]["color"])  # the edited object: in its new color, or still in its old one
    keep = r_obj is not None and all(getattr(r_obj, k) == tgt[0][k] for k in ("shape", "motion") if k != kind.replace(
        "direction", "motion"))
    for a in tgt[1:]:
        r = by_color.get(a["color"])
        keep = keep and r is not None and r.shape == a["shape"] and r.motion == a["motion"]
    out = ~np.asarray(row["mask"]).astype(bool)
    mse = float(((clip.astype(np.float64) - recon.astype(np.float64))[out] ** 2).mean()) if out.any() else 0.0
    return {"kind": kind, "success": float(ok), "preserved": float(keep),
            "psnr_out": 10 * np.log10(255.0**2 / max(mse, 1e-10))}


def curve_point(paradigm: str, value: float, scores: list[dict[str, Any]]) -> list[Any]:
    """[paradigm, swept value, success %, preserved %, PSNR out dB]: a row of bench_edit.plot_curve."""
    return [paradigm, value, round(100 * float(np.mean([x["success"] for x in scores])), 1),
            round(100 * float(np.mean([x["preserved"] for x in scores])), 1),
            round(float(np.mean([x["psnr_out"] for x in scores])), 2)]


def summarize(name: str, paradigm: str, setting: str, scores: list[dict[str, Any]], seconds: float,
              extra: str = "") -> list[Any]:
    def share(kind: str) -> str:
        s = [x["success"] for x in scores if x["kind"] == kind]
        return f"{100 * np.mean(s):.0f}% ({len(s)})" if s else "-"

    return [name, paradigm, setting, share("color"), share("shape"), share("direction"),
            f"{100 * np.mean([x['preserved'] for x in scores]):.0f}%",
            f"{np.mean([x['psnr_out'] for x in scores]):.1f}", f"{seconds / max(len(scores), 1):.1f}", extra]


COLUMNS = ["method", "paradigm", "setting", "success color", "success shape", "success direction", "preserved",
           "PSNR out (dB)", "s / edit", "prompt attention"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="heldout")
    ap.add_argument("--pairs", type=int, default=15, help="pairs per method and paradigm (cycling color/shape/direction)")
    ap.add_argument("--methods", default="p2p,imagic,ip2p")
    ap.add_argument("--ar", default="src/duogen/assets/reference/ar")
    ap.add_argument("--dit", default="src/duogen/assets/reference/dit")
    ap.add_argument("--ip2p-ar", default=None)
    ap.add_argument("--ip2p-dit", default=None)
    ap.add_argument("--steps", type=int, default=25, help="diffusion sampler steps")
    ap.add_argument("--taus", default="0,0.8", help="p2p: injection shares to compare")
    ap.add_argument("--no-blend", action="store_true", help="p2p without local blending (the injection alone)")
    ap.add_argument("--image-scales", default="1.5", help="ip2p: image guidance scales to compare")
    ap.add_argument("--etas", default="0.7", help="imagic: etas to sample (one optimisation per pair for all)")
    ap.add_argument("--imagic-steps", default="100,50", help="imagic: embedding steps, fine-tune steps")
    ap.add_argument("--ar-guidance", type=float, default=3.0, help="AR: classifier-free guidance for p2p / imagic")
    ap.add_argument("--paradigms", default="ar,diffusion")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--section", default=None, help="write a report section (JSON) here")
    a = ap.parse_args()
    torch.set_num_threads(1)
    from duogen.bridges.edit.imagic import imagic_edit
    from duogen.bridges.edit.ip2p import ip2p_edit
    from duogen.bridges.edit.prompt_to_prompt import p2p_edit
    from duogen.bridges.generate import load_generator
    from duogen.bridges.result import to_uint8
    from duogen.data import load_dataset

    ds = load_dataset(a.data)[a.split].with_format("numpy")
    rows = [ds[i] for i in range(min(a.pairs, len(ds)))]
    for r in rows:
        for k in ("source", "target"):
            r[k] = np.asarray(r[k]).astype(np.uint8)
        for k in ("source_caption", "target_caption", "instruction", "edit"):
            r[k] = str(r[k])
        for k in ("source_attributes", "target_attributes"):
            r[k] = [{kk: (str(v) if isinstance(v, (str, np.str_)) else v) for kk, v in d.items()} for d in r[k]]
    table: list[list[Any]] = []
    gens = {"ar": load_generator(a.ar), "diffusion": load_generator(a.dit)}
    notes = ["Loaded shared 2-core CPU, one thread."]
    for paradigm, g in gens.items():  # how P2P's token alignment fares on the whole split's caption pairs
        tok = g.model.text if paradigm == "ar" else g.model.tokenizer
        n_s = np.array([len(tok.encode(str(c))) for c in ds["source_caption"]])
        n_t = np.array([len(tok.encode(str(c))) for c in ds["target_caption"]])
        notes.append(f"{paradigm}: {100 * np.mean(n_s == n_t):.0f}% of the {len(n_s)} {a.split} caption pairs have"
                     f" equal token counts (one-to-one word swap); the rest need the refine alignment"
                     + (f"; in the AR layout (text left-padded) their shared words move by {np.mean(np.abs(n_s - n_t)[n_s != n_t]):.1f}"
                        " key positions on average" if paradigm == "ar" and (n_s != n_t).any() else ""))
        print(notes[-1], flush=True)
    codec = gens["ar"].codec
    gens = {k: v for k, v in gens.items() if k in a.paradigms.split(",")}
    with torch.inference_mode():
        recons = [to_uint8(codec.decode(codec.encode(r["source"])))[0] for r in rows]
    for name, clips in (("source (no edit)", [r["source"] for r in rows]),
                        ("target (ground truth)", [r["target"] for r in rows])):
        table.append(summarize(name, "-", "-", [score(c, r, rc) for c, r, rc in zip(clips, rows, recons)], 0.0))
        print(table[-1], flush=True)

    curves: dict[str, list[list[Any]]] = {"p2p": [], "imagic": [], "ip2p": []}  # method -> plot_curve rows

    def run(method: str, paradigm: str, setting: str, fn: Any, value: float | None = None) -> None:
        scores, extra, t0 = [], [], time.perf_counter()
        for r, rc in zip(rows, recons):
            res = fn(r)
            scores.append(score(res.videos[0], r, rc))
            if "prompt_attention" in res.info:
                extra.append(res.info["prompt_attention"])
        table.append(summarize(method, paradigm, setting, scores, time.perf_counter() - t0,
                               f"{100 * np.mean(extra):.1f}%" if extra else ""))
        print(table[-1], flush=True)
        if value is not None:
            curves[method].append(curve_point(paradigm, value, scores))

    methods = a.methods.split(",")
    for paradigm, g in gens.items():
        kw = {"steps": a.steps} if paradigm == "diffusion" else {"top_k": 50, "guidance": a.ar_guidance}
        if "p2p" in methods:
            for tau in [float(t) for t in a.taus.split(",")]:
                run("p2p", paradigm, f"tau={tau:g}" + ("" if a.no_blend else ", local blend"),
                    lambda r, tau=tau: p2p_edit(g, r["source"], prompt=r["target_caption"],
                                                source_prompt=r["source_caption"], tau=tau,
                                                local_blend=None if a.no_blend else True, seed=a.seed, **kw),
                    tau)
        if "imagic" in methods:
            e_steps, t_steps = (int(x) for x in a.imagic_steps.split(","))
            etas = [float(e) for e in a.etas.split(",")]
            by_eta: dict[float, list[dict[str, Any]]] = {e: [] for e in etas}
            t0 = time.perf_counter()
            for r, rc in zip(rows, recons):  # stages A and B once per pair, stage C at every eta
                res = imagic_edit(g, r["source"], prompt=r["target_caption"], eta=etas, emb_steps=e_steps,
                                  tune_steps=t_steps, seed=a.seed, **kw)
                for e in etas:
                    by_eta[e].append(score(res.state["by_eta"][e][0], r, rc))
            for e in etas:
                table.append(summarize("imagic", paradigm, f"eta={e:g}, {e_steps} emb + {t_steps} tune steps",
                                       by_eta[e], time.perf_counter() - t0, "s: one optimisation, all etas"))
                curves["imagic"].append(curve_point(paradigm, e, by_eta[e]))
                print(table[-1], flush=True)
    ip2p_models = {k: v for k, v in {"ar": a.ip2p_ar, "diffusion": a.ip2p_dit}.items() if k in a.paradigms.split(",")}
    if "ip2p" in methods:
        for paradigm, d in ip2p_models.items():
            if d is None:
                continue
            g = load_generator(d)
            kw = {"steps": a.steps} if paradigm == "diffusion" else {"top_k": 50}
            for s_I in [float(s) for s in a.image_scales.split(",")]:
                run("ip2p", paradigm, f"s_T=default, s_I={s_I:g}", lambda r, s_I=s_I: ip2p_edit(
                    g, r["source"], prompt=r["instruction"], image_scale=s_I, seed=a.seed, **kw), s_I)
    widths = [max(len(str(x)) for x in col) for col in zip(COLUMNS, *table)]
    for line in [COLUMNS] + table:
        print("  ".join(str(x).ljust(w) for x, w in zip(line, widths)))
    if a.section:
        from bench_edit import plot_curve  # bench/ is on sys.path when this script runs

        Path(a.section).parent.mkdir(parents=True, exist_ok=True)
        plots, ccols = [], ["paradigm", "value", "success %", "preserved %", "PSNR out dB"]
        names = {"p2p": ("tau", "Prompt-to-Prompt" + ("" if a.no_blend else ", local blend")),
                 "imagic": ("eta", "Imagic"), "ip2p": ("image scale s_I", "InstructPix2Pix")}
        curve_tables = []
        for method, pts in curves.items():
            if len({p[1] for p in pts}) < 2:  # a single value is no curve
                continue
            png = Path(a.section).with_name(f"{Path(a.section).stem}_{method}.png")
            plot_curve(pts, names[method][0], names[method][1], png)
            plots.append(png.name)
            curve_tables.append({"caption": f"{names[method][1]}: {names[method][0]} trade-off", "columns": ccols,
                                 "rows": pts})
        cmd = "python " + " ".join(sys.argv)
        sec = {"title": "Editing: Prompt-to-Prompt, Imagic, InstructPix2Pix", "intro": __doc__.split("\n\n")[2],
               "tables": [{"caption": f"{len(rows)} {a.split} pairs per row", "columns": COLUMNS, "rows": table},
                          *curve_tables], "plots": plots,
               "notes": " ".join(notes), "command": cmd}
        Path(a.section).write_text(json.dumps(sec, indent=2))


if __name__ == "__main__":
    main()
