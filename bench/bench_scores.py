"""Do per-example scores carry the caption? Pick the true caption of a shapes-world clip among its variants.

    .venv/bin/python bench/bench_scores.py [--ar DIR] [--diffusion DIR] [--n 24] [--timesteps 8]

For each single-object validation clip of the tiny world, the candidates are its canonical caption with
the attribute replaced by every value the world has (colors, or motions), the true one among them. Both
models rank them through `duogen.bridges.classify.classify`, the zero-shot classifier: the AR model by
`MultimodalLM.score` (log-likelihood of the clip's codec ids under each caption); the diffusion model by the
mean of `LatentDiffusionModel.loss_per_example` over `--timesteps` (t, eps) samples shared by every
candidate, with no pruning (one round; `bench/bench_zero_shot.py` measures the pruned classifier).
Chance is 1 / candidates. Defaults: the shipped reference models (duogen/assets/reference). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

REFERENCE = Path(__file__).resolve().parent.parent / "src" / "duogen" / "assets" / "reference"


def main() -> None:
    from duogen.bridges.classify import DiffusionClassifyConfig, classify, load_classifier
    from duogen.data.shapes import load_world_config, make_clip
    from duogen.eval.zero_shot import attribute_candidates

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ar", default=str(REFERENCE / "ar"))
    ap.add_argument("--diffusion", default=str(REFERENCE / "dit"))
    ap.add_argument("--n", type=int, default=24, help="single-object validation clips")
    ap.add_argument("--timesteps", type=int, default=8, help="diffusion: (t, eps) samples averaged per candidate")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    cfg = load_world_config("tiny")
    clips = [c for c in (make_clip(cfg, "validation", i) for i in range(4 * args.n)) if len(c.attributes) == 1][: args.n]
    gens = {"ar": load_classifier(args.ar), "diffusion": load_classifier(args.diffusion)}
    budget = DiffusionClassifyConfig(trials=(args.timesteps,), keep=())
    out: dict = {"clips": len(clips), "timesteps": args.timesteps}
    for kind in ("color", "direction"):
        hits = dict.fromkeys(gens, 0)
        secs = dict.fromkeys(gens, 0.0)
        for i, clip in enumerate(clips):
            caps, truth = attribute_candidates(clip.attributes[0], kind, cfg)
            for m, gen in gens.items():
                res = classify(gen, clip.video, caps, seed=i, diffusion=budget)
                hits[m] += res.labels[0] == caps[truth]
                secs[m] += res.seconds
        out["motion" if kind == "direction" else kind] = {
            "candidates": len(caps), "chance": round(1 / len(caps), 3),
            **{f"{m}_accuracy": round(h / len(clips), 3) for m, h in hits.items()},
            **{f"{m}_s_per_clip": round(secs[m] / len(clips), 3) for m in gens}}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
