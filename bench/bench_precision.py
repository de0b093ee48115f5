"""fp32 vs bf16 on this machine: matmul GFLOP/s, one training step of each recipe's tiny model, and `auto`.

    .venv/bin/python bench/bench_precision.py [--repeats 2] [--threads N] [--only video,audio,ar,dit] [--attention]

Baseline, in the same process: each measurement in fp32. Reported:
- an n x n matmul (n = 256, 512, 1024) in fp32 and bf16: GFLOP/s and the bf16 / fp32 time ratio;
- one training step (forward under autocast, backward, AdamW step, as the recipes run it) of the
  `tiny` preset of each recipe at its preset batch size: the video codec (batch 8), the audio
  codec (8 x 0.5 s), the AR model (batch 32, t2v) and the DiT (batch 64), on random inputs of the
  real shapes; seconds per step (the best of `--repeats` after one warm-up step) and the ratio;
- attention alone (`--attention`): forward + backward of one SDPA call at the `tiny` DiT's and AR model's
  shapes under bf16 autocast, as torch runs it (autocast casts q, k, v to bf16) against duogen's
  `sdpa_tensors` (float32 inside on a CPU, `duogen.attention.cpu_fp32_attention`), and in plain fp32;
- what `train.precision=auto` resolves to here (`duogen.precision`), and why.
Prints the load average, since the CPU may be shared.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any, Callable

os.environ.setdefault("DUOGEN_QUIET", "1")

import torch  # noqa: E402

from duogen.attention import sdpa_tensors  # noqa: E402
from duogen.precision import cpu_bf16_support, measure_bf16_ratio, resolve_precision  # noqa: E402
from duogen.speed import ar_step, codec_step, dit_step  # noqa: E402  (the same builders the demo times)
from duogen.utils import autocast, count_parameters  # noqa: E402


def matmul_gflops(n: int, dtype: torch.dtype, repeats: int = 3) -> float:
    """GFLOP/s of an n x n x n matmul (2 n^3 FLOPs), best of `repeats` after a warm-up."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def video_codec() -> tuple[Any, Callable[[Any], Any]]:
    return codec_step()[:2]


def audio_codec() -> tuple[Any, Callable[[Any], Any]]:
    from duogen.tokenizers.audio_codec import build_audio_codec, codec_loss
    from duogen.train.audio_codec_recipe import AudioCodecRun

    run = AudioCodecRun()
    codec = build_audio_codec(run.preset)
    x = torch.randn(run.train.batch_size, 1, int(run.segment_s * 16000)) * 0.1  # (B, 1, S)
    codec.train()
    with torch.no_grad():  # the first training call initialises the RVQ codebooks by k-means: give it enough frames
        codec_loss(codec, torch.randn(8 * run.train.batch_size, 1, x.shape[-1]) * 0.1)
    return codec, lambda model: codec_loss(model, x).loss


def ar_model() -> tuple[Any, Callable[[Any], Any]]:
    return ar_step()[:2]


def dit_model() -> tuple[Any, Callable[[Any], Any]]:
    return dit_step()[:2]


MODELS = {"video": ("video codec", video_codec), "audio": ("audio codec", audio_codec),
          "ar": ("AR (Llama)", ar_model), "dit": ("DiT", dit_model)}


def step_seconds(build: Callable[[], tuple[Any, Callable]], precision: str, repeats: int) -> tuple[float, int]:
    """Seconds of one training step (best of `repeats` after a warm-up step) and the parameter count."""
    torch.manual_seed(0)
    model, loss_fn = build()
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-4)

    def step() -> None:
        with autocast(precision):
            loss = loss_fn(model)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return best_seconds(step, repeats), count_parameters(model)


def best_seconds(fn: Callable[[], None], repeats: int) -> float:
    """Seconds of the fastest of `repeats` calls of `fn`, after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


# (batch, heads, query tokens, key tokens, head size, causal): the tiny DiT's self-attention over a latent frame's
# 48 tokens, its 25-token attention, and the tiny AR model's causal attention over its t2v sequence
ATTENTION_SHAPES = {"DiT 48 tokens": (64, 4, 48, 48, 32, False), "DiT 25 tokens": (64, 4, 25, 25, 32, False),
                    "AR causal 231": (32, 4, 231, 231, 32, True)}


def attention_ms(shape: tuple[int, int, int, int, int, bool], how: str, repeats: int) -> float:
    """Milliseconds of SDPA forward + backward (best of `repeats` after a warm-up): `how` is "torch bf16" (plain
    F.scaled_dot_product_attention under bf16 autocast), "duogen bf16" (`sdpa_tensors` under it) or "fp32"."""
    import torch.nn.functional as F

    B, H, Tq, Tk, D, causal = shape
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, T, D, generator=g, requires_grad=True) for T in (Tq, Tk, Tk))

    def run() -> None:
        with autocast("fp32" if how == "fp32" else "bf16"):
            if how == "duogen bf16":
                out = sdpa_tensors(q, k, v, causal=causal)
            else:
                out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        out.float().sum().backward()

    return best_seconds(run, repeats) * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=2, help="timed training steps per model and precision")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    p.add_argument("--only", default=",".join(MODELS), help=f"comma-separated subset of {', '.join(MODELS)}")
    p.add_argument("--attention", action="store_true", help="also time attention alone: torch's bf16 SDPA vs duogen's")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cpu = cpu_bf16_support()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu.detail}; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    print(f"{'matmul':<16}{'fp32 GFLOP/s':>14}{'bf16 GFLOP/s':>14}{'bf16 time / fp32':>18}")
    for n in (256, 512, 1024):
        f32, b16 = matmul_gflops(n, torch.float32), matmul_gflops(n, torch.bfloat16)
        print(f"{f'{n}x{n}':<16}{f32:>14.1f}{b16:>14.1f}{f32 / b16:>17.1f}x", flush=True)
    print(f"\n{'training step':<16}{'params':>9}{'fp32 s':>10}{'bf16 s':>10}{'bf16 / fp32':>13}")
    for key in args.only.split(","):
        name, build = MODELS[key]
        f32, n = step_seconds(build, "fp32", args.repeats)
        b16, _ = step_seconds(build, "bf16", args.repeats)
        print(f"{name:<16}{n / 1e6:>8.2f}M{f32:>10.3f}{b16:>10.3f}{b16 / f32:>12.1f}x", flush=True)
    if args.attention:
        print(f"\n{'attention fwd+bwd':<18}{'fp32 ms':>9}{'torch bf16 ms':>15}{'duogen bf16 ms':>16}{'torch / duogen':>16}")
        for name, shape in ATTENTION_SHAPES.items():
            f32, tb, db = (attention_ms(shape, how, max(args.repeats, 5)) for how in ("fp32", "torch bf16", "duogen bf16"))
            print(f"{name:<18}{f32:>9.2f}{tb:>15.2f}{db:>16.2f}{tb / db:>15.1f}x", flush=True)
    t = time.perf_counter()
    ratio = measure_bf16_ratio()
    check_s = time.perf_counter() - t
    choice = resolve_precision("auto", "cpu", measure=lambda: ratio)
    print(f"\nauto's check (uncached): {check_s:.2f} s, bf16 / fp32 = {ratio:.1f}x")
    print(f"train.precision=auto -> {choice.precision}: {choice.reason}")


if __name__ == "__main__":
    main()
