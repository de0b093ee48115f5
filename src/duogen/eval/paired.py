"""Two `duogen compare` runs on the same prompts and seeds, model against model: paired differences.

Each run's results.json keeps every clip's probe reading (`per_clip_accuracy`: prompts x samples). When both runs
drew the same prompts with the same seeds, the fair question is per prompt: how much more often does the new model
draw the attribute than the old one on that prompt? The mean of those differences over the prompts, with its
standard error (prompts as the units, as `compare` reports each accuracy), is far tighter than the difference of
two accuracies whose errors are taken apart: a prompt that is hard for one model is usually hard for the other.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .metrics import standard_error

ATTRIBUTES = ("color", "direction", "shape", "count")


def load_results(path: str | Path) -> dict[str, Any]:
    """A compare run's results.json, given the file or the run's folder."""
    p = Path(path)
    p = p / "results.json" if p.is_dir() else p
    if not p.is_file():
        raise ConfigError(f"{path}: no results.json of `duogen compare` there")
    return json.loads(p.read_text())


def _settings(results: dict[str, Any], name: str, where: str) -> dict[str, dict[str, Any]]:
    for m in results["models"]:
        if m["name"] == name:
            return {s["label"]: s for s in m["settings"]}
    raise ConfigError(f"{where}: no model named {name!r} (it has {', '.join(m['name'] for m in results['models'])})")


def _per_prompt(setting: dict[str, Any], attribute: str) -> list[float]:
    return [sum(c[attribute] for c in clips) / len(clips) for clips in setting["per_clip_accuracy"]]


def paired_differences(new: dict[str, Any], old: dict[str, Any], pairs: list[tuple[str, str]] | None = None
                       ) -> list[dict[str, Any]]:
    """One row per (model pair, sampling setting both have): each attribute's accuracy in both runs and the mean
    per-prompt difference new - old with its standard error. `pairs` are (new name, old name); default: every
    model name the two runs share. Refused unless both runs drew the same prompts, samples and seed."""
    for key in ("prompts", "n", "seed"):
        if new.get(key) != old.get(key):
            raise ConfigError(f"the two runs differ in {key}: a paired comparison needs the same prompts, samples and"
                              " seed (run `duogen compare` with the same --data, --per-split, --n and --seed)")
    if pairs is None:
        names = {m["name"] for m in old["models"]}
        pairs = [(m["name"], m["name"]) for m in new["models"] if m["name"] in names]
        if not pairs:
            raise ConfigError("the two runs share no model name: name the pairs (NEW=OLD)")
    rows = []
    for new_name, old_name in pairs:
        a, b = _settings(new, new_name, "new run"), _settings(old, old_name, "old run")
        if not set(a) & set(b):
            raise ConfigError(f"{new_name} ({', '.join(a)}) and {old_name} ({', '.join(b)}) share no sampling setting")
        for label in (lab for lab in a if lab in b):
            row: dict[str, Any] = {"new": new_name, "old": old_name, "sampling": label}
            for attr in ATTRIBUTES:
                pa, pb = _per_prompt(a[label], attr), _per_prompt(b[label], attr)
                d = [x - y for x, y in zip(pa, pb)]
                mean = sum(d) / len(d)
                se = standard_error(d)
                row[attr] = {"new": sum(pa) / len(pa), "old": sum(pb) / len(pb), "diff": mean, "stderr": float("nan") if se is None else se}
            row["fpd"] = {"new": a[label].get("frechet_probe_distance"), "old": b[label].get("frechet_probe_distance")}
            rows.append(row)
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    """A markdown table: per attribute new / old (difference +- standard error), in percent."""
    head = "| new | old | sampling | " + " | ".join(ATTRIBUTES) + " | Frechet probe distance |"
    lines = [head, "|" + " --- |" * (4 + len(ATTRIBUTES))]
    for r in rows:
        cells = [f"{100 * r[a]['new']:.1f} / {100 * r[a]['old']:.1f} ({100 * r[a]['diff']:+.1f} +- "
                 f"{100 * r[a]['stderr']:.1f})" for a in ATTRIBUTES]
        fpd = r["fpd"]
        f = f"{fpd['new']:.2f} / {fpd['old']:.2f}" if None not in (fpd["new"], fpd["old"]) else "-"
        lines.append(f"| {r['new']} | {r['old']} | {r['sampling']} | " + " | ".join(cells) + f" | {f} |")
    return "\n".join(lines)
