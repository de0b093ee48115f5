"""The comparison report: one self-contained HTML page beside the clips, plots and results.json.

`write_report(report_dir, results)` reads the lossless clips that
`duogen.eval.compare` saved and writes, under `report_dir`:
- `report.html`: a clip grid per prompt (one column per model, headline setting,
  GIFs upscaled so 32x32 clips are visible), the metrics table, the sampling
  sweep, the plots and each model's resolved configuration. Only relative
  paths, no scripts, no external CSS: it opens from disk in any browser.
- `gifs/`: the GIFs the page shows; `clips/<model>/pNNN_sMM.mp4`: every headline clip as MP4;
- `plots/accuracy_vs_cost.png`, `plots/loss_vs_flops.png` (matplotlib, Agg).
It owns presentation only; every number comes from `results`.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .files import read_metrics, slug

ATTR_ORDER = ("color", "motion", "direction", "shape", "size", "speed", "count", "all")


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.2e}"
        return f"{v:.{digits}g}"
    return html.escape(str(v))


def _pct(v: Any) -> str:
    return "–" if v is None else f"{100 * float(v):.1f}%"


def _pct_se(v: Any, se: Any) -> str:
    """A percentage with its standard error, "86.1% ± 5.2" (the error left out where there is none)."""
    return _pct(v) if v is None or se is None else f"{_pct(v)} ± {100 * float(se):.1f}"


def _kinds(results: Mapping[str, Any]) -> list[str]:
    found: set[str] = set()
    for m in results["models"]:
        for s in m["settings"]:
            found.update(s["accuracy"].get("all", {}).keys())
    return [k for k in ATTR_ORDER if k in found] + sorted(found - set(ATTR_ORDER))


def _strip(samples: np.ndarray, gap: int = 2) -> np.ndarray:
    """N clips (N, F, H, W, 3) side by side with a white gap -> (F, H, N*W + (N-1)*gap, 3)."""
    N, F, H, W, _ = samples.shape
    out = np.full((F, H, N * W + (N - 1) * gap, 3), 255, np.uint8)
    for i in range(N):
        out[:, :, i * (W + gap) : i * (W + gap) + W] = samples[i]
    return out


def _write_media(report_dir: Path, results: Mapping[str, Any], upscale: int) -> dict[tuple[str, int], str]:
    """GIF strips per (model, prompt) and one MP4 per headline clip; returns GIF paths by (model, prompt)."""
    from ..data.media import write_gif, write_mp4

    gifs: dict[tuple[str, int], str] = {}
    for m in results["models"]:
        head = _headline(m)
        with np.load(report_dir / head["clips"]) as z:
            clips = z["clips"]  # (P, N, F, H, W, 3)
        ms = slug(m["name"])
        for p, samples in enumerate(clips):
            rel = f"gifs/{ms}/p{p:03d}.gif"
            (report_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            write_gif(report_dir / rel, _strip(samples), fps=6, upscale=upscale)
            gifs[(m["name"], p)] = rel
            for s, clip in enumerate(samples):
                mp4 = report_dir / f"clips/{ms}/p{p:03d}_s{s:02d}.mp4"
                mp4.parent.mkdir(parents=True, exist_ok=True)
                write_mp4(mp4, clip, fps=6)
    return gifs


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, no GUI toolkit
    import matplotlib.pyplot as plt

    return plt


def _style(ax: Any) -> None:
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    _pyplot().close(fig)
    return path


def plot_accuracy_vs_cost(results: Mapping[str, Any], path: Path) -> Path:
    """Accuracy (mean over attribute kinds) against sampling cost per clip and against latency."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    for m in results["models"]:
        pts = sorted(
            (s["cost_per_clip"], s["latency_s_per_clip"], s["accuracy"].get("all", {}).get("all"), s["label"], s["cost_unit"])
            for s in m["settings"] if s["accuracy"].get("all", {}).get("all") is not None
        )
        if not pts:
            continue
        for ax, xi in ((axes[0], 0), (axes[1], 1)):
            xs = [p[xi] for p in pts]
            ys = [p[2] for p in pts]
            ax.plot(xs, ys, marker="o", label=f"{m['name']} ({pts[0][4]})" if xi == 0 else m["name"])
            for p in pts:
                ax.annotate(p[3], (p[xi], p[2]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    axes[0].set_xlabel("sampling cost per clip (forward passes or tokens)")
    axes[1].set_xlabel("sampling latency per clip (s)")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_ylabel("prompt accuracy (mean over attributes)")
        ax.set_ylim(0, 1.02)
        _style(ax)
    fig.suptitle("Accuracy against sampling compute")
    return _save(fig, path)


def loss_curve(rows: Sequence[Mapping[str, Any]]) -> tuple[list[float], list[float]]:
    """(cumulative training FLOPs, loss) pairs from metrics.jsonl rows that have both."""
    xs, ys = [], []
    for r in rows:
        f = r.get("flops_total", r.get("total_flops", r.get("flops")))
        loss = r.get("loss", r.get("train_loss"))
        if isinstance(f, (int, float)) and isinstance(loss, (int, float)) and f > 0:
            xs.append(float(f))
            ys.append(float(loss))
    return xs, ys


def plot_loss_vs_flops(results: Mapping[str, Any], path: Path) -> Path | None:
    """Training loss against cumulative training FLOPs, one line per model with an engine log."""
    plt = _pyplot()
    curves = []
    for m in results["models"]:
        run = (m.get("training") or {}).get("run_dir")
        xs, ys = loss_curve(read_metrics(run)) if run else ([], [])
        if xs:
            curves.append((m["name"], xs, ys))
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=100)
    for name, xs, ys in curves:
        ax.plot(xs, ys, label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training FLOPs (cumulative)")
    ax.set_ylabel("training loss (each paradigm's own objective)")
    _style(ax)
    ax.set_title("Training loss against compute")
    return _save(fig, path)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:24px;color:#222;max-width:1600px}
h1{margin-bottom:4px} h2{margin-top:32px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px} td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3} td.l,th.l{text-align:left}
.grid td{vertical-align:top;text-align:left} .grid img{image-rendering:pixelated;display:block}
.cap{font-size:13px;max-width:220px} .split{color:#777;font-size:11px}
pre{background:#f7f7f7;padding:8px;font-size:11px;overflow:auto;max-height:400px}
.note{color:#555;font-size:13px;max-width:1000px}
"""


def _headline(m: Mapping[str, Any]) -> Mapping[str, Any]:
    return next(st for st in m["settings"] if st["label"] == m["headline"])


def _metrics_table(results: Mapping[str, Any]) -> str:
    head = ["model", "kind", "parameters", "train FLOPs", "train wall (s)", "sampling", "Frechet probe dist.",
            "diversity", "temporal change (ratio to real)", "latency s/clip", "cost/clip"]
    rows = ["<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for m in results["models"]:
        s, tr = _headline(m), m.get("training") or {}
        cells = [f"<td class=l>{html.escape(m['name'])}</td>", f"<td class=l>{m['kind']}</td>",
                 f"<td>{_fmt(m.get('parameters'))}</td>", f"<td>{_fmt(tr.get('flops'))}</td>",
                 f"<td>{_fmt(tr.get('wall_s'))}</td>", f"<td class=l>{html.escape(s['label'])}</td>",
                 f"<td>{_fmt(s.get('frechet_probe_distance'))}</td>", f"<td>{_fmt(s.get('diversity'))}</td>",
                 f"<td>{_fmt(s.get('temporal_change'))} ({_fmt(s.get('temporal_change_ratio'))})</td>",
                 f"<td>{_fmt(s['latency_s_per_clip'])}</td>", f"<td>{_fmt(s['cost_per_clip'])} {s['cost_unit']}</td>"]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return "<table>" + "\n".join(rows) + "</table>"


def _accuracy_table(results: Mapping[str, Any], kinds: list[str]) -> str:
    head = ["model", "prompts"] + kinds
    rows = ["<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for m in results["models"]:
        head = _headline(m)
        acc, err = head["accuracy"], head.get("accuracy_stderr") or {}
        for split in [k for k in ("validation", "heldout", "custom") if k in acc] + ["all"]:
            cells = [f"<td class=l>{html.escape(m['name'])}</td>", f"<td class=l>{split}</td>"]
            cells += [f"<td>{_pct_se(acc[split].get(k), err.get(split, {}).get(k))}</td>" for k in kinds]
            rows.append("<tr>" + "".join(cells) + "</tr>")
    return "<table>" + "\n".join(rows) + "</table>"


def _objects_table(results: Mapping[str, Any], kinds: list[str]) -> str:
    """Headline accuracy per model over the prompts of each number of objects; "" when every prompt has as many."""
    groups = [(m, _headline(m).get("accuracy_by_objects") or {}) for m in results["models"]]
    if all(len(g) < 2 for _, g in groups):
        return ""
    head = ["model", "objects", "prompts"] + kinds
    rows = ["<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for m, by in groups:
        for n, g in sorted(by.items(), key=lambda kv: int(kv[0])):
            cells = [f"<td class=l>{html.escape(m['name'])}</td>", f"<td>{html.escape(n)}</td>", f"<td>{g['prompts']}</td>"]
            cells += [f"<td>{_pct_se(g['accuracy'].get(k), g['stderr'].get(k))}</td>" for k in kinds]
            rows.append("<tr>" + "".join(cells) + "</tr>")
    return ("<h3>By the number of objects in the prompt</h3><table>" + "\n".join(rows) + "</table>"
            "<p class=note>The same clips as above, split by how many objects their prompt names: a model that binds"
            " each object's attributes keeps its accuracy as the count grows.</p>")


def _training_table(results: Mapping[str, Any]) -> str:
    """Training cost per model, with FLOPs relative to the first model that has them (compute matching)."""
    base = next(((m.get("training") or {}).get("flops") for m in results["models"] if (m.get("training") or {}).get("flops")), None)
    head = ["model", "parameters", "steps", "train FLOPs", "FLOPs vs first", "train wall (s)", "final loss", "stopped by"]
    rows = ["<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for m in results["models"]:
        tr = m.get("training") or {}
        ratio = tr["flops"] / base if base and tr.get("flops") else None
        cells = [f"<td class=l>{html.escape(m['name'])}</td>", f"<td>{_fmt(m.get('parameters'))}</td>",
                 f"<td>{_fmt(tr.get('steps'))}</td>", f"<td>{_fmt(tr.get('flops'))}</td>", f"<td>{_fmt(ratio)}</td>",
                 f"<td>{_fmt(tr.get('wall_s'))}</td>", f"<td>{_fmt(tr.get('final_loss'))}</td>",
                 f"<td class=l>{_fmt(tr.get('stopped'))}</td>"]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return "<table>" + "\n".join(rows) + "</table>"


def _sweep_table(results: Mapping[str, Any], kinds: list[str]) -> str:
    head = ["model", "setting", "arguments"] + kinds + ["cost/clip", "latency s/clip", "Frechet probe dist."]
    rows = ["<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for m in results["models"]:
        for s in m["settings"]:
            acc = s["accuracy"].get("all", {})
            cells = [f"<td class=l>{html.escape(m['name'])}</td>", f"<td class=l>{html.escape(s['label'])}</td>",
                     f"<td class=l>{html.escape(json.dumps(s['kwargs']))}</td>"]
            cells += [f"<td>{_pct(acc.get(k))}</td>" for k in kinds]
            cells += [f"<td>{_fmt(s['cost_per_clip'])} {s['cost_unit']}</td>", f"<td>{_fmt(s['latency_s_per_clip'])}</td>",
                      f"<td>{_fmt(s.get('frechet_probe_distance'))}</td>"]
            rows.append("<tr>" + "".join(cells) + "</tr>")
    return "<table>" + "\n".join(rows) + "</table>"


def _grid(results: Mapping[str, Any], gifs: Mapping[tuple[str, int], str]) -> str:
    models = results["models"]
    head = "<tr><th class=l>prompt</th>" + "".join(
        f"<th class=l>{html.escape(m['name'])} <span class=split>({html.escape(m['headline'])})</span></th>" for m in models) + "</tr>"
    rows = [head]
    per_call = max(1, int(results.get("per_call", 1)))
    for p, prompt in enumerate(results["prompts"]):
        seed = results["seed"] + (p // per_call) * per_call  # the seed of the generate call that made this row
        cells = [f"<td class=cap>{html.escape(prompt['caption'])}<br><span class=split>{html.escape(prompt['split'])}, seed {seed}</span></td>"]
        for m in models:
            rel = gifs[(m["name"], p)]
            accs = _headline(m)["per_clip_accuracy"][p]
            title = "; ".join(", ".join(f"{k} {v:.2f}" for k, v in a.items()) for a in accs)
            cells.append(f"<td><img src=\"{html.escape(rel)}\" alt=\"{html.escape(m['name'])}: {html.escape(prompt['caption'])}\" title=\"{html.escape(title)}\"></td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return "<table class=grid>" + "\n".join(rows) + "</table>"


def load_section(path: str | Path) -> dict[str, Any]:
    """A bridge benchmark's section file (JSON): {"title", "intro"?, "tables": [{"caption"?, "columns", "rows"}],
    "plots"?: [PNG paths, absolute or relative to the file], "notes"?, "command"?}; checked, plots made absolute."""
    from ..errors import DataError

    path = Path(path)
    try:
        sec = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable JSON section file ({e})") from None
    if not isinstance(sec, dict) or not isinstance(sec.get("title"), str):
        raise DataError(f"{path}: a section file is a JSON object with a \"title\" string")
    for t in sec.get("tables", []):
        if not isinstance(t, dict) or not isinstance(t.get("columns"), list) or not isinstance(t.get("rows"), list) \
                or any(not isinstance(r, list) or len(r) != len(t["columns"]) for r in t["rows"]):
            raise DataError(f"{path}: each table needs \"columns\" and \"rows\" of that many cells")
    sec["plots"] = [str((path.parent / q).resolve()) for q in sec.get("plots", [])]
    return sec


def _section(sec: Mapping[str, Any], report_dir: Path, index: int) -> str:
    """One bridge section: its tables, its plots (copied under plots/), the command that made it."""
    import shutil

    parts = [f"<h2>{html.escape(sec['title'])}</h2>"]
    if sec.get("intro"):
        parts.append(f"<p>{html.escape(sec['intro'])}</p>")
    for t in sec.get("tables", []):
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in t["columns"])
        body = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in r) + "</tr>" for r in t["rows"])
        cap = f"<caption>{html.escape(t['caption'])}</caption>" if t.get("caption") else ""
        parts.append(f"<table>{cap}<tr>{head}</tr>{body}</table>")
    for j, src in enumerate(sec.get("plots", [])):
        if Path(src).is_file():
            rel = f"plots/section{index}_{j}{Path(src).suffix}"
            (report_dir / "plots").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, report_dir / rel)
            parts.append(f"<p><img src=\"{rel}\" alt=\"{html.escape(sec['title'])} plot {j + 1}\"></p>")
    if sec.get("notes"):
        parts.append(f"<p class=note>{html.escape(sec['notes'])}</p>")
    if sec.get("command"):
        parts.append(f"<p class=note>Made by <code>{html.escape(sec['command'])}</code>.</p>")
    return "\n".join(parts)


def write_report(report_dir: str | Path, results: Mapping[str, Any], *, upscale: int = 3,
                 title: str = "duogen: next-token vs diffusion") -> Path:
    """Write report.html (and its GIFs, MP4s and plots) for a compare results dict; return its path."""
    from ..io import atomic_write_text

    report_dir = Path(report_dir)
    gifs = _write_media(report_dir, results, upscale)
    kinds = _kinds(results)
    acc_png = plot_accuracy_vs_cost(results, report_dir / "plots" / "accuracy_vs_cost.png")
    loss_png = plot_loss_vs_flops(results, report_dir / "plots" / "loss_vs_flops.png")
    real = results.get("real") or {}
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p class=note>{len(results['prompts'])} prompts x {results['n']} samples per model; {html.escape(results['seeds_policy'])}."
        f" Data: {html.escape(str(results.get('data')))}. Real clips for the Frechet probe distance: {real.get('clips', 0)}"
        f" (their temporal change: {_fmt(real.get('temporal_change'))}).</p>",
        "<h2>Prompt accuracy (headline sampling setting)</h2>", _accuracy_table(results, kinds),
        _objects_table(results, kinds),
        "<h2>Cost, fidelity and diversity</h2>", _metrics_table(results),
        "<p class=note>Accuracy: the fraction of each prompt's attributes the probes recover, per kind, averaged over clips;"
        " ± its standard error with prompts as the units (the spread of the per-prompt means over the square root of"
        " their number: the samples of one prompt are not independent draws)."
        " Frechet probe distance: between Gaussians fitted to probe features of the generated clips and of real held-out clips (lower is closer)."
        " Diversity: mean pairwise probe-feature distance among the samples of one prompt. Temporal change: mean absolute"
        " frame-to-frame pixel difference (fraction of 255); the ratio to real clips is 1 for data-like motion, below 1 for frozen"
        " or blurred motion, above 1 for flicker. Cost: denoiser forward passes per clip (diffusion) or sampled tokens per clip (AR),"
        " doubled under classifier-free guidance.</p>",
        "<h2>Clips</h2>", _grid(results, gifs),
        "<p class=note>Each cell shows the N samples of one prompt (GIF, nearest-neighbour upscaled); the MP4s are under"
        " <code>clips/</code> and the lossless clips as <code>.npz</code> beside them. Hover a cell for per-sample probe accuracies.</p>",
        "<h2>Sampling compute sweep</h2>", _sweep_table(results, kinds),
        f"<p><img src=\"{acc_png.relative_to(report_dir).as_posix()}\" alt=\"accuracy against sampling cost\"></p>",
        "<h2>Training</h2>", _training_table(results),
        "<p class=note>FLOPs are the engine's count of training compute (forward and backward, measured on the first"
        " batch with torch's FLOP counter); a compute-matched pair has a ratio near 1. Losses are each paradigm's own"
        " objective (next-token cross-entropy, diffusion v-prediction MSE) and are not comparable with each other.</p>",
    ]
    if loss_png is not None:
        parts.append(f"<p><img src=\"{loss_png.relative_to(report_dir).as_posix()}\" alt=\"training loss against FLOPs\"></p>")
    else:
        parts.append("<p class=note>No engine metrics.jsonl with FLOPs was found for these models.</p>")
    parts.extend(_section(sec, report_dir, i) for i, sec in enumerate(results.get("sections", [])))
    parts.append("<h2>Configurations</h2>")
    for m in results["models"]:
        parts.append(f"<details><summary>{html.escape(m['name'])} — {html.escape(str(m.get('path')))}</summary>"
                     f"<pre>{html.escape(json.dumps(m.get('config') or {}, indent=2, default=str))}</pre></details>")
    parts.append("<p class=note>Every number on this page is in <code>results.json</code>.</p></body></html>")
    return atomic_write_text(report_dir / "report.html", "\n".join(parts))
