"""AR `tokens` controls: does the model read its condition? Validation next-token loss with and without it.

    PYTHONPATH=src python bench/bench_ar_control_loss.py --model src/duogen/assets/reference/ar \
        --control runs/ar_tokens_boxes --control runs/ar_tokens_mask --data runs/shapes --n 64 [--section F.json]

For the first `--n` clips of the validation split (caption = text, the clip's ground truth = condition, as
`train/ar_control_recipe.py` builds them), the mean output-token cross-entropy (nats per token, the training loss
without dropout) of: the base model on the t2v layout (text only); each control model on its layout with the
clip's condition; the same control model with the condition dropped (all `<pad>`, the recipe's condition
dropout); and, as a floor for what the control could add, the control model's condition loss minus its
dropped-condition loss ("gain": negative = the condition helps). Cheap (forward passes only), so it tracks a
control's training where sampling and probing (bench/bench_control.py) are slow.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

COLUMNS = ["model", "condition", "train steps", "loss with condition", "loss condition dropped", "gain", "clips"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="the base AR model the controls were trained from")
    ap.add_argument("--control", action="append", default=[], help="a `duogen train control --method tokens` run")
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="validation")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--section", default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)

    from duogen.ar_models.control import LayoutTokens, render_condition
    from duogen.ar_models.layouts import NULL_CLIP
    from duogen.bridges.control import load_control_run, parse_control
    from duogen.bridges.generate import ARGenerator
    from duogen.data import load_dataset
    from duogen.data.conditions import condition_clip
    from duogen.io import read_json
    from duogen.train.ar_control_recipe import row_tracks

    gen = ARGenerator.from_pretrained(a.model)
    base, codec = gen.model, gen.codec
    F, S = int(codec.cfg.frames), int(codec.cfg.size)
    rows = load_dataset(a.data)[a.split].select(range(a.n))
    videos = [np.asarray(v, np.uint8) for v in rows["video"]]
    with torch.inference_mode():
        vids = torch.cat([codec.encode(np.stack(videos[i: i + a.batch])) for i in range(0, a.n, a.batch)]).cpu()
    texts = [base.encode_prompt(c) for c in rows["caption"]]

    def loss(model, task, conds) -> float:
        total, count = 0.0, 0
        for i in range(0, a.n, a.batch):
            exs = [model.layouts.example(task, t, v, c) for t, v, c in
                   zip(texts[i: i + a.batch], vids[i: i + a.batch], conds[i: i + a.batch])]
            with torch.no_grad():
                out = model.loss(model.layouts.batch(exs))
            total, count = total + float(out.loss) * out.n_items, count + out.n_items
        return total / count

    table = [["base (text only)", "-", None, round(loss(base, "t2v", [{}] * a.n), 4), None, None, a.n]]
    print(" | ".join(COLUMNS))
    print(" | ".join("-" if v is None else str(v) for v in table[0]), flush=True)
    for spec in a.control:
        d, _ = parse_control(spec)
        ctl = load_control_run(d, base, codec)
        c, task = ctl.config, ctl.config.task
        if c.condition == "boxes":
            lay = LayoutTokens(ctl.model, c)
            conds = [lay.ids(row_tracks(r)) for r in rows.select_columns(["boxes", "attributes"])]
        else:
            with torch.inference_mode():
                conds = list(codec.encode(np.stack([render_condition(condition_clip(c.condition, F, S, video=v))
                                                    for v in videos])).cpu())
        with_c = loss(ctl.model, task, [{task: x} for x in conds])
        without = loss(ctl.model, task, [{task: NULL_CLIP}] * a.n)
        summary = d.parent / "summary.json" if d.name == "final" else d / "summary.json"
        steps = read_json(summary).get("steps") if summary.is_file() else None
        table.append([d.parent.name if d.name == "final" else d.name, c.condition, steps, round(with_c, 4),
                      round(without, 4), round(with_c - without, 4), a.n])
        print(" | ".join("-" if v is None else str(v) for v in table[-1]), flush=True)
    if a.section:
        path = Path(a.section)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({
            "title": "AR tokens control: validation loss with and without the condition",
            "intro": "Mean output-token cross-entropy (nats) on validation clips; gain < 0: the condition helps.",
            "tables": [{"caption": "same clips, no dropout", "columns": COLUMNS, "rows": table}],
            "plots": [], "notes": "", "command": "PYTHONPATH=src python bench/bench_ar_control_loss.py "
                                                 + shlex.join(sys.argv[1:])}, indent=1))


if __name__ == "__main__":
    main()
