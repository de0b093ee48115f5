"""Tokens/s of duogen's AR sampler vs `transformers` generate() (with its cache) vs no cache.

Same tiny model (the `tiny` ARConfig over a 1,400-id vocabulary, ~1.2M
parameters), same prompt, same number of new tokens (one 3x8x8 latent clip =
192 tokens), top-k 50 sampling; with and without classifier-free guidance
(duogen batches the conditional and unconditional streams; generate() uses its
`guidance_scale` + `negative_prompt_ids` logits processor, which runs the unconditional stream as a
second forward per step). The no-cache baseline times fewer tokens (--nocache-tokens; the
count is printed). Then the same rows with a peft LoRA (rank --lora-rank, non-zero B) on
q/k/v/o and the MLP of every layer, which duogen's decoder folds into its weight copies at each call
(W + scale B A, read from the live peft modules; generate() runs the peft modules)
(skip with --lora-rank 0). Prints a table and the ratios.

    .venv/bin/python bench/bench_ar_sampling.py [--threads 1] [--tokens 192] [--batch 1] [--lora-rank 8] [--clock cpu]

All contenders run with the same torch thread count (default 1: on a shared 2-core
machine one thread is several times faster for every contender at batch 1).
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for every contender (0 = torch's default); duogen's sampler inherits it here")
    ap.add_argument("--tokens", type=int, default=192)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--nocache-tokens", type=int, default=48, help="the no-cache baseline is slow; time fewer tokens")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="cpu: this process's CPU time (steadier than wall time when other jobs share the cores)")
    ap.add_argument("--lora-rank", type=int, default=8, help="LoRA rank of the adapted rows (0 = no LoRA rows)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from duogen.ar_models.layouts import LayoutSpec
    from duogen.ar_models.model import ARConfig, MultimodalLM
    from duogen.ar_models.sampling import LlamaDecoder, SamplingConfig, sample_plans
    from duogen.tokenizers.vocab import UnifiedVocab

    torch.manual_seed(0)
    vocab = UnifiedVocab(384, {"video": 1000})
    model = MultimodalLM(ARConfig(prefix_lm=False), vocab, LayoutSpec(latent=(3, 8, 8), tasks=["t2v"])).eval()
    lm = model.lm
    plan = model.layouts.decode_plan("t2v", [30, 40, 50, 60, 70])
    uplan = model.layouts.decode_plan("t2v", [])
    B, N = args.batch, args.tokens
    prefix = torch.tensor([plan.prefix] * B)
    uprefix = torch.tensor([uplan.prefix] * B)
    ranges = [plan.ranges[0]] * N
    dec = LlamaDecoder(lm, len(plan.prefix) + N + 1)

    def ours(guided: bool) -> int:
        cfg = SamplingConfig(top_k=50, guidance=3.0 if guided else None, threads=0)  # same threads as generate()
        sample_plans(dec, prefix, ranges, cfg, uprefix if guided else None, prefix_lm=False, seed=0)
        return B * N

    def hf(guided: bool, cache: bool = True, n: int = N) -> int:
        kw = dict(attention_mask=torch.ones_like(prefix), do_sample=True, top_k=50, max_new_tokens=n, min_new_tokens=n, use_cache=cache, pad_token_id=0)
        if guided:
            kw.update(guidance_scale=3.0, negative_prompt_ids=uprefix, negative_prompt_attention_mask=torch.ones_like(uprefix))
        with torch.inference_mode():
            lm.generate(prefix, **kw)
        return B * n

    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    def rate(fn, *a, **k) -> float:
        fn(*a, **k)  # warm-up
        best = 0.0
        for _ in range(args.repeats):
            t = clock()
            n = fn(*a, **k)
            best = max(best, n / (clock() - t))
        return best

    rows = {}
    for guided in (False, True):
        g = "guided" if guided else "plain"
        rows[f"duogen {g}"] = rate(ours, guided)
        try:
            rows[f"generate() cache {g}"] = rate(hf, guided)
            # without a cache generate() re-reads the whole sequence per token (and, guided, the
            # unconditional stream too: its guidance processor follows use_cache)
            rows[f"generate() no cache {g}"] = rate(hf, guided, cache=False, n=args.nocache_tokens)
        except Exception as e:  # a transformers version without guidance_scale
            print(f"generate() {g}: {type(e).__name__}: {e}")
    if args.lora_rank:
        from peft import LoraConfig, get_peft_model

        targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        get_peft_model(lm, LoraConfig(r=args.lora_rank, lora_alpha=2 * args.lora_rank, target_modules=targets,
                                      init_lora_weights=False))  # adapts lm's modules in place; the decoder follows
        for guided in (False, True):
            g = "guided" if guided else "plain"
            rows[f"duogen {g} lora"] = rate(ours, guided)
            try:
                rows[f"generate() cache {g} lora"] = rate(hf, guided)
            except Exception as e:
                print(f"generate() {g} lora: {type(e).__name__}: {e}")
    print(f"clock={args.clock} threads={torch.get_num_threads()} batch={B} new_tokens={N} (no-cache rows: {args.nocache_tokens})"
          f" params={sum(p.numel() for p in lm.parameters())/1e6:.1f}M")
    for k, v in rows.items():
        print(f"{k:32s} {v:9.1f} tokens/s")
    ratios = {}
    for g in ("plain", "guided", "plain lora", "guided lora"):
        for base, name in (("generate() cache", "generate()"), ("generate() no cache", "no cache")):
            if f"{base} {g}" in rows:
                ratios[f"{g}: duogen / {name}"] = rows[f"duogen {g}"] / rows[f"{base} {g}"]
    if "duogen plain lora" in rows:
        ratios["plain: lora / no lora"] = rows["duogen plain lora"] / rows["duogen plain"]
    for k, v in ratios.items():
        print(f"{k:32s} {v:9.2f}x")
    print(json.dumps({"tokens_per_s": rows, "ratios": ratios, "new_tokens": N, "nocache_tokens": args.nocache_tokens,
                      "lora_rank": args.lora_rank}))


if __name__ == "__main__":
    main()
