"""A codec change judged by a model trained on top of it, over several codec seeds.

    .venv/bin/python bench/bench_codec_seeds.py --baseline preset \
        --run preset:c0=CMP_A --run preset:c0=CMP_B --run ent:c0=CMP_C ... [--json OUT.json]
    .venv/bin/python bench/bench_codec_seeds.py --baseline preset --files DIR/*.json   # VARIANT_cC_sS.json names

Each `--run VARIANT:CODEC=PATH` is one `duogen compare` of one model (a DiT or an AR model trained with one seed)
on the codec trained with seed CODEC of that variant: PATH is what the compare's `--json` printed, or the
results.json of `bench/bench_patch_ar.py` (which trains the demo's AR model and runs that compare). One codec run
draws its own latent space, and a generator trained on it inherits that draw, so two codec variants compared on one
codec seed each can differ by the codec seed alone. Here the unit is the codec:
each codec's accuracy is the mean over the models trained on it, each variant's the mean over its codecs, and a
variant is set against the baseline codec by codec (same CODEC label in both), the paired difference's standard
error taken over the codec seeds. The spread between the baseline's own codecs (its standard deviation) says how
much one codec seed moves the model on top. Prints a markdown table; `--json` writes the same numbers.

`--codec-stats FILE` (what `bench/bench_latent_contrast.py` printed, with codecs named VARIANT_cC) asks which
property of a codec goes with a better model on top: over every codec that has both, the rank correlation
(Spearman) between the codec's mean accuracy and each of its properties (code perplexity and usage over all cells,
object cells and background cells; objects' distance from the background), with a two-sided permutation p-value.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path
from typing import Any

from duogen.eval.metrics import standard_error

ATTRIBUTES = ("color", "count", "direction", "shape", "two-object color")


def read_accuracy(path: str | Path) -> dict[str, float]:
    """One model's accuracies, from what `duogen compare --json` printed or from `bench/bench_patch_ar.py`'s
    results.json: the attributes, and color on two-object prompts."""
    doc = json.loads(Path(path).read_text())
    if isinstance(doc, dict) and "headline" in doc:  # duogen compare --json
        heads = doc["headline"]
        acc_of, two_of = (lambda h: h["accuracy"]), (lambda h: h.get("accuracy_by_objects", {}).get("2", {}))
    elif isinstance(doc, dict) and isinstance(doc.get("models"), dict):  # bench_patch_ar.py
        heads = doc["models"]
        acc_of = lambda h: h["accuracy"]["all"]  # noqa: E731
        two_of = lambda h: h.get("accuracy_by_objects", {}).get("2", {}).get("accuracy", {})  # noqa: E731
    else:
        raise ValueError(f"{path}: neither `duogen compare --json` output nor a bench_patch_ar.py results.json")
    if len(heads) != 1:
        raise ValueError(f"{path}: wants the scores of one model, found {sorted(heads) or 'none'}")
    h = next(iter(heads.values()))
    acc = {k: float(acc_of(h)[k]) for k in ATTRIBUTES if k in acc_of(h)}
    if "color" in two_of(h):
        acc["two-object color"] = float(two_of(h)["color"])
    return acc


def _codec_order(label: str) -> tuple[int, str]:
    return len(label), label  # c2 before c10


def summarize(runs: dict[str, dict[str, list[dict[str, float]]]], baseline: str) -> dict[str, Any]:
    """runs[variant][codec] = each model's accuracies -> per-codec means, per-variant means, and each variant's
    paired difference from `baseline` over the codecs both have (mean and standard error, in accuracy units)."""
    if baseline not in runs:
        raise ValueError(f"baseline {baseline!r} has no runs (variants: {sorted(runs)})")
    per_codec = {v: {c: {a: statistics.fmean(m[a] for m in models) for a in ATTRIBUTES if all(a in m for m in models)}
                     for c, models in codecs.items()} for v, codecs in runs.items()}
    out: dict[str, Any] = {"baseline": baseline, "variants": {}}
    for v, codecs in sorted(per_codec.items(), key=lambda kv: kv[0] != baseline):
        attrs = [a for a in ATTRIBUTES if all(a in acc for acc in codecs.values())]
        order = sorted(codecs, key=_codec_order)
        row: dict[str, Any] = {"codecs": {c: {a: round(codecs[c][a], 4) for a in attrs} for c in order},
                               "models": {c: len(runs[v][c]) for c in order},
                               "mean": {a: round(statistics.fmean(codecs[c][a] for c in order), 4) for a in attrs},
                               "codec_sd": {a: (round(statistics.stdev([codecs[c][a] for c in order]), 4)
                                                if len(order) > 1 else None) for a in attrs}}
        shared = sorted(set(codecs) & set(per_codec[baseline]), key=_codec_order)
        if v != baseline:
            if not shared:
                raise ValueError(f"variant {v!r} shares no codec seed with the baseline {baseline!r}")
            diff = {}
            for a in attrs:
                if all(a in per_codec[baseline][c] for c in shared):
                    d = [codecs[c][a] - per_codec[baseline][c][a] for c in shared]
                    m, se = statistics.fmean(d), standard_error(d)
                    diff[a] = {"mean": round(m, 4), "stderr": None if se is None else round(se, 4)}
            row["paired"] = {"codecs": shared, **diff}
        out["variants"][v] = row
    return out


def format_table(s: dict[str, Any]) -> str:
    def pts(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}"

    base = s["baseline"]
    attrs = list(s["variants"][base]["mean"])
    lines = ["| variant | codec: models | " + " | ".join(attrs) + " |", "| --- | --- |" + " --- |" * len(attrs)]
    for v, row in s["variants"].items():
        for c, acc in row["codecs"].items():
            lines.append(f"| {v} | {c}: {row['models'][c]} | " + " | ".join(pts(acc.get(a)) for a in attrs) + " |")
        lines.append(f"| {v} | mean (sd over codecs) | "
                     + " | ".join(f"{pts(row['mean'].get(a))} ({pts(row['codec_sd'].get(a))})" for a in attrs) + " |")
        if "paired" in row:
            p = row["paired"]
            lines.append(f"| {v} - {base} | paired over codecs {' '.join(p['codecs'])} | "
                         + " | ".join(f"{pts(p[a]['mean'])} +- {pts(p[a]['stderr'])}" if a in p else "-" for a in attrs)
                         + " |")
    return "\n".join(lines)


CODEC_STATS = {
    "perplexity": ("codes", "all", "perplexity"), "usage": ("codes", "all", "usage"),
    "object perplexity": ("codes", "objects", "perplexity"), "object usage": ("codes", "objects", "usage"),
    "background perplexity": ("codes", "background", "perplexity"),
    "background usage": ("codes", "background", "usage"), "contrast": ("object_to_background_ratio",),
}


def _ranks(xs: list[float]) -> list[float]:
    """Ranks from 1, ties sharing their mean rank."""
    from scipy.stats import rankdata

    return [float(r) for r in rankdata(xs, method="average")]


def spearman(x: list[float], y: list[float], permutations: int = 10000, seed: int = 0) -> tuple[float, float]:
    """Spearman's rank correlation of x and y, and the share of `permutations` shuffles of y whose |rho| is at
    least as large (two-sided p-value; seeded, so the same inputs give the same p)."""
    import random

    if len(x) != len(y) or len(x) < 3:
        raise ValueError(f"a rank correlation wants three or more pairs, got {min(len(x), len(y))}")
    rx, ry = _ranks(x), _ranks(y)
    if len(set(rx)) == 1 or len(set(ry)) == 1:
        return float("nan"), float("nan")
    rho = statistics.correlation(rx, ry)
    rng, shuffled, hits = random.Random(seed), list(ry), 0
    for _ in range(permutations):
        rng.shuffle(shuffled)
        hits += abs(statistics.correlation(rx, shuffled)) >= abs(rho) - 1e-12
    return rho, hits / permutations


def _codec_stat(doc: dict[str, Any], keys: tuple[str, ...]) -> float:
    for k in keys:
        doc = doc[k]
    return float(doc)


def codec_correlations(s: dict[str, Any], stats: dict[str, Any]) -> dict[str, Any]:
    """summarize()'s per-codec means and bench_latent_contrast's figures per codec (named VARIANT_cC) -> for each
    attribute and codec property, Spearman's rho and its permutation p over the codecs that have both."""
    pairs = [(row["codecs"][c], stats[f"{v}_{c}"]) for v, row in s["variants"].items() for c in row["codecs"]
             if f"{v}_{c}" in stats]
    if len(pairs) < 3:
        raise ValueError(f"--codec-stats names {len(pairs)} of the runs' codecs (VARIANT_cC); a correlation wants 3+")
    out: dict[str, Any] = {"codecs": len(pairs), "attributes": {}}
    for a in ATTRIBUTES:
        if not all(a in acc for acc, _ in pairs):
            continue
        out["attributes"][a] = {}
        for name, keys in CODEC_STATS.items():
            rho, p = spearman([acc[a] for acc, _ in pairs], [_codec_stat(st, keys) for _, st in pairs])
            out["attributes"][a][name] = {"rho": round(rho, 3), "p": round(p, 4)}
    return out


def format_correlations(c: dict[str, Any]) -> str:
    names = list(CODEC_STATS)
    lines = [f"Spearman's rho (permutation p) over {c['codecs']} codecs:", "",
             "| attribute | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
    for a, row in c["attributes"].items():
        lines.append(f"| {a} | " + " | ".join(f"{row[n]['rho']:+.2f} ({row[n]['p']:.3f})" for n in names) + " |")
    return "\n".join(lines)


_NAME = re.compile(r"^(?P<variant>.+?)_c(?:odec)?(?P<codec>\d+)_s(?:eed)?\d+\.json$")


def parse_file(path: str) -> tuple[str, str, str]:
    """A file named VARIANT_cC_sS.json (or VARIANT_codecC_seedS.json: bench_patch_ar runs) -> (VARIANT, cC, path)."""
    m = _NAME.match(Path(path).name)
    if not m:
        raise ValueError(f"{path}: --files wants names VARIANT_cC_sS.json or VARIANT_codecC_seedS.json")
    return m["variant"], f"c{m['codec']}", path


def parse_run(spec: str) -> tuple[str, str, str]:
    head, eq, path = spec.partition("=")
    variant, colon, codec = head.partition(":")
    if not (eq and colon and variant and codec and path):
        raise ValueError(f"--run wants VARIANT:CODEC=PATH, got {spec!r}")
    return variant, codec, path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", action="append", default=[], metavar="VARIANT:CODEC=PATH",
                    help="one compare of one model on codec CODEC of VARIANT (repeatable)")
    ap.add_argument("--files", nargs="+", default=[], metavar="FILE",
                    help="runs named VARIANT_cC_sS.json or VARIANT_codecC_seedS.json (variant, codec seed, model seed)")
    ap.add_argument("--baseline", required=True, help="the variant the others are paired against")
    ap.add_argument("--codec-stats", metavar="FILE",
                    help="bench_latent_contrast.py's JSON, codecs named VARIANT_cC: rank-correlate each codec's mean "
                         "accuracy with its code perplexity, usage and contrast")
    ap.add_argument("--json", help="also write the numbers here")
    a = ap.parse_args(argv)
    if not (a.run or a.files):
        ap.error("give runs with --run or --files")
    runs: dict[str, dict[str, list[dict[str, float]]]] = {}
    try:
        for variant, codec, path in [parse_run(r) for r in a.run] + [parse_file(f) for f in a.files]:
            runs.setdefault(variant, {}).setdefault(codec, []).append(read_accuracy(path))
        s = summarize(runs, a.baseline)
        if a.codec_stats:
            s["codec_correlations"] = codec_correlations(s, json.loads(Path(a.codec_stats).read_text()))
    except (ValueError, OSError, KeyError) as e:
        sys.exit(f"error: {e}")
    print(format_table(s))
    if "codec_correlations" in s:
        print("\n" + format_correlations(s["codec_correlations"]))
    if a.json:
        Path(a.json).write_text(json.dumps(s, indent=1) + "\n")


if __name__ == "__main__":
    main()
