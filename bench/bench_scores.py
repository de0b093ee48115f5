"""Do per-example scores carry the caption? Pick the true caption of a shapes-world clip among its variants.

    .venv/bin/python bench/bench_scores.py [--ar DIR] [--diffusion DIR] [--n 24] [--timesteps 8]

For each single-object validation clip of the tiny world, the candidates are its canonical caption with
the attribute replaced by every value the world has (colors, or motions), the true one among them. The
AR model ranks them by `MultimodalLM.score` (log-likelihood of the clip's codec ids under each caption);
the diffusion model by the mean of `LatentDiffusionModel.loss_per_example` over `--timesteps` evenly spaced
t, with one noise draw per t shared by every candidate (lowest loss wins). Chance is 1 / candidates.
Defaults: the shipped reference models (duogen/assets/reference). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

REFERENCE = Path(__file__).resolve().parent.parent / "src" / "duogen" / "assets" / "reference"


def candidates(attrs: dict, kind: str, cfg) -> tuple[list[str], int]:
    """Canonical captions with attribute `kind` set to each of the world's values; the index of the true one."""
    from duogen.data.shapes import COLORS, MOTION_NAMES, caption

    values = COLORS if kind == "color" else MOTION_NAMES
    rng = np.random.default_rng(0)  # unused by canonical captions (paraphrase=False)
    caps = [caption([{**attrs, kind: v}], cfg, rng, paraphrase=False) for v in values]
    return caps, list(values).index(attrs[kind])


def main() -> None:
    from duogen.ar_models.model import MultimodalLM
    from duogen.data.shapes import load_world_config, make_clip
    from duogen.diffusion.latent import LatentDiffusionModel
    from duogen.tokenizers import load

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ar", default=str(REFERENCE / "ar"))
    ap.add_argument("--diffusion", default=str(REFERENCE / "dit"))
    ap.add_argument("--n", type=int, default=24, help="single-object validation clips")
    ap.add_argument("--timesteps", type=int, default=8, help="diffusion: t values averaged per candidate")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    cfg = load_world_config("tiny")
    clips = [c for c in (make_clip(cfg, "validation", i) for i in range(4 * args.n)) if len(c.attributes) == 1][: args.n]
    ar = MultimodalLM.from_pretrained(args.ar).eval()
    codec = load(ar.codec_path(args.ar)).eval()
    dm = LatentDiffusionModel.from_pretrained(args.diffusion).eval()
    N = dm.schedule.num_train_timesteps
    ts = torch.linspace(0.05 * N, 0.95 * N, args.timesteps).long()  # (K,) evenly spaced, ends trimmed
    out: dict = {"clips": len(clips), "timesteps": ts.tolist()}
    gen = torch.Generator().manual_seed(0)
    for kind in ("color", "motion"):
        hits = {"ar": 0, "diffusion": 0}
        t0 = {"ar": 0.0, "diffusion": 0.0}
        for clip in clips:
            caps, truth = candidates(clip.attributes[0], kind, cfg)
            C = len(caps)
            with torch.no_grad():
                s = time.perf_counter()
                ids = codec.encode(clip.video)[0]  # (f, h, w)
                batch = ar.layouts.batch([ar.layouts.example("t2v", ar.encode_prompt(c), ids) for c in caps])
                hits["ar"] += int(ar.score(batch).logp_sum.argmax()) == truth
                t0["ar"] += time.perf_counter() - s
                s = time.perf_counter()
                z = dm.encode_video(clip.video)  # (1, C, f, h, w)
                text_ids, mask = dm.text_encoder.tokenize(caps, strict=False)
                K = len(ts)
                eps = torch.randn((K, *z.shape[1:]), generator=gen).repeat_interleave(C, 0)  # (K*C, ...): shared per t
                b = {"latents": z.expand(K * C, *z.shape[1:]), "text_ids": text_ids.repeat(K, 1),
                     "text_mask": mask.repeat(K, 1)}
                loss = dm.loss_per_example(b, t=ts.repeat_interleave(C), noise=eps).view(K, C).mean(0)  # (C,)
                hits["diffusion"] += int(loss.argmin()) == truth
                t0["diffusion"] += time.perf_counter() - s
        out[kind] = {"candidates": C, "chance": round(1 / C, 3),
                     **{f"{m}_accuracy": round(h / len(clips), 3) for m, h in hits.items()},
                     **{f"{m}_s_per_clip": round(t0[m] / len(clips), 3) for m in hits}}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
