"""Layout candidates, paired: does keeping the best of K first frames (by an AR model's own prompt-vs-no-prompt
likelihood ratio) draw the prompt more often, on the very same draws?

    .venv/bin/python bench/bench_layout_candidates.py --model AR_MODEL --data RUN/data [--k 1,2,4,8]
        [--per-split 16] [--n 4] [--guidance 3] [--seed 0] [--out results.json]

`layout_candidates=K` (the patch model's `PatchAR.sample`, the flat model's `generate_ids`) draws the first latent
frame K times and continues the one whose drawn ids the prompt explains best: the largest sum of log p(id | prompt,
ids before) - log p(id | no prompt, ids before). Its candidates are exactly the first frames plain sampling of the
K-times repeated prompt draws (same seed; tests in tests/test_patch_ar.py and tests/test_ar_sampling.py hold both
models to that), and a clip's frames after the first are drawn given its first. So one set of draws serves every
K: per prompt (`duogen compare`'s prompts: the world's first `--per-split` validation and held-out captions) the
bench draws n x max(K) whole clips with plain guided sampling (the model's generator, one call), reads each clip's
first-frame ratio with the full forward, and for each K keeps, in each of the n groups, the clip ranked first
among the group's first K. K = 1 is plain sampling. The probes score the kept clips (color, two-object color,
count, direction), so the K rows differ only by the choice, not by the draws: a paired comparison, far less noisy
than two `duogen compare` runs (which run the sampler itself: `--layout-candidates K`). Prints one line per K and
writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np


def patch_gap(model: Any, caption: str, ids: Any) -> Any:
    """A patch AR model: (B,) each clip's sum over its first latent frame's ids of log p(id | prompt) - log p(id |
    no prompt), from the full forward (`token_logp`)."""
    import torch

    text = [model.text_tokenizer.encode_prompt(caption, model.cfg.max_text)] * ids.shape[0]
    per_frame = model.n_patches // model.latent[0]
    with torch.no_grad():
        gap = (model.token_logp(model.text_block(text), ids)
               - model.token_logp(model.text_block([[]] * len(text)), ids))
    return gap[:, :per_frame].sum((1, 2))


def flat_gap(model: Any, caption: str, ids: Any) -> Any:
    """A flat AR model (t2v layout): the same sum from transformers' full forward, each id's log-probability over
    the video range's softmax (what the sampler draws from)."""
    import torch

    video = model.vocab.range("video")
    first = ids.reshape(ids.shape[0], -1)[:, : ids.shape[-1] * ids.shape[-2]] + video.start  # global ids
    sums = []
    for text in (model.encode_prompt(caption), []):
        prefix = torch.tensor([model.layouts.decode_plan("t2v", text).prefix] * ids.shape[0])
        P = prefix.shape[1]
        with torch.no_grad():
            logits = model(torch.cat([prefix, first], 1), torch.tensor([P] * ids.shape[0]))
        lp = logits[:, P - 1 : -1, video.start : video.stop].float().log_softmax(-1)
        sums.append(lp.gather(2, (first - video.start)[..., None])[..., 0].sum(1))
    return sums[0] - sums[1]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="an AR model dir: a patch model (`model.patch=2`) or a flat one")
    ap.add_argument("--data", required=True, help="the data set whose validation and held-out prompts to draw")
    ap.add_argument("--k", default="1,2,4,8", help="candidate counts to compare (1 = plain sampling)")
    ap.add_argument("--per-split", type=int, default=16, help="prompts from each of validation and held-out")
    ap.add_argument("--n", type=int, default=4, help="kept clips per prompt")
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="", help="write the numbers here as JSON")
    args = ap.parse_args(argv)
    ks = sorted({int(k) for k in args.k.split(",") if k.strip()})
    if not ks or ks[0] < 1:
        raise SystemExit(f"--k needs counts >= 1, got {args.k!r}")

    import torch

    from duogen.bridges.generate import load_generator
    from duogen.eval.compare import dataset_prompts
    from duogen.eval.probes import prompt_accuracy

    gen = load_generator(args.model)
    if getattr(gen, "kind", "") != "ar":
        raise SystemExit(f"{args.model}: not an AR model; layout candidates rank an AR model's first frames")
    model = gen.model
    gap_of = patch_gap if hasattr(model, "token_logp") else flat_gap
    prompts = dataset_prompts(args.data, args.per_split)
    K = max(ks)
    scores: dict[int, list[dict[str, Any]]] = {k: [] for k in ks}
    t0 = time.perf_counter()
    for i, p in enumerate(prompts):
        res = gen.generate([p.caption], n=args.n * K, seed=args.seed * 100_003 + i, guidance=args.guidance)
        gap = gap_of(model, p.caption, torch.as_tensor(res.ids)).view(args.n, K)
        clips = res.videos
        acc = [prompt_accuracy(c, p.attributes) for c in clips]
        for k in ks:
            keep = gap[:, :k].argmax(1) + torch.arange(args.n) * K
            scores[k] += [{**acc[int(j)], "objects": len(p.attributes)} for j in keep]
    rows = {}
    for k, s in scores.items():
        two = [x["color"] for x in s if x["objects"] == 2]
        rows[str(k)] = {"color": float(np.mean([x["color"] for x in s])),
                        "two_object_color": float(np.mean(two)) if two else None,
                        "count": float(np.mean([x["count"] for x in s])),
                        "direction": float(np.mean([x["direction"] for x in s]))}
    result = {"args": vars(args), "prompts": len(prompts), "clips_per_k": len(prompts) * args.n,
              "seconds": round(time.perf_counter() - t0, 1), "k": rows}
    for k, r in rows.items():
        two = "n/a" if r["two_object_color"] is None else f"{100 * r['two_object_color']:.1f}%"
        print(f"K={k}: color {100 * r['color']:.1f}% (two-object prompts {two}), count {100 * r['count']:.1f}%,"
              f" direction {100 * r['direction']:.1f}% ({result['clips_per_k']} clips)")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
