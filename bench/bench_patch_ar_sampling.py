"""Seconds per clip of the patch-level AR sampler (`PatchAR.sample`, KV-cached global model) against the same model
read without the cache (the global model over the whole prefix at every block, the first sampler's way) and against
the flat one-layer AR model the demo used before (`generate_ids` with its KV-cached `LlamaDecoder`).

The demo's sizes: a 3x8x8 latent clip of 1,000 codec ids, a 512-piece text tokenizer (`speed.synthetic_text`), the
patch model at `DEMO_AR_MODEL` (4 global layers, 64-wide local model), the flat model at the `tiny` preset with one
layer. Untrained weights: the cost of a step does not depend on them. Guidance 3 (two streams), `--batch` clips per
call (16, as `duogen compare --per-call 16` draws them). Prints a table and the ratios; the median of `--repeats`.

    .venv/bin/python bench/bench_patch_ar_sampling.py [--threads 1] [--batch 16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
import warnings

import torch


def sample_without_cache(model, text_ids, guidance, generator):
    """The patch model's sampler as it first was: `global_states` over the prompt and every block so far, per block."""
    B = len(text_ids)
    text = torch.cat([model.text_block(text_ids), model.text_block([[]] * B)])
    x = text.new_zeros(B, 0, model.k)
    for _ in range(model.n_patches):
        state = model.global_states(text, torch.cat([x, x]))[:, -1]
        prev = text.new_zeros(B, 0)
        for _ in range(model.k):
            logp = model.local_logits(state, torch.cat([prev, prev]))[:, -1].float().log_softmax(-1)
            logp = logp[B:] + guidance * (logp[:B] - logp[B:])
            prev = torch.cat([prev, torch.multinomial(logp.softmax(-1), 1, generator=generator)], 1)
        x = torch.cat([x, prev[:, None]], 1)
    return model.from_patches(x)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for every contender")
    ap.add_argument("--batch", type=int, default=16, help="clips per call")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from duogen.ar_models.layouts import LayoutSpec
    from duogen.ar_models.model import MultimodalLM
    from duogen.ar_models.patch import PatchAR, patch_config
    from duogen.ar_models.sampling import SamplingConfig, generate_ids
    from duogen.demo import DEMO_AR_MODEL
    from duogen.speed import synthetic_text
    from duogen.tokenizers.vocab import UnifiedVocab
    from duogen.train.ar_recipe import AR_RECIPE_PRESETS

    torch.manual_seed(0)
    text, captions = synthetic_text(vocab_size=512)
    preset = AR_RECIPE_PRESETS["tiny"]
    patch = PatchAR(patch_config(dataclasses.replace(preset.model, **DEMO_AR_MODEL), preset.max_text), (3, 8, 8),
                    1000, text.vocab_size).eval()
    flat = MultimodalLM(dataclasses.replace(preset.model, layers=1), UnifiedVocab(text.vocab_size, {"video": 1000}),
                        LayoutSpec(max_text=preset.max_text, latent=(3, 8, 8), tasks=["t2v"]), text).eval()
    decoder = flat.decoder()
    prompts = [captions[i % len(captions)] for i in range(args.batch)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ids = [text.encode_prompt(p, preset.max_text) for p in prompts]
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    contenders = {
        "patch AR, KV cache (duogen)": lambda: patch.sample(ids, guidance=3.0, generator=g()),
        "patch AR, no cache": lambda: sample_without_cache(patch, ids, 3.0, g()),
        "flat one-layer AR (duogen's LlamaDecoder)": lambda: generate_ids(
            flat, prompts, "t2v", n=1, seed=0, sampling=SamplingConfig(guidance=3.0), decoder=decoder),
    }
    rows = {}
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, fn in contenders.items():
            fn()  # warm-up
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                out = fn()
                times.append(time.perf_counter() - t0)
            assert tuple(out.shape[-3:]) == (3, 8, 8) or out.shape[-1] == 192, out.shape
            rows[name] = statistics.median(times) / args.batch
    names = list(rows)
    res = {"s_per_clip": rows, "threads": args.threads, "batch": args.batch,
           "cache_speedup": rows[names[1]] / rows[names[0]], "patch_vs_flat": rows[names[0]] / rows[names[2]]}
    if args.json:
        print(json.dumps(res, indent=1))
    else:
        print(f"{'sampler (guidance 3, 3x8x8 clip)':45s} s/clip")
        for name, s in rows.items():
            print(f"{name:45s} {s:.4f}")
        print(f"the KV cache: {res['cache_speedup']:.2f}x faster; patch / flat time: {res['patch_vs_flat']:.2f}")
    return res


if __name__ == "__main__":
    main()
