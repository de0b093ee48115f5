"""How `generated_data.run_generated_data`'s results are shown: the text table, the PNG plot, the report section.

Owns: `table_rows`, `format_table`, `write_plot` (accuracy per arm per evaluation split, mean and spread
over seeds), `write_section` (the JSON `duogen compare --section` renders, `report.load_section`'s format).
Does not own: the experiment (`generated_data.py`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SPLIT_LABELS = {"validation": "validation", "heldout": "held-out compositions", "corrupted": "corrupted (mean of 3)"}
COLUMNS = ["arm", "training data", "validation", "held-out", "corrupted", "seeds", "steps x batch"]


def _pm(arm: dict[str, Any], split: str) -> str:
    return f"{100 * arm['mean'][split]:.1f} +- {100 * arm['std'][split]:.1f}"


def _describe(name: str, arm: dict[str, Any]) -> str:
    if len(arm["pools"]) == 1:
        return f"{arm['pools'][0]} clips only" if name != "real" else "real clips"
    return " + ".join(f"{round(100 * s)}% {p}" for p, s in zip(arm["pools"], arm["shares"]))


def table_rows(res: dict[str, Any]) -> list[list[Any]]:
    """One row per arm: accuracy (%) mean +- std over seeds on each evaluation split."""
    return [[name, _describe(name, a), _pm(a, "validation"), _pm(a, "heldout"), _pm(a, "corrupted"),
             len(a["seeds"]), f"{a['steps']} x {a['batch_size']}"] for name, a in res["arms"].items()]


def corruption_rows(res: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """Columns and one row per arm: accuracy (%) mean +- std over seeds under each corruption."""
    import numpy as np

    kinds = list(res["runs"][0]["corrupted_by_kind"]) if res["runs"] else []
    rows = []
    for name in res["arms"]:
        runs = [r for r in res["runs"] if r["arm"] == name]
        cells = []
        for k in kinds:
            v = 100 * np.asarray([r["corrupted_by_kind"][k] for r in runs])
            cells.append(f"{v.mean():.1f} +- {v.std(ddof=1) if len(v) > 1 else 0.0:.1f}")
        rows.append([name, *cells])
    return ["arm", *kinds], rows


def format_table(res: dict[str, Any]) -> str:
    return _text_table(COLUMNS, table_rows(res)) + "\n\n" + _text_table(*corruption_rows(res))


def _text_table(columns: list[str], body: list[list[Any]]) -> str:
    rows = [columns] + [[str(c) for c in r] for r in body]
    widths = [max(len(r[i]) for r in rows) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def target_lines(res: dict[str, Any]) -> list[str]:
    out = []
    for m, t in res["targets"].items():
        gain = t["mix_gain_points"]
        out.append(f"{m}: generated-only / real on validation = {100 * t['gen_over_real_validation']:.1f}% (target >= 90%:"
                   f" {'met' if t['gen_only_met'] else 'not met'}); real+{m} - real = {gain['corrupted']:+.1f} points"
                   f" corrupted, {gain['heldout']:+.1f} held-out (target >= +3 on either: {'met' if t['mix_met'] else 'not met'})")
    for m, g in res["models"].items():
        line = (f"{m}: {g['clips']} generated clips, {g['objects_found']}/{g['objects_asked']} prompt objects found by"
                f" color, the packaged probe reads the prompt's shape in {100 * g['label_agreement']:.1f}% of objects")
        if "pseudo_agrees_with_prompt" in g:
            line += f"; pseudo-labels agree with the prompt on {100 * g['pseudo_agrees_with_prompt']:.1f}%"
        out.append(line)
    return out


def write_plot(res: dict[str, Any], path: str | Path) -> Path:
    """Grouped bars: accuracy per arm (bars) per evaluation split (groups), error bars = std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    splits = list(SPLIT_LABELS)
    arms = list(res["arms"])
    x = np.arange(len(splits))
    w = 0.8 / max(1, len(arms))
    fig, ax = plt.subplots(figsize=(max(7.0, 1.2 * len(arms) + 5), 4))
    for i, name in enumerate(arms):
        a = res["arms"][name]
        ax.bar(x + (i - (len(arms) - 1) / 2) * w, [100 * a["mean"][s] for s in splits], w,
               yerr=[100 * a["std"][s] for s in splits], capsize=3, label=name)
    ax.set_xticks(x, [SPLIT_LABELS[s] for s in splits])
    ax.set_ylabel("shape accuracy (% of objects)")
    ax.set_ylim(0, 100)
    ax.axhline(100 / 13, color="gray", lw=0.8, ls="--", label="chance (1/13)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    c = res["config"]
    ax.set_title(f"shape CNN by training data ({c['steps']} steps x {c['batch_size']}, {c['seeds']} seeds)", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_section(res: dict[str, Any], path: str | Path, command: str | None = None) -> Path:
    """The report section (`duogen compare --section PATH`): the table, the plot, the targets."""
    from ..io import atomic_write_text

    c = res["config"]
    sec = {
        "title": "Generated data for a more robust shape classifier (Gowal et al. 2021)",
        "intro": (f"The world's shape CNN trained on {c['n_real']} real train clips, on {c['n_generated']} clips"
                  " generated from train captions (labels: "
                  + ("the prompts' shapes" if c.get("labels", "prompt") == "prompt" else
                     "pseudo-labels from the real-only classifier") + "), and on both"
                  f" ({round(100 * c['ratio'])}% generated per batch); every arm {c['steps']} steps x"
                  f" {c['batch_size']} crops, {c['seeds']} seeds. Accuracy (%) per object on {c['n_eval']} real"
                  f" validation clips, {c['n_eval']} held-out-composition clips, and the validation clips under"
                  f" Gaussian noise, blur and color shift at severity {c['severity']}."),
        "tables": [{"caption": "shape accuracy (%), mean +- std over seeds", "columns": COLUMNS,
                    "rows": table_rows(res)},
                   {"caption": f"accuracy (%) on the validation clips under each corruption, severity {c['severity']}",
                    "columns": corruption_rows(res)[0], "rows": corruption_rows(res)[1]}],
        "plots": ["accuracy.png"],
        "notes": " ".join(target_lines(res)),
        "command": command or res.get("command", ""),
    }
    path = Path(path)
    atomic_write_text(path, json.dumps(sec, indent=2))
    return path
