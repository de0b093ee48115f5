"""Encode / decode throughput (frames per second) of the tiny and small video codecs.

Baseline, in the same process: each codec in float32. Reported: frames/s for
encode (pixels -> ids) and decode (ids -> pixels) in fp32 and under bf16
autocast, and the bf16 / fp32 ratio. A second baseline: the causal 3D
convolution as computed here (2D conv over time-stacked channels) against
`nn.Conv3d` with the same weights and causal padding, on the tiny codec's
latent-rate tensor. A third: the tiny codec recipe's training step (forward,
loss, backward, AdamW) with the weights in channels-last memory format against
the default layout, in alternating rounds (the median of the rounds' medians
of `--repeats` steps). Every 3D convolution here is a 2D one over stacked
time, so channels-last 2D is the format that applies. A fourth: the same
training step with a second, full-resolution decoder stage
(`model.decoder_extra_levels=2`) against the preset's, FLOPs and time. A fifth:
the same training step with a 16x16 token grid (`model.patch=2`: 768 tokens per
9-frame clip instead of 192), 128 and 64 wide (`model.widths=[64]`), against the
preset's 8x8 grid. A sixth: the same training step with decorrelated latent channels
(`model.latent_norm=whiten`) against the preset's per-channel standardization. A seventh: the same training
step with FSQ's code-entropy term (`model.quantizer.fsq_entropy_weight`) on against off. An eighth: the same
training step with its loss function (model calls included) under `torch.compile`, as the engine's
`train.compile=true` compiles the AR and diffusion recipes' (the codec recipe has its own loop and no such key),
against eager, and the compiled step's first call (compiling included; run with `TORCHINDUCTOR_CACHE_DIR=$(mktemp
-d)` for a cold compile, since torch keeps compiled graphs on disk between processes). Prints the load average,
since the CPU is shared.

    .venv/bin/python bench/bench_codec.py [--threads N] [--repeats 3] [--batch 16] [--only decoder-levels ...]
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F

from duogen.tokenizers.layers import CausalConv3d
from duogen.tokenizers.video_codec import build_video_codec
from duogen.utils import autocast, count_parameters


def _time(fn, repeats: int) -> float:
    fn()  # warm-up (oneDNN picks kernels on first call)
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t) / repeats


@torch.no_grad()
def bench_codec(preset: str, batch: int, repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    codec = build_video_codec(preset).eval()
    c = codec.cfg
    x = torch.rand(batch, 3, c.frames, c.size, c.size) * 2 - 1
    frames = batch * c.frames
    out: dict[str, float] = {"params_M": count_parameters(codec) / 1e6}
    for prec in ("fp32", "bf16"):
        with autocast(prec):
            ids = codec.encode(x)
            out[f"encode_{prec}"] = frames / _time(lambda: codec.encode(x), repeats)
            out[f"decode_{prec}"] = frames / _time(lambda: codec.decode(ids), repeats)
    out["encode_bf16/fp32"] = out["encode_bf16"] / out["encode_fp32"]
    out["decode_bf16/fp32"] = out["decode_bf16"] / out["decode_fp32"]
    return out


@torch.no_grad()
def bench_causal_conv(repeats: int) -> dict[str, float]:
    """CausalConv3d (2D over stacked time) vs nn.Conv3d with identical weights, on (16, 128, 3, 8, 8)."""
    torch.manual_seed(0)
    ours = CausalConv3d(128, 128, (3, 3, 3))
    ref = torch.nn.Conv3d(128, 128, 3, padding=(0, 1, 1))
    # our weight (Cout, kt*Cin, 3, 3) stacks time oldest first -> Conv3d weight (Cout, Cin, kt, 3, 3)
    ref.weight.copy_(ours.conv.weight.view(128, 3, 128, 3, 3).transpose(1, 2))
    ref.bias.copy_(ours.conv.bias)
    x = torch.randn(16, 128, 3, 8, 8)
    ref_fn = lambda: ref(F.pad(x, (0, 0, 0, 0, 2, 0)))  # noqa: E731
    err = float((ours(x) - ref_fn()).abs().max())
    t_ours, t_ref = _time(lambda: ours(x), repeats), _time(ref_fn, repeats)
    return {"max_abs_diff": err, "conv3d_ms": t_ref * 1e3, "ours_ms": t_ours * 1e3, "speedup": t_ref / t_ours}


def _alternating_steps(variants: dict[str, Callable[[], Any]], repeats: int, rounds: int) -> dict[str, dict[str, float]]:
    """Each variant's training step (`speed.StepModel` builders), timed in alternating rounds: per variant the median
    of the rounds' medians of `repeats` steps, and its FLOPs per step (counted in the first round)."""
    import statistics

    from duogen.speed import time_training_step

    times: dict[str, list[float]] = {k: [] for k in variants}
    flops: dict[str, float] = {}
    for r in range(rounds):
        for k, build in variants.items():
            torch.manual_seed(0)
            s = time_training_step(build(), "fp32", repeats, count_flops=r == 0)
            times[k].append(s.step_s)
            flops.setdefault(k, s.flops_per_step)
    return {k: {"s": statistics.median(times[k]), "flops": flops[k]} for k in variants}


def bench_channels_last(repeats: int, rounds: int = 2) -> dict[str, float]:
    """Seconds per tiny-codec training step, default layout vs channels-last weights (alternating rounds)."""
    from duogen.speed import codec_step

    def channels_last() -> Any:
        sm = codec_step()
        return sm._replace(model=sm.model.to(memory_format=torch.channels_last))

    t = _alternating_steps({"contiguous": codec_step, "channels_last": channels_last}, repeats, rounds)
    out = {k: v["s"] for k, v in t.items()}
    out["ratio"] = out["channels_last"] / out["contiguous"]
    return out


def bench_decoder_levels(repeats: int, rounds: int = 2) -> dict[str, float]:
    """The tiny codec recipe's training step with the preset's decoder (one level finer than the encoder's,
    16x16) against one with a second, full-resolution 32x32 stage (decoder_extra_levels=2): FLOPs per step
    (torch's counter) and seconds per step (alternating rounds, the median of the rounds' medians)."""
    from duogen.speed import codec_step

    t = _alternating_steps({k: (lambda k=k: codec_step(decoder_extra_levels=int(k))) for k in ("1", "2")}, repeats, rounds)
    return {"s_1": t["1"]["s"], "s_2": t["2"]["s"], "flops_1": t["1"]["flops"], "flops_2": t["2"]["flops"],
            "time_ratio": t["2"]["s"] / t["1"]["s"], "flops_ratio": t["2"]["flops"] / t["1"]["flops"]}


GRIDS = {"8x8 grid (preset)": {}, "16x16 grid": {"patch": 2}, "16x16 grid, 64 wide": {"patch": 2, "widths": [64]}}


def bench_grid(repeats: int, rounds: int = 2) -> dict[str, dict[str, float]]:
    """The tiny codec recipe's training step at the preset's 8x8 token grid against a 16x16 one (patch 2), at the
    preset's width and at 64: seconds and FLOPs per step, and each one's ratio to the preset's."""
    from duogen.speed import codec_step

    t = _alternating_steps({k: (lambda m=m: codec_step(**m)) for k, m in GRIDS.items()}, repeats, rounds)
    base = t[next(iter(GRIDS))]
    return {k: {**v, "time_ratio": v["s"] / base["s"], "flops_ratio": v["flops"] / base["flops"]} for k, v in t.items()}


def bench_latent_norm(repeats: int, rounds: int = 3) -> dict[str, float]:
    """The tiny codec recipe's training step with the preset's standardized latent channels (latent_norm=batch)
    against decorrelated ones (latent_norm=whiten): seconds per step (alternating rounds) and their ratio."""
    from duogen.speed import codec_step

    t = _alternating_steps({k: (lambda k=k: codec_step(latent_norm=k)) for k in ("batch", "whiten")}, repeats, rounds)
    return {"s_batch": t["batch"]["s"], "s_whiten": t["whiten"]["s"], "time_ratio": t["whiten"]["s"] / t["batch"]["s"]}


def bench_fsq_entropy(repeats: int, rounds: int = 3, weight: float = 0.01) -> dict[str, float]:
    """The tiny codec recipe's training step without and with FSQ's code-entropy term (`quantizers.fsq_entropy_loss`
    at `weight`): seconds per step (alternating rounds) and their ratio."""
    import dataclasses

    from duogen.speed import codec_step
    from duogen.train.tokenizer_recipe import VIDEO_RUN_PRESETS

    q = VIDEO_RUN_PRESETS["tiny"].model.quantizer
    variants = {k: (lambda w=w: codec_step(quantizer=dataclasses.replace(q, fsq_entropy_weight=w)))
                for k, w in (("off", 0.0), ("on", weight))}
    t = _alternating_steps(variants, repeats, rounds)
    return {"s_off": t["off"]["s"], "s_on": t["on"]["s"], "time_ratio": t["on"]["s"] / t["off"]["s"], "weight": weight}


def bench_compile(repeats: int, rounds: int = 3) -> dict[str, float]:
    """The tiny codec recipe's training step eager against its loss under `torch.compile` (what the engine's
    `train.compile=true` compiles for the AR and diffusion recipes): seconds per step (alternating rounds, each compiled round warmed up by two steps first) and the
    first compiled step's seconds (compiling included; later rounds and later processes reuse torch's caches)."""
    import statistics

    from duogen.speed import codec_step, time_training_step

    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    first_call = 0.0
    for r in range(rounds):
        for k in times:
            torch.manual_seed(0)
            sm = codec_step()
            if k == "compiled":
                sm = sm._replace(loss=torch.compile(sm.loss))
                opt = torch.optim.AdamW(sm.model.parameters(), lr=1e-4)
                for i in range(2):  # compile, and any recompile on the second call
                    t = time.perf_counter()
                    opt.zero_grad(set_to_none=True)
                    sm.loss(sm.model).backward()
                    opt.step()
                    if r == 0 and i == 0:
                        first_call = time.perf_counter() - t
            times[k].append(time_training_step(sm, "fp32", repeats, count_flops=False).step_s)
    eager, compiled = statistics.median(times["eager"]), statistics.median(times["compiled"])
    return {"s_eager": eager, "s_compiled": compiled, "time_ratio": compiled / eager, "first_call_s": first_call}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16)
    parts = ("throughput", "causal-conv", "channels-last", "decoder-levels", "grid", "latent-norm", "fsq-entropy",
             "compile")
    ap.add_argument("--only", choices=parts, action="append",
                    help="run only this part (repeatable; default: all). On a CPU without native bf16 the bf16"
                         " throughput part takes many minutes")
    a = ap.parse_args()
    run = set(a.only or parts)
    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"threads={torch.get_num_threads()} load_avg={os.getloadavg()[0]:.1f} cpus={os.cpu_count()}")
    for preset in ("tiny", "small") if "throughput" in run else ():
        r = bench_codec(preset, a.batch if preset == "tiny" else max(1, a.batch // 4), a.repeats)
        print(f"{preset:5s} {r['params_M']:.2f}M params | frames/s encode fp32 {r['encode_fp32']:8.0f} bf16 "
              f"{r['encode_bf16']:8.0f} (x{r['encode_bf16/fp32']:.2f}) | decode fp32 {r['decode_fp32']:8.0f} "
              f"bf16 {r['decode_bf16']:8.0f} (x{r['decode_bf16/fp32']:.2f})")
    if "causal-conv" in run:
        c = bench_causal_conv(a.repeats)
        print(f"causal 3x3x3 conv, 128 ch, 3x8x8: nn.Conv3d {c['conv3d_ms']:.1f} ms, ours (2D over stacked time) "
              f"{c['ours_ms']:.1f} ms, speedup x{c['speedup']:.2f}, max |diff| {c['max_abs_diff']:.1e}")
    if "channels-last" in run:
        t = bench_channels_last(a.repeats)
        print(f"tiny codec training step (batch 8): default layout {t['contiguous']:.3f} s, channels-last "
              f"{t['channels_last']:.3f} s, ratio x{t['ratio']:.3f} (< 1: channels-last faster)")
    if "decoder-levels" in run:
        d = bench_decoder_levels(a.repeats)
        print(f"tiny codec training step, decoder to 16x16 (preset) {d['s_1']:.3f} s {d['flops_1']:.3g} FLOPs, with a"
              f" 32x32 stage {d['s_2']:.3f} s {d['flops_2']:.3g} FLOPs: time x{d['time_ratio']:.2f}, FLOPs x{d['flops_ratio']:.2f}")
    if "grid" in run:
        for k, v in bench_grid(a.repeats).items():
            print(f"tiny codec training step, {k}: {v['s']:.3f} s {v['flops']:.3g} FLOPs (time x{v['time_ratio']:.2f},"
                  f" FLOPs x{v['flops_ratio']:.2f})")
    if "latent-norm" in run:
        n = bench_latent_norm(a.repeats)
        print(f"tiny codec training step, standardized latent (preset) {n['s_batch']:.3f} s, decorrelated"
              f" (latent_norm=whiten) {n['s_whiten']:.3f} s: time x{n['time_ratio']:.3f}")
    if "fsq-entropy" in run:
        e = bench_fsq_entropy(a.repeats)
        print(f"tiny codec training step, without FSQ's code-entropy term {e['s_off']:.3f} s, with it (weight"
              f" {e['weight']}) {e['s_on']:.3f} s: time x{e['time_ratio']:.3f}")
    if "compile" in run:
        c = bench_compile(a.repeats)
        print(f"tiny codec training step, eager {c['s_eager']:.3f} s, loss under torch.compile {c['s_compiled']:.3f} s:"
              f" time x{c['time_ratio']:.3f}; first compiled step {c['first_call_s']:.1f} s (compiling included)")
    print(f"load_avg after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
