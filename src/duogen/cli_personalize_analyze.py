"""`duogen personalize analyze BASE TUNED --out DIR`: which weights a fine-tune moved (Delta_l per layer).

Owns the argument wiring only; the computation lives in `duogen.bridges.personalize.analyze`. Registered as
one of `cli_personalize.SUBCOMMANDS`.
"""

from __future__ import annotations

import argparse
from typing import Any

from .cli_common import command
from .guards import add_overwrite_argument


def _analyze(a: argparse.Namespace) -> dict[str, Any]:
    from .bridges.personalize.analyze import analyze

    return analyze(a.base, a.tuned, a.out)


def add_analyze(sub: Any) -> None:
    p = command(
        sub, "analyze", "weight change per layer after a fine-tune: Delta_l = ||theta' - theta|| / ||theta||", _analyze,
        description=(
            "Compare a fine-tuned model (a full model directory, or a delta such as a DreamBooth or Custom"
            " Diffusion run's final/) with its base, layer by layer (a module's weight and bias together; the"
            " denoisers' fused to_kv split into K and V), for either paradigm. Writes OUT/analyze.json (every"
            " layer, and mean / max per layer type: attention q/k/v/o, cross-attention q/k/v/o, MLP, norms,"
            " embeddings, output head, ...) and OUT/delta_by_type.png (the lecture's figure: which layers move"
            " most). A delta made over other weights than BASE is refused.\n\n"
            "example:\n  duogen personalize analyze src/duogen/assets/reference/dit runs/db/final --out out/delta"),
    )
    p.add_argument("base", help="the base model directory")
    p.add_argument("tuned", help="the fine-tuned model directory (full or a delta over BASE)")
    p.add_argument("--out", required=True, help="output directory (analyze.json, delta_by_type.png)")
    add_overwrite_argument(p)
