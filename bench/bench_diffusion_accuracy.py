"""Probe accuracy of a trained diffusion model's clips against the number of sampling steps.

    .venv/bin/python bench/bench_diffusion_accuracy.py --model RUN/final --data DATA [--prompts 16] [--n 2]
        [--settings ddpm-1000,ddim-50,dpm-20,dpm-10] [--guidance G]

For the validation prompts and the held-out compositions (the first `--prompts`
distinct captions of each split), samples `--n` clips per prompt with each
sampler setting and prints the probes' color / direction / shape accuracy
(`duogen.eval.probes.prompt_accuracy`) with the seconds per clip.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> None:
    from duogen.bridges.generate import load_generator
    from duogen.eval.compare import dataset_prompts
    from duogen.eval.probes import prompt_accuracy

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--prompts", type=int, default=16, help="distinct captions per split")
    ap.add_argument("--n", type=int, default=2, help="clips per prompt")
    ap.add_argument("--settings", default="ddpm-1000,ddim-50,dpm-20,dpm-10")
    ap.add_argument("--guidance", type=float, default=None, help="default: the model's stored guidance")
    ap.add_argument("--json", default=None, help="also write the table here")
    args = ap.parse_args()

    gen = load_generator(args.model)
    prompts = dataset_prompts(args.data, per_split=args.prompts)
    rows = []
    for setting in args.settings.split(","):
        sampler, steps = setting.rsplit("-", 1)
        for split in ("validation", "heldout"):
            ps = [p for p in prompts if p.split == split]
            if not ps:
                continue
            acc: dict[str, list[float]] = {"color": [], "direction": [], "shape": []}
            t0 = time.perf_counter()
            for i, p in enumerate(ps):
                res = gen.generate([p.caption], n=args.n, seed=i, sampler=sampler, steps=int(steps), guidance=args.guidance)
                for clip in res.videos:
                    a = prompt_accuracy(clip, p.attributes)
                    for k in acc:
                        acc[k].append(a[k])
            sec = (time.perf_counter() - t0) / (len(ps) * args.n)
            row = {"setting": setting, "split": split, **{k: float(np.mean(v)) for k, v in acc.items()},
                   "clips": len(acc["color"]), "s_per_clip": sec}
            rows.append(row)
            print(f"{setting:<11}{split:<11} color {row['color']:.3f}  direction {row['direction']:.3f}"
                  f"  shape {row['shape']:.3f}  ({row['clips']} clips, {sec:.2f} s/clip)", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
