"""Small file helpers that the comparison and its report share (kept here so that neither imports the other).

Owns: `slug` (a file-name-safe form of a label) and `read_metrics` (the engine's
metrics.jsonl as rows). Does not own: sampling or scoring (`compare.py`), the
HTML page (`report.py`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any


def slug(text: str) -> str:
    """A file-name-safe form of a label ("DDIM 50 (ref)" -> "ddim-50-ref")."""
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return s or "x"


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The engine's metrics.jsonl as a list of dicts (an absent file gives [])."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by a kill; the rest is still good
    return rows
