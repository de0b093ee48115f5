"""Shapes-world rendering speed: duogen's renderer vs a naive per-pixel renderer, same process.

What is compared (be precise about it):
- "naive": the same clip specs (attributes, sprites, positions from `clip_spec`) painted with
  Python loops over every pixel of every sprite in every frame -- the obvious first renderer.
- "duogen": `make_clip` (spec + numpy boolean-mask writes on frame views).
Both include `clip_spec` (sampling + layout + caption). The naive one is checked to give
identical pixels. Then the whole `tiny` world of 5,000 clips is made end to end
(render + HF `datasets` write + world.yaml), the figure the issue asks to be under 2 minutes.

Run: .venv/bin/python bench/bench_world.py [--n 5000]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from duogen.config import replace
from duogen.data import make_dataset
from duogen.data.shapes import PALETTE, WORLD_PRESETS, clip_spec, make_clip


def naive_clip(cfg, split, i):
    attributes, masks, pos, _ = clip_spec(cfg, split, i)
    F, S = cfg.frames, cfg.size
    video = np.zeros((F, S, S, 3), np.uint8)
    for k, (a, m) in enumerate(zip(attributes, masks)):
        rgb = PALETTE[a["color"]]
        h, w = m.shape
        for f in range(F):
            x0, y0 = pos[k, f]
            for y in range(h):
                for x in range(w):
                    if m[y, x]:
                        for ch in range(3):
                            video[f, y0 + y, x0 + x, ch] = rgb[ch]
    return video


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--n-naive", type=int, default=100)
    args = ap.parse_args()
    cfg = replace(WORLD_PRESETS["tiny"], n=max(args.n, args.n_naive))
    make_clip(cfg, "train", 0)  # warm the sprite caches (MNIST load) outside the timings

    for i in range(5):
        assert np.array_equal(naive_clip(cfg, "train", i), make_clip(cfg, "train", i).video)

    t = time.perf_counter()
    for i in range(args.n_naive):
        naive_clip(cfg, "train", i)
    naive = args.n_naive / (time.perf_counter() - t)

    n_fast = min(2000, cfg.n)
    t = time.perf_counter()
    for i in range(n_fast):
        make_clip(cfg, "train", i)
    fast = n_fast / (time.perf_counter() - t)
    print(f"render only, tiny (32x32x9): naive per-pixel {naive:,.0f} clips/s | duogen {fast:,.0f} clips/s | {fast / naive:.1f}x")

    os.environ.setdefault("DUOGEN_QUIET", "1")
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        summary = make_dataset("shapes", os.path.join(tmp, "w"), n=args.n, preset="tiny")
        total = time.perf_counter() - t
    print(f"make the tiny world end to end: {args.n} clips in {total:.1f} s ({args.n / total:,.0f} clips/s; includes the MNIST sprite set-up and the datasets write) splits={summary['splits']}")


if __name__ == "__main__":
    main()
