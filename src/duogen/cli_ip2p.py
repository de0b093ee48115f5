"""`duogen train ip2p`: fine-tune a trained AR or diffusion model into an InstructPix2Pix editor.

Owns the subcommand's argparse wiring and handler; the recipe is `train/ip2p_recipe.py`, editing with the
result is `duogen edit --method ip2p` (`bridges/edit/ip2p.py`). Does not import `duogen.cli`.
"""

from __future__ import annotations

import argparse
from typing import Any

from .cli_common import command, seed_flag
from .guards import add_overwrite_argument, add_resume_argument, add_trust_argument


def add_train_ip2p(train: Any) -> None:
    """Register `ip2p` in the `train` group."""

    def run(a: argparse.Namespace) -> dict[str, Any]:
        from .train.ip2p_recipe import train_ip2p

        return train_ip2p(a.data, a.out, paradigm=a.paradigm, init_from=a.init_from, overrides=a.overrides,
                          seed=seed_flag(a), resume=a.resume)

    p = command(
        train, "ip2p", "fine-tune a model into an InstructPix2Pix editor on edit pairs", run,
        description=(
            "Fine-tune a trained text-to-video model (--init-from; e.g. the shipped reference models) into an"
            " InstructPix2Pix editor on the edit pairs of `duogen data make edits`: AR models learn the edit"
            " layout [instruction][source clip] -> [edited clip] (a new <edit> task token); diffusion models read"
            " the source's latents as extra input channels, zero-initialised so that training starts at the base"
            " model. 5% of the examples drop the instruction, 5% the source, 5% both (drop=...), for the two"
            " guidance scales of `duogen edit --method ip2p`. Writes OUT/final, a model directory."
            "\n\nOverrides: train.* (steps, batch_size, lr, max_minutes (default 10), ...), drop, split, max_clips."
        ),
    )
    p.add_argument("--paradigm", required=True, choices=("ar", "diffusion"), help="the kind of model to fine-tune")
    p.add_argument("--data", required=True, help="edit pairs (from `duogen data make edits`)")
    p.add_argument("--init-from", required=True, metavar="MODEL_DIR", help="the trained model to start from")
    p.add_argument("--out", required=True, help="run directory")
    add_resume_argument(p)
    add_overwrite_argument(p)
    add_trust_argument(p)
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.max_minutes=5 train.batch_size=8")
