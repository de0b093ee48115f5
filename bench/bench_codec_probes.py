"""How well the probes read a trained codec's reconstructions of held-out clips.

    .venv/bin/python bench/bench_codec_probes.py --model RUN/final --data DATA [--split heldout] [--n 250]

Encodes each clip to ids, decodes it, and scores the reconstruction against the clip's
ground-truth attributes with `duogen.eval.probes.prompt_accuracy`. This bounds what any
generative model on this codec can score: what the codec loses, no model can put back.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch


def main() -> None:
    from duogen.data import load_dataset
    from duogen.eval.probes import prompt_accuracy
    from duogen.tokenizers import load

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="codec directory (RUN/final)")
    ap.add_argument("--data", required=True, help="shapes world directory")
    ap.add_argument("--split", default="heldout")
    ap.add_argument("--n", type=int, default=250)
    ap.add_argument("--batch", type=int, default=25)
    args = ap.parse_args()

    codec = load(args.model).eval()
    ds = load_dataset(args.data)[args.split].with_format("numpy")
    n = min(args.n, len(ds))
    scores: dict[str, list[float]] = {}
    with torch.no_grad():
        for i in range(0, n, args.batch):
            rows = ds[i:min(i + args.batch, n)]
            x = torch.from_numpy(rows["video"].astype(np.uint8)).permute(0, 4, 1, 2, 3).float() / 127.5 - 1  # (B,3,F,H,W)
            rec = codec.decode(codec.encode(x))
            rec = ((rec.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 4, 1).numpy()  # (B,F,H,W,3)
            for clip, attrs in zip(rec, rows["attributes"]):
                for kind, s in prompt_accuracy(clip, list(attrs)).items():
                    scores.setdefault(kind, []).append(float(s))
    print(json.dumps({"clips": n, "split": args.split, **{k: round(float(np.mean(v)), 4) for k, v in scores.items()}}))


if __name__ == "__main__":
    main()
