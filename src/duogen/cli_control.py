"""`duogen train control` and the control flags of `duogen generate` (--control, --control-beta, --boxes, --mask, --edges).

Owns the argparse wiring and handler of `train control` (the recipe is `train/control_recipe.py`) and
`add_generate_control` / `control_kwargs`, which add the flags to `duogen generate` and turn them into the
generator's `controls=` / `condition=` (sampling with them: `bridges/control.py`). Does not import `duogen.cli`.
"""

from __future__ import annotations

import argparse
from typing import Any

from .cli_common import command, seed_flag
from .errors import ConfigError
from .guards import add_overwrite_argument, add_resume_argument


def add_train_control(train: Any) -> None:
    """Register `control` in the `train` group."""

    def run(a: argparse.Namespace) -> dict[str, Any]:
        from pathlib import Path

        from .io import read_json

        conf = read_json(Path(a.model) / "config.json")
        if isinstance(conf, dict) and conf.get("kind") == "ar":  # AR methods: train/ar_control_recipe.py
            from .train.ar_control_recipe import train_ar_control as train
        else:
            from .train.control_recipe import train_control as train
        return train(a.model, a.data, a.out, method=a.method, condition=a.condition, overrides=a.overrides,
                     seed=seed_flag(a), resume=a.resume)

    p = command(
        train, "control", "train a control for a trained model: ControlNet / T2I-Adapter / GLIGEN (diffusion),"
        " tokens / controlar (AR)", run,
        description=(
            "Train a spatial control for a trained model (--model, e.g. a shipped reference model); the condition"
            " comes from each clip's ground truth: boxes (the clip's boxes; GLIGEN and AR layout tokens also read each"
            " box's phrase, like 'a red circle'), mask (its objects) or edges (its Sobel edges). OUT/final holds only"
            " the control (control.safetensors, control.json naming the base); use it with"
            " `duogen generate --model DIR --control OUT --boxes FILE.json | --mask FILE | --edges FILE`."
            "\n\nDiffusion (a DiT or U-Net model), the base frozen: controlnet (a trainable copy of the DiT's first"
            " blocks or the U-Net's encoder, joined by zero-initialised projections), t2i-adapter (a small conv"
            " adapter whose features add to the first blocks' or the U-Net encoder's at each resolution), gligen (DiT"
            " only, boxes only: gated self-attention over the DiT's tokens and grounding tokens made of each box and"
            " its phrase, in every block)."
            "\n\nAR: tokens (VideoPoet's way): the condition goes into the prefix as tokens: a mask / edge video"
            " through the model's codec, or boxes as quantised coordinates (new vocabulary tokens) after each object's"
            " phrase; the model is fine-tuned (all of it by default; train.trainable=GLOBS to choose) and OUT/final"
            " holds only the tensors that differ from the base; generation steers the base by classifier-free"
            " guidance over the condition (scale 0 = the base). controlar (ControlAR's way): the base stays frozen;"
            " a small condition encoder gives one embedding per video token, added (zero-initialised, times the"
            " control's scale) to the hidden state that predicts that token after every k-th decoder layer."
            "\n\nOverrides: train.* (steps, batch_size, lr, max_minutes (default 10), ...), split, max_clips;"
            " diffusion: blocks (0: 2 for ControlNet / T2I-Adapter, every block for GLIGEN; a U-Net's ControlNet"
            " copies its whole encoder), enc_channels (32); AR tokens: bins (32), max_objects (2), phrase_tokens (6),"
            " drop (0.1, condition dropout), text_drop (0.1); AR controlar: every (2), enc_channels (32)."
        ),
    )
    p.add_argument("--model", required=True, metavar="DIR", help="the trained model (kept frozen, never written)")
    p.add_argument("--method", required=True, choices=("controlnet", "t2i-adapter", "gligen", "tokens", "controlar"),
                   help="diffusion: controlnet, t2i-adapter, gligen; AR: tokens (the condition as tokens in the"
                   " prefix), controlar (control embeddings added to the hidden states, the base frozen)")
    p.add_argument("--condition", required=True, choices=("boxes", "mask", "edges"))
    p.add_argument("--data", required=True, help="a shapes data set (`duogen data make shapes`) at the model's clip size")
    p.add_argument("--out", required=True, help="run directory")
    add_resume_argument(p)
    add_overwrite_argument(p)
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.max_minutes=5 train.batch_size=8")


def add_generate_control(p: Any) -> None:
    """The control flags of `duogen generate`."""
    p.add_argument("--control", action="append", default=[], metavar="RUN[:SCALE]",
                   help="a `duogen train control` run to steer with (repeatable, each at its scale, default 1);"
                   " AR and diffusion runs each on the kind of model they were trained for")
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
    if not given:
        raise ConfigError("--control needs a condition: --boxes FILE.json, --mask FILE or --edges FILE")
    return {"controls": list(a.control), "condition": given[0], **({"control_beta": beta} if beta != 1.0 else {})}
