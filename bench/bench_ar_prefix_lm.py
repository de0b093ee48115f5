"""Prefix LM (bidirectional condition) vs plain causal attention, and flat vs factorized visual
positions, on the shapes world at equal steps, over several seeds.

Codec-free so that it measures the attention pattern, not a codec: each clip
becomes 3x8x8 ids (frames 0, 4, 8; mean colour of each 4x4 block, 10 levels
per channel -> 1,000 ids), the same (f, h, w) grid the tiny codec gives. Both
variants train from the same init and the same batches (t2v layout, 10%
condition dropout, AdamW, warmup + cosine, bf16 autocast) and report the
next-token loss on the output tokens of 128 validation clips.

    .venv/bin/python bench/bench_ar_prefix_lm.py --variant prefix --steps 250 --hidden 256 --layers 4 --batch 16
    .venv/bin/python bench/bench_ar_prefix_lm.py --variant causal --steps 250 --hidden 256 --layers 4 --batch 16
    .venv/bin/python bench/bench_ar_prefix_lm.py --variant prefix --positions factorized --seeds 0,1,2

(run variants as separate processes, or `--variant both` for one after the other). `--seeds`
repeats each variant from other inits and batch orders and prints the mean and spread.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch


def pixel_ids(video: np.ndarray) -> np.ndarray:
    """uint8 (9,32,32,3) -> (3,8,8) ids in 0..999 (frames 0,4,8; 4x4 block mean colour, 10 levels per channel)."""
    v = np.asarray(video, dtype=np.float32)[[0, 4, 8]]
    b = v.reshape(3, 8, 4, 8, 4, 3).mean((2, 4)) / 255.0
    q = np.clip((b * 9.999).astype(int), 0, 9)
    return q[..., 0] * 100 + q[..., 1] * 10 + q[..., 2]


def run(prefix_lm: bool, a: argparse.Namespace, R: list, V: list, text, seed: int = 0) -> list[tuple[int, float, float]]:
    from duogen.ar_models.layouts import LayoutSpec, TrainCollator
    from duogen.ar_models.model import ARConfig, MultimodalLM
    from duogen.tokenizers.vocab import UnifiedVocab

    torch.manual_seed(seed)
    vocab = UnifiedVocab(text.vocab_size, {"video": 1000})
    heads = max(4, a.hidden // 64)
    cfg = ARConfig(prefix_lm=prefix_lm, hidden=a.hidden, layers=a.layers, heads=heads, kv_heads=heads,
                   mlp=int(a.hidden * 2.75) // 8 * 8, factorized_positions=a.positions == "factorized")
    m = MultimodalLM(cfg, vocab, LayoutSpec(max_text=32, latent=(3, 8, 8), tasks=["t2v"]), text)
    col, vb = TrainCollator(m.layouts, ["t2v"], 0.1), TrainCollator(m.layouts, ["t2v"], 0.0)(V)
    opt = torch.optim.AdamW(m.parameters(), lr=a.lr, weight_decay=0.01, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1, (s + 1) / 50) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, a.steps) / a.steps))))
    rng, t0, log = np.random.default_rng(seed), time.time(), []
    name = f"{'prefix' if prefix_lm else 'causal'}/{a.positions}/seed{seed}"
    for s in range(a.steps + 1):
        if s % a.eval_every == 0 or s == a.steps:
            m.eval()
            with torch.no_grad():
                log.append((s, round(time.time() - t0, 1), float(m.loss(vb).loss)))
            m.train()
            print(name, log[-1], flush=True)
        if s == a.steps:
            break
        b = col([R[i] for i in rng.integers(0, len(R), a.batch)])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = m.loss(b).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
        sched.step()
    return log


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="runs/data_shapes_tiny")
    ap.add_argument("--variant", choices=["prefix", "causal", "both"], default="both")
    ap.add_argument("--steps", type=int, default=250)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--clips", type=int, default=2000)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--positions", choices=["flat", "factorized"], default="flat",
                    help="factorized: learned (frame, row, column) embeddings on visual tokens, on top of RoPE")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds (init and batch order)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    from duogen.data import load_dataset
    from duogen.tokenizers.text import train_text_tokenizer

    ds = load_dataset(a.data)
    fmt = dict(columns=["video"], output_all_columns=True)
    tr = ds["train"].select(range(min(a.clips, len(ds["train"])))).with_format("numpy", **fmt)
    va = ds["validation"].select(range(min(128, len(ds["validation"])))).with_format("numpy", **fmt)
    text = train_text_tokenizer(ds["train"]["caption"], None, vocab_size=512)
    R = [{"text_ids": text.encode(r["caption"])[:32], "video_ids": pixel_ids(r["video"])} for r in tr]
    V = [{"text_ids": text.encode(r["caption"])[:32], "video_ids": pixel_ids(r["video"])} for r in va]
    out: dict[str, list[float]] = {}
    for variant in (["prefix", "causal"] if a.variant == "both" else [a.variant]):
        key = f"{variant}/{a.positions}"
        out[key] = [run(variant == "prefix", a, R, V, text, int(s))[-1][2] for s in a.seeds.split(",")]
    for key, losses in out.items():
        print(f"{key}: final validation loss {np.mean(losses):.4f} +- {np.std(losses):.4f} over seeds {a.seeds}"
              f" ({', '.join(f'{x:.4f}' for x in losses)})")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
