"""`duogen personalize`: teach a model a concept (LoRA, Textual Inversion, ... on either paradigm).

    duogen personalize --model runs/ar/final --concept data/star --token "<v1>" --method lora --out runs/star

Subcommands of the area (e.g. `duogen personalize analyze`) hang off `SUBCOMMANDS` (functions that take the
area's sub-parsers). Owns the argument wiring only; the procedures live in `duogen.bridges.personalize`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

from .cli_common import command, seed_or_override
from .cli_personalize_analyze import add_analyze
from .guards import add_overwrite_argument, add_resume_argument, add_trust_argument

# Each adds one subcommand to `duogen personalize` (its parser's sub-parsers object, dest "personalize_command").
SUBCOMMANDS: list[Callable[[Any], None]] = [add_analyze]


def _run(a: argparse.Namespace) -> dict[str, Any]:
    import warnings

    from .bridges.personalize import METHODS, personalize
    from .errors import ConfigError

    missing = [f"--{k}" for k in ("model", "concept", "out") if not getattr(a, k)]
    if missing:
        raise ConfigError(f"duogen personalize needs {', '.join(missing)} (see duogen personalize --help)")
    if a.method not in METHODS:
        raise ConfigError(f"unknown --method {a.method!r}; allowed values: {', '.join(METHODS)}")
    if a.shifts is not None and a.shifts < 1:
        raise ConfigError(f"--shifts is {a.shifts}; it counts each clip with its moved copies, so it is at least 1")
    settings: dict[str, Any] = {}
    for key in ("lr", "rank", "shifts"):
        if getattr(a, key, None) is not None:
            settings[key] = getattr(a, key)
    if a.init_word:
        settings["init_word"] = a.init_word
    if a.class_prompt:
        settings["class_prompt"] = a.class_prompt
    if a.prior_weight is not None:
        settings["prior_weight"] = a.prior_weight
    with warnings.catch_warnings(record=True) as caught:  # a fitted clip, a skipped file: one line each
        warnings.simplefilter("always")
        summary = personalize(a.method, a.model, a.concept, a.out, token=a.token, steps=a.steps,
                              max_minutes=a.max_minutes, seed=seed_or_override(a, a.set), resume=a.resume,
                              overrides=tuple(a.set),
                              **settings)
    notes = list(dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, UserWarning)
                               and any(k in str(w.message) for k in ("fitted", "skipped", "shifted"))))
    for note in notes:
        print(f"duogen: warning: {note}", file=sys.stderr)
    return {**summary, "warnings": notes}


def add_personalize(sub: Any) -> None:
    p = command(
        sub, "personalize", "teach a trained model a new concept from a few clips (LoRA, Textual Inversion, ...)", _run,
        description=(
            "Fine-tune a trained model (AR or diffusion: read from its config.json) on a concept's few clips"
            " whose captions hold a placeholder word, and write the result to OUT/final: a LoRA adapter in"
            " peft's format (adapter_config.json + adapter_model.safetensors) or a learned embedding"
            " (learned_embeds.safetensors). The base model directory is never modified; generate with"
            " `duogen generate --model BASE --adapter OUT[:weight]`.\n\n"
            "--concept is `duogen data make concept --kind star --out DIR` or your own folder in the"
            " `duogen data import` format (metadata.jsonl captions holding --token; clips of another size are"
            " fitted, with a warning).\n"
            "Methods: lora (rank-r updates of the attention and MLP projections: the Llama's, or the DiT's /"
            " U-Net's; the placeholder stays plain text), textual-inversion (a new embedding row for --token,"
            " initialised from --init-word, alone trains).\n"
            "Training runs through the model's recipe: a progress bar, checkpoints, --resume continues exactly,"
            " --max-minutes stops on time."
        ),
    )
    p.add_argument("--model", default=None, help="the base model directory (RUN/final of `duogen train ar|diffusion`)")
    p.add_argument("--concept", default=None, help="concept data set or folder (see above)")
    p.add_argument("--token", default="<v1>", help="the placeholder word in the captions")
    p.add_argument("--method", default="lora", help="lora | textual-inversion | dreambooth | custom (as installed)")
    p.add_argument("--out", default=None, help="run directory")
    p.add_argument("--init-word", default=None, help="textual-inversion: the word the new embedding starts from"
                   " (default: the concept's class word)")
    p.add_argument("--class-prompt", default=None, help="prior preservation: the class prompt (methods that use it)")
    p.add_argument("--prior-weight", type=float, default=None, help="prior preservation: the prior loss weight")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps (each sees every concept clip)")
    p.add_argument("--max-minutes", type=float, default=3.5,
                   help="training time budget in minutes (0 = none); loading, encoding and saving come on top")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the method's)")
    p.add_argument("--shifts", type=int, default=None,
                   help="train on each concept clip and SHIFTS - 1 copies with its object moved elsewhere in the frame"
                        " (default: 8 for an AR model, 1 for a diffusion model; 1 = the clips as they are). A few clips"
                        " whose object always sits at the same places teach those places: an AR model's LoRA then"
                        " draws the concept only in its clips' colors. Clips whose content fills the frame are"
                        " repeated, not moved (a warning says so)")
    p.add_argument("--rank", type=int, default=None,
                   help="lora: rank r (default: the largest within 1%% of the base's bytes)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a recipe override (repeatable), e.g. --set train.log_every=1")
    add_resume_argument(p)
    add_overwrite_argument(p)
    add_trust_argument(p)
    inner = p.add_subparsers(dest="personalize_command", metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(inner)
