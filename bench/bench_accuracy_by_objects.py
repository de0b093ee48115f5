"""Probe accuracy of a `duogen compare` report split by the number of objects its prompts ask for.

    .venv/bin/python bench/bench_accuracy_by_objects.py REPORT [REPORT ...] [--kinds color,count] [--json]

Reads each REPORT/results.json (nothing is sampled again) and prints, per model and sampling setting,
the accuracy per kind over the clips of one-object prompts, of two-object prompts and so on (then of all
prompts: what the report shows), each with
its standard error (prompts as the units, `duogen.eval.metrics.accuracy_stderr`), and, for prompts of
two or more objects, how often each (color, count) score pair occurs: color 0.5 with count 0 is a clip
where the probes found one object of the two, in a color the prompt asked for.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import Any

from duogen.eval.compare import Prompt, grouped_accuracy


def by_objects(results: dict[str, Any], kinds: tuple[str, ...] = ("color", "count")) -> list[dict[str, Any]]:
    """One row per (model, setting, number of objects, then "all" prompts): clips, accuracy and error per kind
    (`duogen.eval.compare.grouped_accuracy`, what the report's table by objects shows), and the score pairs."""
    prompts = [Prompt(p.get("caption", ""), p.get("attributes") or [], p.get("split", "custom")) for p in results["prompts"]]
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
    a = ap.parse_args()
    kinds = tuple(k for k in a.kinds.split(",") if k)
    rows = []
    for rep in a.reports:
        path = Path(rep) / "results.json"
        if not path.is_file():
            raise SystemExit(f"error: {path}: no such file (pass a `duogen compare --out` directory)")
        rows += [{"report": rep, **r} for r in by_objects(json.loads(path.read_text()), kinds)]
    if a.json:
        print(json.dumps(rows, indent=2))
        return
    pct = lambda v, e: "-" if v is None else f"{100 * v:.1f}%" + ("" if e is None else f" ± {100 * e:.1f}")  # noqa: E731
    for r in rows:
        accs = ", ".join(f"{k} {pct(r['accuracy'][k], r['stderr'][k])}" for k in kinds)
        pairs = f"; ({','.join(kinds)}) pairs {r['score_pairs']}" if r["objects"] not in (0, 1, "all") else ""
        which = "all prompts" if r["objects"] == "all" else f"{r['objects']} object(s)"
        print(f"{r['report']} | {r['model']} [{r['setting']}] | {which}: {r['prompts']} prompts, "
              f"{r['clips']} clips: {accs}{pairs}")


if __name__ == "__main__":
    main()
