"""`duogen classify` and `duogen eval zero-shot`: argument wiring and handlers (the logic lives in
`duogen.bridges.classify` and `duogen.eval.zero_shot`). Imports `cli_common`, never `cli.py`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .cli_common import command

_DIFFUSION_HELP = (
    "\n\nDiffusion models: Li et al. 2023's classifier. Every candidate is scored on the same (t, eps) samples"
    " (timesteps spread over the schedule, noise drawn from --seed); round r adds --trials[r] samples to every"
    " surviving candidate, then keeps the --keep[r] lowest mean denoising errors. AR models: the exact"
    " log-likelihood of the clip's codec tokens under each caption, one teacher-forced pass per candidate."
)


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 8,24, got {text!r}") from None


def _add_budget(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trials", type=_ints, default=(8, 24), help="diffusion: (t, eps) samples added per round, e.g. 8,24")
    p.add_argument("--keep", type=_ints, default=(3,), help="diffusion: candidates kept after each round but the last, e.g. 3")


def _budget(a: argparse.Namespace) -> Any:
    from .bridges.classify import DiffusionClassifyConfig

    return DiffusionClassifyConfig(trials=a.trials, keep=a.keep)


def add_classify(sub: Any) -> None:
    def run(a: argparse.Namespace) -> dict[str, Any] | None:
        import warnings

        from .bridges.classify import check_labels, classify, load_classifier, read_clip

        labels = check_labels(a.labels)  # before loading anything: bad labels fail fast
        clip = read_clip(a.input)
        gen = load_classifier(a.model)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = classify(gen, clip, labels, seed=a.seed, diffusion=_budget(a))
        notes = list(dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, UserWarning)))
        for note in notes:
            print(f"duogen: warning: {note}", file=sys.stderr)
        if a.json:
            return {**res.to_dict(), "warnings": notes}
        width = max(len(lab) for lab in res.labels)
        for i, (lab, s, k) in enumerate(zip(res.labels, res.scores, res.samples)):
            print(f"{i + 1:>2}. {lab:<{width}}  {s:.4f}" + (f"  ({k} samples)" if res.info["paradigm"] == "diffusion" else ""))
        print(f"({res.info['paradigm']}: {res.forward_passes} forward passes, {res.seconds:.2f} s; score = {res.info['score']})")
        return None

    p = command(
        sub, "classify", "rank candidate captions of a clip with a model (zero-shot classification)", run,
        description=(
            "Rank candidate captions (--labels) by how well each explains a clip (--input: any video or image"
            " file; fitted to the model's clip size with a warning) under an AR or a diffusion model, and print"
            " them best first with their scores (higher is better). --json gives {\"labels\": [...], \"scores\":"
            " [...]} best first, plus samples per label, forward passes and seconds." + _DIFFUSION_HELP
        ),
    )
    p.add_argument("--model", required=True, help="model directory (RUN/final) of an AR or a diffusion model")
    p.add_argument("--input", required=True, help="the clip: a video (.mp4, .gif, ...) or an image file")
    p.add_argument("--labels", nargs="+", required=True, help="two or more distinct candidate captions")
    _add_budget(p)


def add_eval_zero_shot(ev: Any) -> None:
    def run(a: argparse.Namespace) -> dict[str, Any]:
        from .eval.zero_shot import evaluate_zero_shot

        return evaluate_zero_shot(a.model, a.data, attribute=a.attribute, split=a.split, n=a.n, seed=a.seed,
                                  diffusion=_budget(a))

    p = command(
        ev, "zero-shot", "accuracy of a model as a zero-shot classifier on a shapes-world split", run,
        description=(
            "Classify a split's clips with a model: per attribute, the candidates are the world's canonical"
            " captions of each single-object clip with that attribute set to every value (color 7, shape 13,"
            " direction 9); binding asks each two-object clip's caption against the one with the objects'"
            " colors swapped (chance 50%); objects asks each two-object clip's caption against the caption of"
            " each of its objects alone (chance 1/3: does the score count the objects a caption names?)."
            " Reports accuracy beside chance and the supervised probes on the same clips, and forward passes"
            " and seconds per clip." + _DIFFUSION_HELP
        ),
    )
    p.add_argument("--model", required=True, help="model directory (RUN/final) of an AR or a diffusion model")
    p.add_argument("--data", required=True, help="data set directory (from `duogen data make shapes`)")
    p.add_argument("--attribute", default="all", choices=["color", "shape", "direction", "binding", "objects", "all"])
    p.add_argument("--split", default="validation", choices=["validation", "heldout", "train"])
    p.add_argument("--n", type=int, default=50, help="clips per attribute (the first suitable ones of the split)")
    _add_budget(p)
