"""Training step time of duogen's DiT and U-Net against diffusers' at matched sizes, fp32 and bf16.

    .venv/bin/python bench/bench_denoisers.py [--batch 32] [--size 16] [--repeats 7]

One training step = forward, MSE loss, backward, AdamW step, on image latents
(B, 4, size, size) with a text condition of 8 tokens. Pairs (parameter counts
within ~10%, printed):

- duogen `DiT` (hidden 192, depth 6, text cross-attention, adaLN-Zero on time + pooled text)
  vs diffusers `DiTTransformer2DModel` (hidden 192, depth 5: its per-block label + timestep embedders make it
  heavier per block; class-conditional, its native conditioning);
- duogen `UNet` (channels 64, mult [1, 2], attention at the second level)
  vs diffusers `UNet2DConditionModel` with the same layout.

A third row runs duogen's DiT at the reference's depth without text (cross-attention skipped):
the same FLOPs as diffusers' DiT, so its ratio isolates kernel efficiency from architecture.
GFLOP per step (torch's FlopCounterMode, forward + backward) is printed for every model.

Each model's steps are interleaved with its reference's (same process, same
load), the median of `repeats` timed steps is kept, and the ratio
duogen / diffusers is printed (< 1 means duogen is faster). Goal: <= 1.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def step_time(model, make_inputs, precision: str, repeats: int) -> list[float]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    for i in range(repeats + 2):  # 2 warm-up steps
        args, target = make_inputs()
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = model(*args)
        out = out.sample if hasattr(out, "sample") else out
        loss = (out.float() - target).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return times


def paired(ours, theirs, inputs_ours, inputs_theirs, precision: str, repeats: int) -> tuple[float, float]:
    a, b = [], []
    for _ in range(repeats):  # interleave so both see the same machine load
        a += step_time(ours, inputs_ours, precision, 1)
        b += step_time(theirs, inputs_theirs, precision, 1)
    return statistics.median(a), statistics.median(b)


def step_gflops(model, make_inputs) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    args, target = make_inputs()
    with FlopCounterMode(display=False) as counter:
        out = model(*args)
        out = out.sample if hasattr(out, "sample") else out
        (out.float() - target).square().mean().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 1e9


def main() -> None:
    from diffusers import DiTTransformer2DModel, UNet2DConditionModel

    from duogen.diffusion.blocks import TextCond
    from duogen.diffusion.dit import DiT, DiTConfig
    from duogen.diffusion.unet import UNet, UNetConfig
    from duogen.utils import count_parameters

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=16, help="latent height = width")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    B, S, C, T, D = args.batch, args.size, 4, 8, 128
    torch.manual_seed(0)

    def text() -> TextCond:
        return TextCond(torch.randn(B, T, D), torch.ones(B, T, dtype=torch.bool), torch.randn(B, D))

    def ours_inputs():
        return (torch.randn(B, C, S, S), torch.randint(0, 1000, (B,)), text()), torch.randn(B, C, S, S)

    dit = DiT(DiTConfig(in_channels=C, hidden=192, depth=6, heads=6, patch_size=2, context_dim=D))
    ref_dit = DiTTransformer2DModel(num_attention_heads=6, attention_head_dim=32, in_channels=C, out_channels=C,
                                    num_layers=5, patch_size=2, sample_size=S, num_embeds_ada_norm=1000)

    def dit_ref_inputs():
        kw = (torch.randn(B, C, S, S), torch.randint(0, 1000, (B,)), torch.randint(0, 1000, (B,)))
        return kw, torch.randn(B, C, S, S)

    class DiTRef(torch.nn.Module):  # positional call: (x, timestep, class_labels)
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x, t, y):
            return self.m(x, timestep=t, class_labels=y).sample

    unet = UNet(UNetConfig(in_channels=C, channels=64, channel_mult=[1, 2], num_res_blocks=1, attention_levels=[1],
                           heads=4, context_dim=D))
    ref_unet = UNet2DConditionModel(
        sample_size=S, in_channels=C, out_channels=C, block_out_channels=(64, 128), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=D, attention_head_dim=32, norm_num_groups=32,
    )

    class UNetRef(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x, t, ctx):
            return self.m(x, t, encoder_hidden_states=ctx).sample

    def unet_ref_inputs():
        return (torch.randn(B, C, S, S), torch.randint(0, 1000, (B,)), torch.randn(B, T, D)), torch.randn(B, C, S, S)

    dit_same_flops = DiT(DiTConfig(in_channels=C, hidden=192, depth=5, heads=6, patch_size=2, context_dim=D))

    def no_text_inputs():
        (x, t, _), target = ours_inputs()
        return (x, t, None), target

    print(f"batch {B}, latents {C}x{S}x{S}, text {T}x{D}, threads {torch.get_num_threads()}")
    print(f"{'pair':<22}{'precision':<10}{'params duogen/diffusers':>24}{'GFLOP/step':>16}{'s duogen':>10}"
          f"{'s diffusers':>12}{'ratio':>7}")
    pairs = (("DiT (matched params)", dit, ours_inputs, DiTRef(ref_dit), dit_ref_inputs),
             ("DiT (matched FLOPs)", dit_same_flops, no_text_inputs, DiTRef(ref_dit), dit_ref_inputs),
             ("U-Net", unet, ours_inputs, UNetRef(ref_unet), unet_ref_inputs))
    for name, ours, inputs, theirs, ref_inputs in pairs:
        po, pt = count_parameters(ours), count_parameters(theirs)
        fo, ft = step_gflops(ours, inputs), step_gflops(theirs, ref_inputs)
        for precision in ("fp32", "bf16"):
            a, b = paired(ours, theirs, inputs, ref_inputs, precision, args.repeats)
            print(f"{name:<22}{precision:<10}{po / 1e6:>11.2f}M /{pt / 1e6:>6.2f}M{fo:>8.1f} /{ft:>5.1f}"
                  f"{a:>10.3f}{b:>12.3f}{a / b:>7.2f}", flush=True)


if __name__ == "__main__":
    main()
