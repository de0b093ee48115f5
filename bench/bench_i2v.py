"""Frame continuation (i2v) against the world's ground truth: given a held-out clip's first frame and caption, how
close is the drawn clip to the real one, and do the probes read the caption in it?

    .venv/bin/python bench/bench_i2v.py --model RUN/ar/final --data RUN/data [--clips 32] [--n 2] [--guidance 3]
        [--split heldout] [--seed 0] [--out results.json]

For each of the split's first `--clips` clips the AR generator (`load_generator`: the patch model, or a flat model
trained with i2v) draws `--n` clips twice with the same caption: from the caption alone (t2v) and from the caption
and the real clip's first frame (i2v). Against the real clip, over frames 1.. (frame 0 is given to i2v):
- PSNR of the drawn frames (dB; uint8, peak 255), beside the codec's own reconstruction of the real clip (the
  ceiling: what the best possible continuation through this codec would read);
- the probes' color, direction and count read against the caption's attributes (`eval.probes.prompt_accuracy`);
- how far each caption object's box centre sits from the real one (pixels, mean over frames 1.. and objects; the
  probes' boxes matched to the caption's objects by color; a frame where the probes miss it counts the frame size).
The first frame places the objects, so i2v should track the real clip far closer than t2v can, and keep the
caption as well as t2v does. Prints one line per mode and writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np


def centre_error(readings: list[Any], size: int, boxes: list[list[list[int]]],
                 attributes: list[dict[str, Any]]) -> float:
    """Mean distance (px) over frames 1.. and the caption's objects between the real box centres and those of the
    same-colored object of the probes' `readings` of a clip (`size`, its frame size, where it is absent)."""
    readings = {r.color: r for r in readings}
    size = float(size)
    errs = []
    for a, track in zip(attributes, boxes):
        real = np.array([[(b[0] + b[2]) / 2, (b[1] + b[3]) / 2] for b in track[1:]], np.float64)
        r = readings.get(a["color"])
        if r is None:
            errs.append(np.full(len(real), size))
            continue
        b = r.boxes[1:].astype(np.float64)  # (F-1, 4), -1 where the object is absent
        d = np.linalg.norm(np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2], 1) - real, axis=1)
        d[b[:, 0] < 0] = size
        errs.append(d)
    return float(np.mean(np.concatenate(errs))) if errs else float("nan")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True,
                    help="an AR model dir that draws i2v (a patch model, or a flat one trained on it)")
    ap.add_argument("--data", required=True, help="the data set (its clips, captions, attributes and boxes)")
    ap.add_argument("--split", default="heldout")
    ap.add_argument("--clips", type=int, default=32, help="real clips to continue")
    ap.add_argument("--n", type=int, default=2, help="drawn clips per real clip and mode")
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="", help="write the numbers here as JSON")
    args = ap.parse_args(argv)

    import torch

    from duogen.bridges.edit.prep import psnr
    from duogen.bridges.generate import load_generator
    from duogen.bridges.result import to_uint8
    from duogen.data import load_dataset
    from duogen.eval.probes import probe_clip, prompt_accuracy

    gen = load_generator(args.model)
    ds = load_dataset(args.data)[args.split]
    rows = ds.select(range(min(args.clips, len(ds))))
    kinds = ("psnr", "color", "direction", "count", "centre_px")
    modes: dict[str, dict[str, list[float]]] = {m: {k: [] for k in kinds} for m in ("t2v", "i2v", "codec")}
    t0 = time.perf_counter()
    for i, row in enumerate(rows):
        real = np.asarray(row["video"], np.uint8)
        with torch.inference_mode():
            recon = to_uint8(gen.codec.decode(gen.codec.encode(real)))[0]
        drawn = {"codec": [recon]}
        for mode in ("t2v", "i2v"):
            kw = {"task": "i2v", "image": real[0]} if mode == "i2v" else {}
            res = gen.generate([row["caption"]], n=args.n, seed=args.seed + i, guidance=args.guidance, **kw)
            drawn[mode] = list(res.videos)
        for mode, clips in drawn.items():
            for clip in clips:
                readings = probe_clip(clip)
                acc = prompt_accuracy(readings, row["attributes"])
                m = modes[mode]
                m["psnr"].append(psnr(clip[1:], real[1:]))
                m["centre_px"].append(centre_error(readings, clip.shape[1], row["boxes"], row["attributes"]))
                for k in ("color", "direction", "count"):
                    m[k].append(acc[k])
    result = {"args": vars(args), "clips": len(rows), "seconds": round(time.perf_counter() - t0, 1),
              "modes": {mode: {k: float(np.mean(v)) for k, v in m.items()} for mode, m in modes.items()}}
    for mode, m in result["modes"].items():
        what = "the codec's reconstruction of the real clip" if mode == "codec" else f"{args.n} drawn per clip"
        print(f"{mode}: PSNR {m['psnr']:.2f} dB, object centres {m['centre_px']:.2f} px off,"
              f" color {100 * m['color']:.1f}%, direction {100 * m['direction']:.1f}%,"
              f" count {100 * m['count']:.1f}% ({what}, {len(rows)} clips)")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
