"""Video codec quality per training step: PSNR, SSIM, codebook usage and color fidelity at given steps.

    .venv/bin/python bench/bench_codec_steps.py --data DATA --out DIR \\
        --config old=tiny:model.color_path=false --config new=tiny [--steps 250,500,1000,2000] \\
        [--heldout 128] [--seed 0] [--threads 1] [--section DIR/section.json]
    .venv/bin/python bench/bench_codec_steps.py --merge A/steps.json B/steps.json --out DIR [--section ...]

Each `--config NAME=PRESET[:key=value,...]` trains one video codec with `duogen.train.
tokenizer_recipe.train_codec` (the recipe of `duogen train tokenizer`, preset + overrides)
for max(--steps) steps, on the same data, seed, batches and augmentations as every other
config, and at each of --steps evaluates the codec on a fixed held-out subset (the first
--heldout clips of the `heldout` split; 128 by default, a few seconds per evaluation):

- PSNR through the ids and SSIM (`evaluate_codec`), codebook usage over that subset's ids
  (a smaller subset reads lower usage than the whole split: fewer tokens to hit codes with);
- color fidelity: the probes (`duogen.eval.probes.probe_clip`) read each reconstruction, and an
  object of the ground truth counts as kept when a reading has its color; overall and per color.
  The same read on the ground-truth clips is printed as the probes' ceiling.

The learning-rate schedule spans max(--steps) (warm-up, then a cosine over the run), so the
early points are mid-schedule: a run stopped there would end at a lower learning rate. The
end-of-schedule curve (what `train.steps=N` gives) takes one run per step count, joined with
--merge (configs of the same name become one line; each point records its schedule).
Per-step figures do not depend on the machine's load; the seconds per step do (the load
average is recorded). Writes DIR/steps.json (updated after every evaluation, so a cut run
keeps its points), DIR/steps.png (one panel per metric, one line per config) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

METRICS = (("psnr", "held-out PSNR (dB)"), ("ssim", "SSIM"), ("codebook_usage", "codebook usage"),
           ("color", "color fidelity (probes)"))


def parse_config(spec: str) -> tuple[str, str, list[str]]:
    """'NAME=PRESET[:k=v,k=v]' -> (name, preset, overrides). Values may hold commas inside [...]."""
    if "=" not in spec.split(":")[0]:
        raise SystemExit(f"--config {spec!r}: expected NAME=PRESET[:key=value,...]")
    name, rest = spec.split("=", 1)
    preset, _, ov = rest.partition(":")
    overrides, depth, cur = [], 0, ""
    for ch in ov:
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            overrides.append(cur)
            cur = ""
        else:
            cur += ch
    if cur:
        overrides.append(cur)
    return name, preset, overrides


def reconstruct_uint8(codec: Any, videos: np.ndarray, batch: int = 32) -> np.ndarray:
    """uint8 (N, F, H, W, 3) -> the codec's reconstruction through the ids, uint8 (N, F, H, W, 3)."""
    out = []
    with torch.no_grad():
        for i in range(0, len(videos), batch):
            rec = codec.decode(codec.encode(videos[i : i + batch]))  # (B, 3, F, H, W) in [-1, 1]
            out.append(((rec.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 4, 1).cpu().numpy())
    return np.concatenate(out)


def color_fidelity(clips: np.ndarray, attributes: list[list[dict[str, Any]]]) -> dict[str, float]:
    """Share of ground-truth objects whose color the probes find in the clip: overall and per color."""
    from duogen.eval.probes import probe_clip

    kept: dict[str, list[float]] = {}
    for clip, attrs in zip(clips, attributes):
        read = {r.color for r in probe_clip(clip)}
        for a in attrs:
            kept.setdefault(a["color"], []).append(float(a["color"] in read))
    allv = [v for vs in kept.values() for v in vs]
    return {"color": float(np.mean(allv)), **{f"color_{c}": float(np.mean(v)) for c, v in sorted(kept.items())}}


def evaluate_point(codec: Any, held: np.ndarray, attrs: list[list[dict[str, Any]]]) -> dict[str, float]:
    from duogen.train.tokenizer_recipe import evaluate_codec

    codec.eval()
    r = evaluate_codec(codec, held, ssim=True)
    out = {k: r[k] for k in ("psnr", "psnr_continuous", "ssim", "codebook_usage", "perplexity")}
    return {**out, **color_fidelity(reconstruct_uint8(codec, held), attrs)}


def codec_steps(path: str) -> int | None:
    """The training steps a saved codec directory records (config.json "steps"); None if it does not."""
    try:
        return json.loads((Path(path) / "config.json").read_text()).get("steps")
    except (OSError, ValueError):
        return None


def run_config(spec: str, data: Path, steps: list[int], horizon: int, held: np.ndarray, attrs: list, seed: int,
               threads: int, work: Path, res: dict[str, Any], save: Any) -> None:
    """Train one config, appending an evaluation to res["points"] (and calling save()) at each of `steps`."""
    from duogen import config as cfgmod
    from duogen.train.tokenizer_recipe import VIDEO_RUN_PRESETS, VideoTokenizerRun, calibrate_codec, load_pixels, train_codec

    name, preset, overrides = parse_config(spec)
    fixed = [f"train.steps={max(steps)}", f"train.schedule_steps={max(horizon, max(steps))}", "train.max_minutes=0", f"train.seed={seed}", f"train.threads={threads}",
             "train.eval_every_s=1e9", "train.device=cpu", "train.precision=fp32"]
    run = cfgmod.load(VideoTokenizerRun, presets=VIDEO_RUN_PRESETS, preset=preset, overrides=overrides + fixed)
    res.update(name=name, spec=spec, preset=preset, overrides=overrides, points=[])
    t_last = [time.time()]
    train_s = [0.0]
    train_clips = load_pixels(data, "train", "video", limit=512)

    def hook(step: int, codec: Any) -> None:
        if step == 1:  # time from the end of step 1: set-up and the first step's kernel choices excluded
            t_last[0] = time.time()
        if step not in steps:
            return
        train_s[0] += time.time() - t_last[0]
        calibrate_codec(codec, train_clips, "video", 512)  # what the recipe does before it saves a codec
        point = {"step": step, "schedule": run.train.schedule_steps, "train_seconds": round(train_s[0], 1),
                 "load_avg": round(os.getloadavg()[0], 2), **evaluate_point(codec, held, attrs)}
        res["points"].append(point)
        print(f"[{name}] step {step}: psnr {point['psnr']:.2f} ssim {point['ssim']:.3f} usage "
              f"{point['codebook_usage']:.3f} color {point['color']:.3f} ({point['train_seconds']:.0f} s)", flush=True)
        save()
        t_last[0] = time.time()

    torch.manual_seed(seed)
    summary = train_codec(run, "video", data, work / name, heldout_items=held, step_hook=hook)
    res["final"] = summary["final"]


def table(results: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    cols = ["config", "step", "schedule", "PSNR dB", "latent PSNR dB", "SSIM", "usage", "color", "s/step", "load"]
    rows = []

    def latent(p: dict[str, Any]) -> Any:  # decoded from the continuous latent (older files lack it)
        return round(p["psnr_continuous"], 2) if "psnr_continuous" in p else "-"

    for r in results:
        prev = {}  # schedule -> (seconds, step) of that run's previous point
        for p in r["points"]:
            if r.get("reference"):  # a saved codec: its own step count, no timing
                rows.append([r["name"], p["step"], "-", round(p["psnr"], 2), latent(p), round(p["ssim"], 3),
                             f"{p['codebook_usage']:.1%}", f"{p['color']:.1%}", "-", "-"])
                continue
            prev_s, prev_step = prev.get(p["schedule"], (0.0, 1))
            sps = (p["train_seconds"] - prev_s) / max(1, p["step"] - prev_step)
            prev[p["schedule"]] = (p["train_seconds"], p["step"])
            rows.append([r["name"], p["step"], p["schedule"], round(p["psnr"], 2), latent(p), round(p["ssim"], 3),
                         f"{p['codebook_usage']:.1%}", f"{p['color']:.1%}", round(sps, 2), p["load_avg"]])
    return cols, rows


def join(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The results of several steps.json, one per config name: points of runs with other schedules are joined
    (sorted by step), each keeping the schedule it was read on (older files record it once, as "horizon")."""
    by_name: dict[str, dict[str, Any]] = {}
    for d in docs:
        for r in d["results"]:
            horizon = d.get("horizon", max(d.get("steps") or [0]))
            pts = [{**p, "schedule": p.get("schedule", horizon)} for p in r["points"]]
            if r["name"] in by_name:
                by_name[r["name"]]["points"] += pts
            else:
                by_name[r["name"]] = {**r, "points": pts}
    for r in by_name.values():
        r["points"].sort(key=lambda p: (p["step"], p["schedule"] or 0))
    return list(by_name.values())


def color_table(results: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    colors = sorted({k[6:] for r in results for p in r["points"] for k in p if k.startswith("color_")})
    rows = [[r["name"], p["step"], "-" if r.get("reference") else p.get("schedule", "-"),
             *[f"{p.get('color_' + c, float('nan')):.0%}" for c in colors]] for r in results for p in r["points"]]
    return ["config", "step", "schedule", *colors], rows


def plot(results: list[dict[str, Any]], path: Path) -> None:
    """One panel per metric over log-spaced steps: a config's end-of-schedule points joined by a line, its
    mid-schedule reads as open circles, saved codecs as stars; one legend under the panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    # the default cycle's 10 colors first (today / new keep theirs), then tab20's lighter tones, Dark2 and Set2:
    # 36 configs before a color repeats (with another marker)
    colors = [*plt.rcParams["axes.prop_cycle"].by_key()["color"], *plt.get_cmap("tab20").colors[1::2],
              *plt.get_cmap("Dark2").colors, *plt.get_cmap("Set2").colors]
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 3.6))
    for ax, (key, label) in zip(axes, METRICS):
        for i, r in enumerate(results):
            color, marker = colors[i % len(colors)], "osD^v<>"[i // len(colors) % 7]
            if r.get("reference"):
                ax.plot([p["step"] for p in r["points"]], [p[key] for p in r["points"]], "*", markersize=12,
                        color=color, label=r["name"])
                continue
            end = [p for p in r["points"] if p["step"] == p["schedule"]]
            mid = [p for p in r["points"] if p["step"] != p["schedule"]]
            if end:
                ax.plot([p["step"] for p in end], [p[key] for p in end], marker + "-", color=color, label=r["name"])
            if mid:
                ax.plot([p["step"] for p in mid], [p[key] for p in mid], marker, mfc="none", color=color,
                        label=f"{r['name']} (mid-schedule)" if end else f"{r['name']} (mid-schedule only)")
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("training step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    legend_h = 0.2 + 0.17 * -(-len(labels) // 4)  # inches under the panels: four entries a row
    fig.set_size_inches(4 * len(METRICS), 3.6 + legend_h)  # sized before the layout, so the panels keep 3.6 inches
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, legend_h / (3.6 + legend_h), 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def print_table(cols: list[str], rows: list[list[Any]]) -> None:
    w = [max(len(str(c)), *(len(str(r[i])) for r in rows)) for i, c in enumerate(cols)] if rows else [len(c) for c in cols]
    print("  ".join(str(c).ljust(n) for c, n in zip(cols, w)))
    for r in rows:
        print("  ".join(str(v).ljust(n) for v, n in zip(r, w)))


def report(doc: dict[str, Any], out: Path, section: Path | None) -> None:
    results = doc["results"]
    plot(results, out / "steps.png")
    cols, rows = table(results)
    ccols, crows = color_table(results)
    print_table(cols, rows)
    print()
    print_table(ccols, crows)
    if section is not None:
        section.parent.mkdir(parents=True, exist_ok=True)
        sec = {
            "title": "Video codec quality per training step",
            "intro": (f"Each config trains the video codec with the same data, seed and batches; at each step it is "
                      f"evaluated on the first {doc['heldout']} held-out clips: PSNR and SSIM through the ids, PSNR "
                      f"decoded from the continuous latent (no quantization), "
                      f"codebook usage over those clips' ids, and color fidelity = share of ground-truth objects whose "
                      f"color the probes read in the reconstruction (on the ground truth itself: "
                      f"{doc['probe_ceiling']:.1%}). `schedule` is the length of the run's learning-rate schedule: a point at "
                      f"its end is what `train.steps=N` gives, an earlier one is mid-schedule. s/step is "
                      f"wall-clock on a shared CPU ({doc['threads']} thread); the load average is recorded."),
            "tables": [{"caption": "per step", "columns": cols, "rows": rows},
                       {"caption": "color fidelity per color", "columns": ccols, "rows": crows}],
            "plots": [os.path.relpath(out / "steps.png", section.parent)],
            "notes": "; ".join(f"{r['name']} = {r['spec']}" for r in results),
            "command": doc["command"],
        }
        section.write_text(json.dumps(sec, indent=2) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="shapes world directory (duogen data make shapes --out DATA)")
    ap.add_argument("--config", action="append", default=[], help="NAME=PRESET[:key=value,...] (repeatable)")
    ap.add_argument("--steps", default="250,500,1000,2000", help="comma-separated evaluation steps")
    ap.add_argument("--horizon", type=int, default=0,
                    help="learning-rate schedule length in steps (default: the last of --steps); a longer one screens "
                         "configs at early steps on the schedule of a longer run")
    ap.add_argument("--reference", action="append", default=[],
                    help="NAME=CODEC_DIR: a trained codec evaluated once on the same clips (a fixed point; repeatable)")
    ap.add_argument("--heldout", type=int, default=128, help="held-out clips evaluated at each step")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True, help="directory for steps.json, steps.png and the codec runs")
    ap.add_argument("--section", help="also write a report section JSON here")
    ap.add_argument("--merge", nargs="+", help="steps.json files to merge (no training); configs of the same name are "
                    "joined into one curve (e.g. separate runs of 250, 500 and 1000 steps, each to the end of its schedule)")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    section = Path(a.section) if a.section else None
    if a.merge:
        missing = [p for p in a.merge if not Path(p).is_file()]
        if missing:
            sys.exit(f"error: {missing[0]}: no such steps.json (written by a training run of this script)")
        docs = [json.loads(Path(p).read_text()) for p in a.merge]
        doc = {**docs[0], "results": join(docs), "command": " && ".join(d["command"] for d in docs)}
        (out / "steps.json").write_text(json.dumps(doc, indent=2) + "\n")
        report(doc, out, section)
        return
    if not a.data or not (a.config or a.reference):
        ap.error("--data and at least one --config or --reference are needed (or --merge)")
    from duogen.data import load_dataset

    torch.set_num_threads(a.threads)
    steps = sorted({int(s) for s in a.steps.split(",")})
    ds = load_dataset(a.data)["heldout"].with_format("numpy")
    n = min(a.heldout, len(ds))
    rows = ds[:n]
    held = np.asarray(rows["video"], dtype=np.uint8)  # (n, F, H, W, 3)
    attrs = [list(x) for x in rows["attributes"]]
    ceiling = color_fidelity(held, attrs)["color"]
    print(f"held-out clips {n}, probes' color read on the ground truth {ceiling:.1%}, load {os.getloadavg()[0]:.1f}")
    doc: dict[str, Any] = {"data": str(a.data), "heldout": n, "seed": a.seed, "threads": a.threads, "steps": steps,
                           "horizon": max(a.horizon, max(steps)), "probe_ceiling": ceiling,
                           "command": "python " + " ".join(sys.argv), "results": []}
    for spec in a.reference:
        from duogen.tokenizers import load

        name, _, path = spec.partition("=")
        point = {"step": codec_steps(path) or 0, **evaluate_point(load(path).eval(), held, attrs)}
        doc["results"].append({"name": name, "spec": path, "reference": True, "points": [point]})
        print(f"[{name}] ({point['step']} steps): psnr {point['psnr']:.2f} ssim {point['ssim']:.3f} usage "
              f"{point['codebook_usage']:.3f} color {point['color']:.3f}", flush=True)

    def save() -> None:
        (out / "steps.json").write_text(json.dumps(doc, indent=2) + "\n")

    work = out / "runs"
    for spec in a.config:
        doc["results"].append({})
        run_config(spec, Path(a.data), steps, a.horizon, held, attrs, a.seed, a.threads, work, doc["results"][-1], save)
    save()
    report(doc, out, section)


if __name__ == "__main__":
    main()
