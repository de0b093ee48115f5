"""`duogen train control` and the control flags of `duogen generate` (--control, --control-beta, --boxes, --mask, --edges).

Owns the argparse wiring and handler of `train control` (the recipe is `train/control_recipe.py`) and
`add_generate_control` / `control_kwargs`, which add the flags to `duogen generate` and turn them into the
generator's `controls=` / `condition=` (sampling with them: `bridges/control.py`). Does not import `duogen.cli`.
"""

from __future__ import annotations

import argparse
from typing import Any

from .cli_common import command
from .errors import ConfigError
from .guards import add_overwrite_argument, add_resume_argument


def add_train_control(train: Any) -> None:
    """Register `control` in the `train` group."""

    def run(a: argparse.Namespace) -> dict[str, Any]:
        from .train.control_recipe import train_control

        return train_control(a.model, a.data, a.out, method=a.method, condition=a.condition, overrides=a.overrides,
                             seed=a.seed, resume=a.resume)

    p = command(
        train, "control", "train a ControlNet, T2I-Adapter or GLIGEN for a trained diffusion model (the base frozen)", run,
        description=(
            "Train a spatial control for a trained DiT diffusion model (--model, e.g. the shipped reference DiT),"
            " the base frozen: ControlNet (a trainable copy of the DiT's first blocks joined by zero-initialised"
            " projections), T2I-Adapter (a small conv adapter whose features add to the first blocks') or GLIGEN"
            " (gated self-attention over the DiT's tokens and grounding tokens made of each box and its phrase, in"
            " every block; boxes only). The condition comes from each clip's ground truth: boxes (the clip's boxes"
            " rasterised; for GLIGEN the boxes with phrases like 'a red circle'), mask (its objects) or edges (its"
            " Sobel edges). OUT/final holds only the control (control.safetensors, control.json naming the base);"
            " use it with `duogen generate --model DIR --control OUT --boxes FILE.json`."
            "\n\nOverrides: train.* (steps, batch_size, lr, max_minutes (default 10), ...), blocks (0: 2 for"
            " ControlNet / T2I-Adapter, every block for GLIGEN),"
            " enc_channels (32), split, max_clips."
        ),
    )
    p.add_argument("--model", required=True, metavar="DIR", help="the trained diffusion model (kept frozen, never written)")
    p.add_argument("--method", required=True, choices=("controlnet", "t2i-adapter", "gligen"))
    p.add_argument("--condition", required=True, choices=("boxes", "mask", "edges"))
    p.add_argument("--data", required=True, help="a shapes data set (`duogen data make shapes`) at the model's clip size")
    p.add_argument("--out", required=True, help="run directory")
    add_resume_argument(p)
    add_overwrite_argument(p)
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.max_minutes=5 train.batch_size=8")


def add_generate_control(p: Any) -> None:
    """The control flags of `duogen generate`."""
    p.add_argument("--control", action="append", default=[], metavar="RUN[:SCALE]",
                   help="diffusion: a `duogen train control` run to steer with (repeatable, each at its scale, default 1)")
    p.add_argument("--control-beta", type=float, default=1.0, metavar="B",
                   help="diffusion: the controls act only in the first B of the sampling steps, in (0, 1] (GLIGEN's"
                   " scheduled sampling, Sec. 3.3: the paper grounds the layout early and lets the base finish the"
                   " details, e.g. B = 0.3; default 1 = every step, as the control was trained)")
    cond = p.add_mutually_exclusive_group()
    cond.add_argument("--boxes", default=None, metavar="FILE.json",
                      help='the controls\' condition: [{"phrase": ..., "boxes": [[x0, y0, x1, y1], ...]}], one box per'
                      " frame, pixels of the model's frame size")
    cond.add_argument("--mask", default=None, metavar="FILE", help="the controls' condition: a segmentation video")
    cond.add_argument("--edges", default=None, metavar="FILE", help="the controls' condition: edges of this clip")


def control_kwargs(a: argparse.Namespace) -> dict[str, Any]:
    """--control / --boxes / --mask / --edges -> the generator's keywords (none when no control is given)."""
    from pathlib import Path

    from .io import read_json

    given = [(k, getattr(a, k)) for k in ("boxes", "mask", "edges") if getattr(a, k, None)]
    beta = getattr(a, "control_beta", 1.0)
    if not 0.0 < beta <= 1.0:
        raise ConfigError(f"--control-beta {beta:g}: the fraction of sampling steps the controls act in is in (0, 1]")
    if beta != 1.0 and not a.control:
        raise ConfigError("--control-beta sets when the controls act: give --control RUN too")
    if not a.control:
        if given:
            raise ConfigError(f"--{given[0][0]} is a control's condition: give --control RUN too")
        return {}
    conf = read_json(Path(a.model) / "config.json")
    if isinstance(conf, dict) and conf.get("kind") == "ar":
        raise ConfigError("--control: control for AR models is not built yet; use a diffusion (DiT) model")
    if not given:
        raise ConfigError("--control needs a condition: --boxes FILE.json, --mask FILE or --edges FILE")
    return {"controls": list(a.control), "condition": given[0], **({"control_beta": beta} if beta != 1.0 else {})}
