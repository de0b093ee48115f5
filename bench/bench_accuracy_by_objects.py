"""Probe accuracy of a `duogen compare` report split by the number of objects its prompts ask for.

    .venv/bin/python bench/bench_accuracy_by_objects.py REPORT [REPORT ...] [--kinds color,count] [--json]
        [--still first|last|INDEX]

Reads each REPORT/results.json (nothing is sampled again) and prints, per model and sampling setting,
the accuracy per kind over the clips of one-object prompts, of two-object prompts and so on (then of all
prompts: what the report shows), each with
its standard error (prompts as the units, `duogen.eval.metrics.accuracy_stderr`), and, for prompts of
two or more objects, how often each (color, count) score pair occurs: color 0.5 with count 0 is a clip
where the probes found one object of the two, in a color the prompt asked for.

`--still FRAME` scores each saved clip (the report's lossless clips) as a still of one of its frames, that frame
repeated for the clip's length, instead of the clip as drawn: where a generator's sample loses an object, frame 0
against the last frame says whether the first frame already lacks it or a later one drops it. Direction is then
0 by construction.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from duogen.eval.compare import Prompt, grouped_accuracy, score_clips


def _prompts(results: dict[str, Any]) -> list[Prompt]:
    return [Prompt(p.get("caption", ""), p.get("attributes") or [], p.get("split", "custom")) for p in results["prompts"]]


def as_stills(report: str | Path, results: dict[str, Any], frame: int) -> dict[str, Any]:
    """`results` with every setting's per-clip accuracies rescored on stills of frame `frame` (negative: from the
    end) of the report's saved clips (P, N, F, H, W, 3)."""
    prompts = _prompts(results)
    out = json.loads(json.dumps(results))
    for m in out["models"]:
        for s in m["settings"]:
            with np.load(Path(report) / s["clips"]) as z:
                clips = z["clips"]
            F = clips.shape[2]
            if not -F <= frame < F:
                raise SystemExit(f"error: --still {frame}: the clips have {F} frames")
            s["per_clip_accuracy"] = score_clips(np.repeat(clips[:, :, [frame]], F, axis=2), prompts)
    return out


def by_objects(results: dict[str, Any], kinds: tuple[str, ...] = ("color", "count")) -> list[dict[str, Any]]:
    """One row per (model, setting, number of objects, then "all" prompts): clips, accuracy and error per kind
    (`duogen.eval.compare.grouped_accuracy`, what the report's table by objects shows), and the score pairs."""
    prompts = _prompts(results)
    n_obj = [len(p.attributes) for p in prompts]
    rows = []
    for m in results["models"]:
        for s in m["settings"]:
            per_clip = s["per_clip_accuracy"]
            groups = {**grouped_accuracy(per_clip, prompts, lambda p: len(p.attributes)),
                      **grouped_accuracy(per_clip, prompts, lambda p: "all")}
            for k in [*sorted(set(n_obj)), "all"]:
                g = groups[str(k)]
                per_prompt = [clips for clips, n in zip(per_clip, n_obj) if k in ("all", n)]
                pairs = Counter(tuple(c.get(kind) for kind in kinds) for clips in per_prompt for c in clips)
                rows.append({"model": m["name"], "setting": s["label"], "objects": k, "prompts": g["prompts"],
                             "clips": sum(len(c) for c in per_prompt),
                             "accuracy": {kind: g["accuracy"].get(kind) for kind in kinds},
                             "stderr": {kind: g["stderr"].get(kind) for kind in kinds},
                             "score_pairs": {" ".join(map(str, key)): v for key, v in sorted(pairs.items(), key=str)}})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("reports", nargs="+", help="`duogen compare` output directories (each holds results.json)")
    ap.add_argument("--kinds", default="color,count", help="comma-separated attribute kinds to show")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON")
    ap.add_argument("--still", default=None, metavar="FRAME",
                    help="score stills of one frame of each saved clip: first, last or a frame index")
    a = ap.parse_args()
    kinds = tuple(k for k in a.kinds.split(",") if k)
    frame = None
    if a.still is not None:
        try:
            frame = {"first": 0, "last": -1}.get(a.still) if a.still in ("first", "last") else int(a.still)
        except ValueError:
            raise SystemExit(f"error: --still takes first, last or a frame index, got {a.still!r}") from None
    rows = []
    for rep in a.reports:
        path = Path(rep) / "results.json"
        if not path.is_file():
            raise SystemExit(f"error: {path}: no such file (pass a `duogen compare --out` directory)")
        results = json.loads(path.read_text())
        if frame is not None:
            results = as_stills(rep, results, frame)
        tag = {"still": a.still} if frame is not None else {}
        rows += [{"report": rep, **tag, **r} for r in by_objects(results, kinds)]
    if a.json:
        print(json.dumps(rows, indent=2))
        return
    pct = lambda v, e: "-" if v is None else f"{100 * v:.1f}%" + ("" if e is None else f" ± {100 * e:.1f}")  # noqa: E731
    for r in rows:
        accs = ", ".join(f"{k} {pct(r['accuracy'][k], r['stderr'][k])}" for k in kinds)
        pairs = f"; ({','.join(kinds)}) pairs {r['score_pairs']}" if r["objects"] not in (0, 1, "all") else ""
        which = "all prompts" if r["objects"] == "all" else f"{r['objects']} object(s)"
        still = f" | still of frame {r['still']}" if "still" in r else ""
        print(f"{r['report']}{still} | {r['model']} [{r['setting']}] | {which}: {r['prompts']} prompts, "
              f"{r['clips']} clips: {accs}{pairs}")


if __name__ == "__main__":
    main()
