"""`duogen eval generated-data`: argparse wiring and the handler (the experiment is `eval/generated_data.py`).

Registered in `cli.py`'s `_add_eval` with one call; imports `cli_common`, never `cli.py`.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

from .cli_common import command
from .guards import add_overwrite_argument


def _run(a: argparse.Namespace) -> dict[str, Any]:
    from .errors import ConfigError
    from .eval.generated_data import GeneratedDataConfig, check_generator_dir, load_world, run_generated_data
    from .eval.generated_data_report import format_table, target_lines
    from .guards import claim_output

    if not a.ar and not a.diffusion:
        raise ConfigError("give a generator: --ar DIR and/or --diffusion DIR")
    cfg = GeneratedDataConfig(n_real=a.n_real, n_generated=a.n_generated, ratio=a.ratio, steps=a.steps,
                              batch_size=a.batch_size, seeds=a.seeds, seed=a.seed, n_eval=a.n_eval,
                              severity=a.severity, guidance=a.guidance, diffusion_steps=a.diffusion_steps,
                              labels=a.labels)
    cfg.check()  # every bad input is refused before anything is written
    models = {}
    if a.ar:
        check_generator_dir(a.ar, "ar")
        models["ar"] = ("ar", a.ar)
    if a.diffusion:
        check_generator_dir(a.diffusion, "diffusion")
        models["dit"] = ("diffusion", a.diffusion)
    load_world(a.data)
    cmd = "duogen " + " ".join(shlex.quote(w) for w in sys.argv[1:]) if sys.argv[1:] else ""
    with claim_output(a.out, overwrite=a.overwrite, command="duogen eval generated-data"):
        res = run_generated_data(models, a.data, a.out, cfg, cache_dir=a.cache, command=cmd)
    if not a.json:
        print(format_table(res))
        print("\n".join(target_lines(res)))
    return {"out": a.out, "results": f"{a.out}/results.json", "plot": f"{a.out}/accuracy.png",
            "section": f"{a.out}/section.json", "targets": res["targets"], "skipped": res["skipped"],
            "seconds": res["seconds"]}


def add_eval_generated_data(ev: Any) -> None:
    """`eval generated-data` under the `eval` group."""
    p = command(
        ev, "generated-data", "train the shape classifier on real, generated and mixed clips; test robustness", _run,
        description=(
            "Generated data for a more robust classifier (Gowal et al. 2021) on the shapes world. Trains the"
            " world's shape CNN (the probe's) on (a) real train clips, (b) clips each model generates from train"
            " captions (labelled by the prompt's shapes), (c) real plus generated with --ratio generated per batch,"
            " every arm with the same steps and batch, over --seeds seeds; scores each on real validation clips,"
            " held-out compositions and corrupted validation clips (Gaussian noise, blur, color shift at"
            " --severity). Writes OUT/results.json, OUT/accuracy.png and OUT/section.json (for"
            " `duogen compare --section`). Generated clips are cached as npz under --cache, so reruns only train."
        ),
    )
    p.add_argument("--ar", default=None, help="AR model directory (RUN/final)")
    p.add_argument("--diffusion", default=None, help="diffusion model directory (RUN/final)")
    p.add_argument("--data", required=True, help="shapes world (train / validation / heldout splits)")
    p.add_argument("--out", required=True, help="output directory")
    add_overwrite_argument(p)
    p.add_argument("--cache", default=None, help="generated-clip cache folder; None: OUT/../.cache/generated-data")
    p.add_argument("--n-real", type=int, default=500, help="real train clips (the first of the split)")
    p.add_argument("--n-generated", type=int, default=512, help="generated clips per model")
    p.add_argument("--ratio", type=float, default=0.5, help="share of generated examples per batch in the mixed arms, (0, 1]")
    p.add_argument("--steps", type=int, default=800, help="training steps per arm (the same for every arm)")
    p.add_argument("--batch-size", type=int, default=128, help="crops per training step")
    p.add_argument("--seeds", type=int, default=3, help="training seeds per arm (mean and std reported)")
    p.add_argument("--labels", default="prompt", choices=["prompt", "pseudo"],
                   help="generated crops' labels: the prompt's shape, or pseudo-labels from the classifier trained on"
                   " the real clips alone (Gowal et al.'s labelling)")
    p.add_argument("--n-eval", type=int, default=400, help="clips per evaluation split")
    p.add_argument("--severity", type=int, default=3, help="corruption severity, 1 (mild) to 5")
    p.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance when generating")
    p.add_argument("--diffusion-steps", type=int, default=20, help="DPM-Solver++ steps when generating")
