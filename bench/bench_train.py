"""Training throughput of the engine on a small Llama: fp32 vs bf16 vs bf16 + torch.compile, and MFU.

    .venv/bin/python bench/bench_train.py [--steps 8] [--layers 4] [--hidden 256] [--seq 128] [--batch 8] [--threads N]

Each configuration runs `duogen.train.engine.fit` on the same random-token data;
throughput is tokens/s over the steps after the first `--warmup` (so compile time
and first-step allocation are excluded), taken from the run's metrics.jsonl. FLOPs
per step come from the engine's FlopCounterMode measurement (forward + backward).
MFU = achieved FLOP/s / matmul peak, where the peak is a large square matmul timed
in this same process, in fp32 and bf16. Ratios are against the fp32 run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("DUOGEN_QUIET", "1")

import torch  # noqa: E402


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    """FLOP/s of an n x n x n matmul (2 n^3 FLOPs), best of `reps`."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm up
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def run(name: str, precision: str, compile: bool, args: argparse.Namespace, out: Path) -> dict[str, float]:
    from transformers import LlamaConfig, LlamaForCausalLM

    from duogen.train.engine import LossOutput, TrainConfig, fit

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=int(args.hidden * 8 / 3) // 64 * 64,
        num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64, num_key_value_heads=args.hidden // 64,
        max_position_embeddings=args.seq, attn_implementation="sdpa",
    )
    model = LlamaForCausalLM(cfg)
    n = args.batch * (args.steps + 1)
    data = torch.utils.data.TensorDataset(torch.randint(0, args.vocab, (n, args.seq)))

    def loss_fn(m, batch):
        (ids,) = batch  # (B, T)
        return LossOutput(m(input_ids=ids, labels=ids).loss, ids.numel(), {})

    tc = TrainConfig(steps=args.steps, batch_size=args.batch, lr=3e-4, precision=precision, compile=compile,
                     log_every=1, ckpt_every=0, keep_last=1)
    t = time.perf_counter()
    summary = fit(model, loss_fn, data, tc, out / name)
    recs = [json.loads(ln) for ln in (out / name / "metrics.jsonl").read_text().splitlines()]
    tps = statistics.median(r["items_per_s"] for r in recs[args.warmup:])
    flops_per_token = summary.flops / summary.steps / (args.batch * args.seq)
    return {"tokens_per_s": tps, "flops_per_token": flops_per_token, "wall_s": time.perf_counter() - t,
            "params_M": sum(p.numel() for p in model.parameters()) / 1e6}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=3, help="steps left out of the throughput median")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    peak = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; matmul peak 2048^3: "
          f"fp32 {peak['fp32'] / 1e9:.1f} GFLOP/s, bf16 {peak['bf16'] / 1e9:.1f} GFLOP/s", flush=True)
    runs = [("fp32", "fp32", False), ("bf16", "bf16", False)] + ([] if args.no_compile else [("bf16+compile", "bf16", True)])
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, precision, comp in runs:
            results[name] = r = run(name, precision, comp, args, Path(tmp))
            flops_s = r["tokens_per_s"] * r["flops_per_token"]
            r["mfu_vs_bf16_peak"], r["mfu_vs_fp32_peak"] = flops_s / peak["bf16"], flops_s / peak["fp32"]
            print(f"  {name}: {r['tokens_per_s']:.0f} tokens/s ({r['wall_s']:.0f} s)", flush=True)
    base = results["fp32"]["tokens_per_s"]
    print(f"Llama {args.layers}x{args.hidden}, {results['fp32']['params_M']:.2f}M params, batch {args.batch} x seq {args.seq}, "
          f"{results['fp32']['flops_per_token'] / 1e6:.1f} MFLOP/token (fwd+bwd, FlopCounterMode)")
    print(f"{'config':<14}{'tokens/s':>10}{'vs fp32':>9}{'MFU/bf16pk':>12}{'MFU/fp32pk':>12}{'wall s':>8}")
    for name, r in results.items():
        print(f"{name:<14}{r['tokens_per_s']:>10.0f}{r['tokens_per_s'] / base:>8.2f}x"
              f"{100 * r['mfu_vs_bf16_peak']:>11.1f}%{100 * r['mfu_vs_fp32_peak']:>11.1f}%{r['wall_s']:>8.1f}")
    json.dump({"peak_flops": peak, "runs": results}, sys.stderr)
    print(file=sys.stderr)


if __name__ == "__main__":
    main()
