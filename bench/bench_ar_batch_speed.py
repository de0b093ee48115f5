"""Time per clip of the demo's AR training step at several batch sizes, as a ratio to the largest batch's.

    .venv/bin/python bench/bench_ar_batch_speed.py [--batches 32,16,8] [--precision fp32] [--repeats 5] [--rounds 2]

Each round builds the demo's AR model (`DEMO_AR_MODEL` on the `tiny` preset, `speed.ar_step(batch_size=B)`) and times
its training step with `speed.time_training_step` (the median of `--repeats` steps after a warm-up), as `duogen demo`
measures the machine. Prints seconds per step, per clip and the per-clip ratio to the first batch size's, per round.
"""

from __future__ import annotations

import argparse
import json


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", default="32,16,8", help="comma-separated batch sizes; the first is the baseline")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    from duogen.demo import DEMO_AR_MODEL
    from duogen.speed import ar_step, time_training_step

    batches = [int(b) for b in args.batches.split(",")]
    rows = []
    for r in range(args.rounds):
        base = None
        for B in batches:
            s = time_training_step(ar_step(batch_size=B, **DEMO_AR_MODEL), args.precision, repeats=args.repeats)
            per_clip = s.step_s / B
            base = base or per_clip
            rows.append({"round": r, "batch": B, "step_s": s.step_s, "clip_s": per_clip, "ratio": per_clip / base,
                         "flops_per_s": s.flops_per_s})
            print(f"round {r} batch {B}: {s.step_s:.3f} s/step, {1000 * per_clip:.2f} ms/clip, "
                  f"{per_clip / base:.2f}x batch {batches[0]}'s time per clip ({s.flops_per_s:.3g} FLOP/s)")
    if args.json:
        print(json.dumps(rows))
    return rows


if __name__ == "__main__":
    main()
