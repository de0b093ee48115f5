"""Train the patch-level AR model (`duogen.ar_models.patch`) on a demo run's codec and data, score it with the probes.

    .venv/bin/python bench/bench_patch_ar.py --run RUN --out OUT [--seed S] [--flops 6.87e12] [--layers 4]
        [--data DATA] [--codec CODEC] [--text TEXT_MODEL]
        [--local-hidden 64] [--lr 3e-3] [--batch-size 16] [--guidance 3] [--per-split 16] [--n 4] [--max-clips N]
        [--set KEY=VALUE ...]

RUN is a `duogen demo --out RUN` directory (RUN/data, RUN/codec/final, RUN/text/text.model); `--data`, `--codec` and
`--text` replace one of those each (all three: no RUN needed), e.g. to train on another codec's ids. The model trains
through `duogen train ar`'s recipe (`--preset tiny model.patch=2`, the options below as overrides: the same AdamW,
warm-up, cosine to the FLOP budget, precision `auto` and FLOP count as the demo's AR stage) until `--flops` and
saves OUT/final; then `duogen compare` scores it (OUT/compare: `--n`
clips for each of the world's first `--per-split` validation and held-out prompts, classifier-free guidance, the
probes), with the flat AR model `--baseline` in the same report when given. OUT/results.json holds each model's
headline accuracies, by split and by the number of objects a prompt names, with the run's steps, FLOPs and times.
`duogen compare --ar OUT/final ...` and `duogen generate OUT/final ...` load the saved model.

The flat AR model it is measured against is the demo's (`duogen train ar ... --preset tiny model.layers=1
train.lr=4e-3 train.max_flops=F`, then `duogen compare --ar OUT/final --data RUN/data --per-split 16 --n 4
--guidance 3`; docs/demo_runs/record.md, "A patch-level AR model").
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from duogen.demo import DEMO_AR_BATCH, DEMO_AR_LR



def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="", help="a `duogen demo` output directory: its data, codec and text tokenizer")
    ap.add_argument("--data", default="", help="the data set (default: RUN/data)")
    ap.add_argument("--codec", default="", help="the video codec directory (default: RUN/codec/final)")
    ap.add_argument("--text", default="", help="the text tokenizer's text.model (default: RUN/text/text.model)")
    ap.add_argument("--out", required=True, help="this run's directory (the engine's checkpoints, results.json)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--flops", type=float, default=6.87e12, help="training FLOP budget (the slow machine's demo AR: 6.87e12)")
    ap.add_argument("--layers", type=int, default=4, help="global model layers")
    ap.add_argument("--local-hidden", type=int, default=64, help="local model width")
    ap.add_argument("--lr", type=float, default=DEMO_AR_LR, help="learning rate (default: the demo's)")
    ap.add_argument("--batch-size", type=int, default=DEMO_AR_BATCH, help="batch size (default: the demo's)")
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--per-split", type=int, default=16, help="prompts per split (validation, held-out)")
    ap.add_argument("--n", type=int, default=4, help="clips per prompt")
    ap.add_argument("--max-clips", type=int, default=0, help="train on the first N training clips only (0: all)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="another `duogen train ar` override (repeatable), e.g. --set max_text=26 --set train.warmup_steps=20")
    ap.add_argument("--baseline", default="", help="a flat AR model dir (RUN/ar/final) to score in the same compare")
    args = ap.parse_args(argv)

    from duogen.eval.compare import compare_dirs
    from duogen.train.ar_recipe import train_ar

    out = Path(args.out)
    given = {"data": args.data, "codec": args.codec, "text": args.text}
    if not args.run and not all(given.values()):
        sys.exit(f"error: without --run, give --{' and --'.join(k for k, v in given.items() if not v)}")
    run = Path(args.run)
    data = Path(args.data or run / "data")
    codec_dir = Path(args.codec or run / "codec" / "final")
    text = Path(args.text or run / "text" / "text.model")
    for p in (data, codec_dir, text):
        if not p.exists():
            sys.exit(f"error: {p} is missing" + (": --run takes a `duogen demo --out RUN` directory" if args.run else ""))
    # what `duogen train ar --preset tiny model.patch=2 ...` trains: the recipe builds the model, encodes the clips
    # (the cache beside OUT) and runs the engine to the FLOP budget
    overrides = ["model.patch=2", f"model.layers={args.layers}", f"model.local_hidden={args.local_hidden}",
                 f"train.lr={args.lr:g}", f"train.batch_size={args.batch_size}", f"train.precision={args.precision}",
                 f"train.max_flops={args.flops:g}", "train.steps=100000", "train.max_minutes=0",
                 *([f"max_clips={args.max_clips}"] if args.max_clips else []), *args.set]
    summary = train_ar(data, codec_dir, out, text=text, overrides=overrides, seed=args.seed)

    t1 = time.perf_counter()
    ar = [f"patch={out / 'final'}"] + ([f"flat={args.baseline}"] if args.baseline else [])
    cmp = compare_dirs(ar, out=out / "compare", data=data, n=args.n, per_split=args.per_split, per_call=16,
                       guidance=args.guidance, log=lambda m: None)
    compare_s = time.perf_counter() - t1
    models = {}
    for m in cmp["models"]:
        s = m["settings"][0]  # the headline: cfg-G
        models[m["name"]] = {"setting": s["label"], "accuracy": s["accuracy"],
                             "accuracy_by_objects": s["accuracy_by_objects"], "cost_per_clip": s["cost_per_clip"],
                             "latency_s_per_clip": s["latency_s_per_clip"]}
    result = {
        "args": vars(args), "model": json.loads((out / "final" / "config.json").read_text())["model"],
        "parameters": summary["parameters"], "steps": summary["steps"], "flops": summary["flops"],
        "train_s": summary["wall_s"], "encode_s": summary["encode_s"], "compare_s": compare_s,
        "precision": summary["precision"], "final_loss": summary["final_loss"], "models": models,
    }
    (out / "results.json").write_text(json.dumps(result, indent=1))
    for name, m in models.items():
        a = m["accuracy"]["all"]
        two = m["accuracy_by_objects"].get("2", {}).get("accuracy", {}).get("color", float("nan"))
        print(f"{name} AR [{m['setting']}]: color {100 * a['color']:.1f}%, direction {100 * a['direction']:.1f}%, count "
              f"{100 * a['count']:.1f}%, shape {100 * a['shape']:.1f}%; two-object color {100 * two:.1f}%"
              + (f" ({summary['steps']} steps, {summary['flops']:.3g} FLOPs)" if name == "patch" else ""))
    return result


if __name__ == "__main__":
    main()
