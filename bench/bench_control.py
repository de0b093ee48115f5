"""Box control: per-frame IoU between the requested boxes and the objects the probes find, control on vs off.

    PYTHONPATH=src python bench/bench_control.py --model src/duogen/assets/reference/dit --control runs/ctl_boxes \
        --data runs/shapes --n 64 [--scales 0.5,1,2] [--section out/control.json]

For the first `n` clips of the data set's `validation` split: the clip's caption is the prompt and its
ground-truth boxes (rasterised, `data.conditions.condition_clip`) the condition. Each clip is generated with the
text alone (scale 0: the uncontrolled model) and with the control at each scale, same seeds. The probes
(`eval.probes.probe_clip`) read the objects of every generated clip; each requested object is matched to the
reading with the highest mean IoU over frames, and its per-frame IoU counted (0 where the object is absent).
Reported: mean per-frame box IoU and the share of frames with IoU >= 0.5 (not AP: there are no scores to rank).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-row IoU of boxes (F, 4) [x0, y0, x1, y1] exclusive; a row of -1 (absent) scores 0."""
    ix = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = ix * iy
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    union = area(a) + area(b) - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)
    return np.where((b < 0).any(1), 0.0, iou)


def frame_ious(video: np.ndarray, requested: list[np.ndarray], classifier) -> list[np.ndarray]:
    """For each requested track (F, 4): the per-frame IoU (F,) of the best-matching probed object."""
    from duogen.eval.probes import probe_clip

    readings = probe_clip(video, classifier=classifier)
    out = []
    for boxes in requested:
        cands = [box_iou(boxes.astype(np.float64), r.boxes.astype(np.float64)) for r in readings]
        out.append(max(cands, key=lambda x: x.mean()) if cands else np.zeros(len(boxes)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--control", required=True, help="a `duogen train control --condition boxes` run")
    ap.add_argument("--data", required=True)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--scales", default="1")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--section", default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)

    from duogen.bridges.control import load_control_run, parse_control
    from duogen.bridges.diffusion import DiffusionGenerator
    from duogen.data import load_dataset
    from duogen.data.conditions import BoxTrack, condition_clip
    from duogen.diffusion.control import ActiveControl
    from duogen.eval.shape_classifier import load_shape_classifier

    gen = DiffusionGenerator.from_pretrained(a.model)
    codec = gen.model._need_codec()
    F, S = int(codec.cfg.frames), int(codec.cfg.size)
    rows = load_dataset(a.data)["validation"].select(range(a.n))
    prompts = list(rows["caption"])
    tracks = [[np.asarray(b, np.float64) for b in r] for r in rows["boxes"]]
    cond = torch.from_numpy(np.stack([condition_clip("boxes", F, S, tracks=[BoxTrack("", b) for b in t])
                                      for t in tracks])[:, None].astype(np.float32))  # (n, 1, F, H, W)
    module = load_control_run(parse_control(a.control)[0], gen.model.denoiser)
    classifier = load_shape_classifier()
    rows_out = []
    for scale in [0.0] + [float(s) for s in a.scales.split(",")]:
        controls = [ActiveControl(module, cond, scale)] if scale else []
        res = gen.generate(prompts, n=1, seed=a.seed, steps=a.steps, controls=controls)
        ious = np.concatenate([np.concatenate(frame_ious(v, t, classifier)) for v, t in zip(res.videos, tracks)])
        rows_out.append(["off (text only)" if not scale else f"controlnet x{scale:g}", round(float(ious.mean()), 3),
                         round(float((ious >= 0.5).mean()), 3), int(ious.size)])
        print(rows_out[-1], flush=True)
    cols = ["control", "mean per-frame box IoU", "frames with IoU >= 0.5", "object-frames"]
    print(" | ".join(cols))
    for r in rows_out:
        print(" | ".join(str(x) for x in r))
    if a.section:
        cmd = ("PYTHONPATH=src python bench/bench_control.py --model {} --control {} --data {} --n {} --steps {}"
               " --scales {}").format(a.model, a.control, a.data, a.n, a.steps, a.scales)
        Path(a.section).parent.mkdir(parents=True, exist_ok=True)
        Path(a.section).write_text(json.dumps({
            "title": "Box control (diffusion, ControlNet)",
            "intro": "Requested boxes vs the objects the probes find in the generated clips, same prompts and seeds.",
            "tables": [{"caption": "per-frame box IoU", "columns": cols, "rows": rows_out}],
            "plots": [], "notes": "", "command": cmd}, indent=1))


if __name__ == "__main__":
    main()
