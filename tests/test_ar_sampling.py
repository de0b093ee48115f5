"""Sampling: cached decoding equals a full forward, guidance identities, constraints, seeds, callback."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from duogen.ar_models.layouts import LayoutSpec
from duogen.ar_models.model import ARConfig, MultimodalLM
from duogen.ar_models.sampling import LlamaDecoder, SamplingConfig, _filter, generate_ids, sample_plans
from duogen.errors import DataError
from duogen.tokenizers.text import train_text_tokenizer
from duogen.tokenizers.vocab import UnifiedVocab

CAPS = [f"a {c} {s} moves {d}" for c in ("red", "blue") for s in ("circle", "square") for d in ("left", "right")]
CFG = ARConfig(hidden=64, layers=2, heads=4, kv_heads=2, mlp=128)


pytestmark = pytest.mark.usefixtures("one_thread")


def build(prefix_lm=True, seed=0, factorized=False, text_layers=0):
    torch.manual_seed(seed)
    text = train_text_tokenizer(CAPS, None, vocab_size=320)
    vocab = UnifiedVocab(text.vocab_size, {"video": 64, "audio": (16, 2)})
    spec = LayoutSpec(max_text=12, latent=(2, 4, 4), tasks=["t2v", "t2i", "i2v", "t2a"], audio_tokens=5, audio_levels=2)
    cfg = ARConfig(**{**CFG.__dict__, "prefix_lm": prefix_lm, "factorized_positions": factorized,
                      "text_layers": text_layers})
    m = MultimodalLM(cfg, vocab, spec, text).eval()
    # random init leaves logits nearly flat; sharpen them so that sampling choices are decided by the model
    with torch.no_grad():
        m.lm.lm_head.weight.mul_(20)
        if factorized:  # the position tables start at zero; give them values so they matter
            for p in m.visual_pos.parameters():
                p.normal_(0, 0.5)
        if text_layers:  # its output projections and positions start at zero too
            for p in m.text_context.parameters():
                p.normal_(0, 0.3)
    return m


@pytest.fixture(scope="module")
def model():
    return build()


@pytest.mark.parametrize("prefix_lm,factorized,text_layers", [(True, False, 0), (False, False, 0), (True, True, 0),
                                                               (False, True, 1), (True, False, 1)])
def test_cached_decoding_equals_full_forward(prefix_lm, factorized, text_layers):
    m = build(prefix_lm, factorized=factorized, text_layers=text_layers)
    plan = m.layouts.decode_plan("t2v", m.encode_prompt("a red circle moves left"))
    P = len(plan.prefix)
    ids = torch.tensor([plan.prefix + list(range(m.vocab.range("video").start, m.vocab.range("video").start + 20))] * 2)
    ids[1, P:] = ids[1, P:].flip(0)
    with torch.no_grad():
        full = m(ids, torch.tensor([P, P]))  # (B,T,V), transformers' own forward
    dec = m.decoder()
    dec.reset(2)
    with torch.inference_mode():
        h = dec.forward(ids[:, :P], 0, bidirectional=prefix_lm)
        errs = [(dec.logits(h) - full[:, P - 1]).abs().max()]
        for t in range(P, ids.shape[1] - 1):  # one token at a time through the KV cache
            errs.append((dec.logits(dec.forward(ids[:, t : t + 1], t)) - full[:, t]).abs().max())
        dec.reset(2)  # and a chunk after a cached prefix
        dec.forward(ids[:, :P], 0, bidirectional=prefix_lm)
        h = dec.forward(ids[:, P:], P)
        errs.append((dec.logits(h) - full[:, -1]).abs().max())
    assert max(errs) < 1e-4  # float32


def test_greedy_matches_transformers_generate():
    """A causal model, unconstrained range, greedy: token for token what generate() gives."""
    m = build(prefix_lm=False)
    plan = m.layouts.decode_plan("t2v", m.encode_prompt("a blue square"))
    prefix = torch.tensor([plan.prefix])
    ours = sample_plans(LlamaDecoder(m.lm, m.max_len), prefix, [(0, m.vocab.size)] * 24, SamplingConfig(temperature=0), prefix_lm=False)
    with torch.inference_mode():
        ref = m.lm.generate(prefix, attention_mask=torch.ones_like(prefix), do_sample=False, max_new_tokens=24, min_new_tokens=24, pad_token_id=0)
    assert torch.equal(ours, ref[:, prefix.shape[1] :])


def test_guidance_one_equals_conditional_sampling(model):
    s = dict(temperature=1.0, top_k=20, top_p=0.9)
    prompts = ["a red circle moves left", "a blue square moves right"]
    cond = generate_ids(model, prompts, n=2, seed=7, sampling=SamplingConfig(**s))
    for neg in (None, "a red square"):
        g1 = generate_ids(model, prompts, n=2, seed=7, sampling=SamplingConfig(**s, guidance=1.0), negative_prompt=neg)
        assert torch.equal(cond, g1)
    g3 = generate_ids(model, prompts, n=2, seed=7, sampling=SamplingConfig(**s, guidance=3.0))
    assert not torch.equal(cond, g3)


def test_guidance_zero_gives_the_unconditional_logits(model):
    """At s = 0 the guided logits are the unconditional stream's (here: the negative prompt's)."""
    seen = []
    generate_ids(model, ["a red circle moves left"], seed=1, sampling=SamplingConfig(temperature=0, guidance=0.0),
                 negative_prompt="a blue square moves right", callback=lambda n, p, lg, t: seen.append(lg.clone()))
    alone = []
    generate_ids(model, ["a blue square moves right"], seed=1, sampling=SamplingConfig(temperature=0),
                 callback=lambda n, p, lg, t: alone.append(lg.clone()))
    assert len(seen) == len(alone) == 32
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(seen, alone))


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    temperature=st.sampled_from([0.0, 0.5, 1.0, 3.0]),
    top_k=st.sampled_from([0, 1, 5, 1000]),
    top_p=st.sampled_from([1.0, 0.9, 0.3]),
    guidance=st.sampled_from([None, 1.0, 4.0]),
    task=st.sampled_from(["t2v", "t2i", "t2a"]),
)
def test_constrained_sampling_stays_in_range(model, seed, temperature, top_k, top_p, guidance, task):
    s = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p, guidance=guidance)
    seen = []
    plan = model.layouts.decode_plan(task, [])
    out = generate_ids(model, ["a red circle"], task, n=2, seed=seed, sampling=s,
                       callback=lambda n, p, lg, t: seen.append(t.clone()))
    # the codec ids are valid for the active codec (and level, for residual audio) ...
    if task == "t2a":
        assert out.shape == (2, 5, 2) and int(out.min()) >= 0 and int(out.max()) < 16
    else:
        assert out.shape == ((2, 2, 4, 4) if task == "t2v" else (2, 1, 4, 4))
        assert int(out.min()) >= 0 and int(out.max()) < 64
    # ... because every global id came from its position's range
    g = seen[-1]
    for n, (lo, hi) in enumerate(plan.ranges[: g.shape[1]]):
        assert ((g[:, n] >= lo) & (g[:, n] < hi)).all()


def test_seeds_reproduce_and_differ(model):
    s = SamplingConfig(temperature=1.0)
    a = generate_ids(model, ["a red circle"], n=3, seed=5, sampling=s)
    b = generate_ids(model, ["a red circle"], n=3, seed=5, sampling=s)
    c = generate_ids(model, ["a red circle"], n=3, seed=6, sampling=s)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_top_k_one_is_greedy(model):
    a = generate_ids(model, ["a blue square"], n=2, seed=1, sampling=SamplingConfig(temperature=1.0, top_k=1))
    b = generate_ids(model, ["a blue square"], n=2, seed=2, sampling=SamplingConfig(temperature=0))
    assert torch.equal(a, b)


# probabilities 0.1, 0.5, 0.15, 0.25 (row 0) and the same mass in another order (row 1)
PROBS = torch.tensor([[0.1, 0.5, 0.15, 0.25], [0.25, 0.15, 0.1, 0.5]])


@pytest.mark.parametrize("top_p, kept", [
    (0.4, [0.5]),  # 0.5 >= 0.4 already
    (0.6, [0.5, 0.25]),  # 0.5 < 0.6 <= 0.75
    (0.8, [0.5, 0.25, 0.15]),  # 0.75 < 0.8 <= 0.9
    (0.95, [0.5, 0.25, 0.15, 0.1]),
    (1.0, [0.5, 0.25, 0.15, 0.1]),  # off
])
def test_top_p_keeps_the_smallest_set_that_reaches_p(top_p, kept):
    logits = PROBS.log()
    out = _filter(logits.clone(), top_k=0, top_p=top_p)
    keep = torch.isin(PROBS, torch.tensor(kept))  # the probabilities are distinct, so this names the tokens
    assert torch.equal(out[keep], logits[keep])  # kept logits are untouched
    assert torch.isneginf(out[~keep]).all()


def test_top_p_stops_when_the_mass_reaches_p_exactly():
    """0.5 + 0.25 = 0.75 exactly (dyadic, so exact in floating point): top_p = 0.75 keeps two tokens, not three."""
    probs = torch.tensor([[0.125, 0.5, 0.125, 0.25]])
    out = _filter(probs.log(), top_k=0, top_p=0.75)
    assert torch.isfinite(out).tolist() == [[False, True, False, True]]


@pytest.mark.parametrize("k", [1, 2, 3, 4, 10])
def test_top_k_keeps_exactly_k(k):
    logits = PROBS.log()
    out = _filter(logits.clone(), top_k=k, top_p=1.0)
    keep = PROBS >= PROBS.sort(dim=-1, descending=True).values[:, min(k, 4) - 1 : min(k, 4)]
    assert (torch.isfinite(out).sum(-1) == min(k, 4)).all()
    assert torch.equal(out[keep], logits[keep]) and torch.isneginf(out[~keep]).all()


def test_filter_matches_transformers_warpers():
    """Random logits (ties and exact boundaries have probability 0): the same kept set as transformers' warpers."""
    from transformers import TopKLogitsWarper, TopPLogitsWarper

    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(0)) * 2
    ids = torch.zeros(6, 1, dtype=torch.long)
    for top_k, top_p in [(0, 0.9), (0, 0.3), (10, 1.0), (10, 0.5), (1, 0.9)]:
        ref = logits.clone()
        if top_k:
            ref = TopKLogitsWarper(top_k)(ids, ref)
        if top_p < 1.0:
            ref = TopPLogitsWarper(top_p)(ids, ref)
        ours = _filter(logits.clone(), top_k, top_p)
        assert torch.equal(torch.isfinite(ours), torch.isfinite(ref)), (top_k, top_p)
        assert torch.equal(ours[torch.isfinite(ours)], logits[torch.isfinite(ours)])


def test_callback_sees_every_step_and_can_steer(model):
    calls = []

    def force_seven(n, pos, logits, tokens):
        calls.append((n, pos, tuple(logits.shape), tuple(tokens.shape)))
        out = torch.full_like(logits, float("-inf"))
        out[:, 7] = 0.0
        return out

    plan = model.layouts.decode_plan("t2v", model.encode_prompt("a red circle"))
    out = generate_ids(model, ["a red circle"], n=2, sampling=SamplingConfig(), callback=force_seven)
    assert (out == 7).all()
    assert [c[0] for c in calls] == list(range(32))
    assert calls[0][1] == len(plan.prefix) and calls[0][2] == (2, 64) and calls[5][3] == (2, 5)


@pytest.mark.parametrize("top_p", [1.0, 0.999])  # 1.0: the top-k-only path; 0.999: the masking path (same set here)
def test_top_k_sampling_draws_from_the_softmax_of_the_k_largest(model, top_p):
    """Fixed logits (forced through the callback): top-k 3 at temperature 2 gives the three largest ids with
    frequencies softmax(top-3 logits / 2) and never another id (8 x 32 x 16 = 4,096 draws)."""
    fixed = torch.tensor([0.0, 3.0, 1.0, 2.5, -1.0, 2.0] + [-2.0] * 58)

    def force(n, pos, logits, tokens):
        return fixed.expand_as(logits).clone()

    s = SamplingConfig(temperature=2.0, top_k=3, top_p=top_p)
    out = generate_ids(model, ["a red circle"] * 8, n=16, seed=3, sampling=s, callback=force).flatten()
    counts = torch.bincount(out, minlength=64).double()
    assert counts[[1, 3, 5]].sum() == out.numel()  # ids 1, 3, 5 hold the three largest logits
    want = (fixed[[1, 3, 5]] / 2.0).softmax(-1).double()
    assert torch.allclose(counts[[1, 3, 5]] / out.numel(), want, atol=0.03), (counts[[1, 3, 5]] / out.numel(), want)


def test_i2v_keeps_the_given_frames_as_prefix(model):
    first = np.arange(16).reshape(1, 4, 4)
    plan = model.layouts.decode_plan("i2v", [], {"first": first})
    start = model.vocab.range("video").start
    assert plan.prefix[-16:] == [start + i for i in range(16)]
    assert generate_ids(model, ["x"], "i2v", sampling=SamplingConfig(), cond={"first": first}).shape == (1, 1, 4, 4)


def test_bad_sampling_settings(model):
    with pytest.raises(DataError, match="top_p"):
        generate_ids(model, ["a"], sampling=SamplingConfig(top_p=0.0))
    with pytest.raises(DataError, match="temperature"):
        generate_ids(model, ["a"], sampling=SamplingConfig(temperature=-1))
    with pytest.raises(DataError, match="no prompts"):
        generate_ids(model, [], sampling=SamplingConfig())


def first_frame_gap(m, prompts, out, task="t2v", cond=None):
    """Each row's sum over its output's first latent frame of log p(id | prompt) - log p(id | no prompt), from the
    model's full forward (transformers' own), each over the video range's softmax, as the sampler draws."""
    lo, hi = m.vocab.range("video").start, m.vocab.range("video").stop
    L0 = m.spec.latent[1] * m.spec.latent[2]
    sums = []
    for rows in ([m.encode_prompt(p) for p in prompts], [[]] * len(prompts)):
        prefix = torch.tensor([m.layouts.decode_plan(task, r, cond).prefix for r in rows])
        P = prefix.shape[1]
        ids = torch.cat([prefix, out[:, :L0]], 1)
        with torch.no_grad():
            lp = m(ids, torch.tensor([P] * len(rows)))[:, P - 1 : -1, lo:hi].float().log_softmax(-1)
        sums.append(lp.gather(2, (out[:, :L0] - lo)[..., None])[..., 0].sum(1))
    return sums[0] - sums[1]


@pytest.mark.parametrize("task", ["t2v", "i2v"])
def test_layout_candidates_keep_the_first_frame_the_prompt_explains_best(model, task):
    """The flat model's layout candidates, as the patch model's: the K candidates are the first frames plain guided
    sampling of the K-times repeated prompts draws (same seed); the kept one has the largest prompt-vs-no-prompt
    gap by the full forward, and the frames after it are drawn given it."""
    cond = {"first": np.arange(16).reshape(1, 4, 4)} if task == "i2v" else None
    prompts, K, cfg = ["a red circle moves left", "a blue square moves right"], 3, SamplingConfig(guidance=3.0)
    kept = generate_ids(model, prompts, task, seed=4, sampling=cfg, cond=cond, layout_candidates=K)
    rows = [p for p in prompts for _ in range(K)]
    plain = generate_ids(model, rows, task, seed=4, sampling=cfg, cond=cond)  # (6, f, 4, 4) codec ids
    lo = model.vocab.range("video").start
    flat = plain.reshape(len(rows), -1) + lo  # back to global ids, output order
    scores = first_frame_gap(model, rows, flat, task, cond).view(2, K)
    best = plain[scores.argmax(1) + torch.arange(2) * K]
    assert len({tuple(c.flatten().tolist()) for c in plain[:K, 0]}) > 1  # the candidates differ
    assert torch.equal(kept[:, 0], best[:, 0])
    # the rest is drawn given the kept frame: greedy decoding matches the full forward's argmax after it
    greedy = generate_ids(model, prompts, task, seed=4, cond=cond, layout_candidates=K,
                          sampling=SamplingConfig(temperature=0))
    out = greedy.reshape(2, -1) + lo
    prefix = torch.tensor([model.layouts.decode_plan(task, model.encode_prompt(p), cond).prefix for p in prompts])
    P = prefix.shape[1]
    with torch.no_grad():
        logits = model(torch.cat([prefix, out], 1), torch.tensor([P, P]))[:, P - 1 : -1, lo : model.vocab.range("video").stop]
    assert torch.equal(logits.argmax(-1)[:, 16:] + lo, out[:, 16:])


def test_the_sampler_score_is_the_full_forward_gap_the_bench_reads(model):
    """`sample_plans(gap=)` sums each drawn id's prompt-vs-no-prompt log-probability gap through the KV cache; the
    paired bench (bench/bench_layout_candidates.py) reads the same gap of a flat model's clips by the full forward."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("blc", Path(__file__).parents[1] / "bench" / "bench_layout_candidates.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    cap = "a red circle moves left"
    plan, unc = (model.layouts.decode_plan("t2v", t) for t in (model.encode_prompt(cap), []))
    gap = torch.zeros(3)
    out = sample_plans(model.decoder(), torch.tensor([plan.prefix] * 3), plan.ranges[:16], SamplingConfig(guidance=2.0),
                       torch.tensor([unc.prefix] * 3), model.cfg.prefix_lm, seed=1, gap=gap)
    ids = torch.cat([out, out], 1) - model.vocab.range("video").start  # two latent frames of codec ids
    full = bench.flat_gap(model, cap, ids.reshape(3, 2, 4, 4))
    assert torch.allclose(gap, full, atol=1e-3) and gap.abs().max() > 0.1
    assert torch.allclose(full, first_frame_gap(model, [cap] * 3, out), atol=1e-5)


def test_layout_candidates_refuse_what_they_cannot_rank(model):
    with pytest.raises(DataError, match="task t2a"):
        generate_ids(model, ["a red circle"], "t2a", sampling=SamplingConfig(), layout_candidates=2)
    with pytest.raises(DataError, match="callback"):
        generate_ids(model, ["a red circle"], sampling=SamplingConfig(), layout_candidates=2,
                     callback=lambda *a: None)
    with pytest.raises(DataError, match=">= 1"):
        generate_ids(model, ["a red circle"], sampling=SamplingConfig(), layout_candidates=0)
    plan = model.layouts.decode_plan("t2v", model.encode_prompt("a red circle"))
    with pytest.raises(DataError, match="both streams"):  # the score needs the no-prompt stream
        sample_plans(model.decoder(), torch.tensor([plan.prefix]), plan.ranges[:4], SamplingConfig(), gap=torch.zeros(1))


# ----------------------------------------------------------------------------- the sampler follows the live model

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def greedy(m, dec, prompt="a red circle moves left", n=16, guidance=None):
    """Greedy decoding over the whole vocabulary -> (prefix (1,P), output ids (1,n))."""
    plan = m.layouts.decode_plan("t2v", m.encode_prompt(prompt))
    prefix = torch.tensor([plan.prefix])
    uncond = torch.tensor([m.layouts.decode_plan("t2v", []).prefix]) if guidance else None
    out = sample_plans(dec, prefix, [(0, m.vocab.size)] * n, SamplingConfig(temperature=0, guidance=guidance), uncond,
                       prefix_lm=m.cfg.prefix_lm)
    return prefix, out


def full_argmax(m, prefix, out):
    """The argmax of the model's own full (teacher-forced) forward at every output position."""
    ids = torch.cat([prefix, out], 1)
    P = prefix.shape[1]
    with torch.no_grad():
        logits = m(ids, torch.tensor([P]))  # (1,T,V)
    return logits[:, P - 1 : -1].argmax(-1)


def add_lora(m, names=("style",), seed=1, dora=False):
    """peft LoRA on q/k/v/o and the MLP with non-zero B (a fresh LoRA is a no-op), one adapter per name."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS, init_lora_weights=False, use_dora=dora)
    peft_model = get_peft_model(m.lm, cfg, adapter_name=names[0])
    for name in names[1:]:
        peft_model.add_adapter(name, cfg)
    with torch.no_grad():  # LoRA's B starts at zero unless asked otherwise; make every adapter matter
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.3)
    return peft_model


@pytest.mark.parametrize("prefix_lm,dora", [(False, False), (True, False), (False, True)])
def test_lora_greedy_sampling_equals_the_adapted_full_forward(prefix_lm, dora):
    """Plain LoRA runs fused into the decoder's weight copies, DoRA through peft's modules: both as the model does."""
    m = build(prefix_lm)
    dec = m.decoder()  # built before the adapters exist
    _, base = greedy(m, dec)
    add_lora(m, dora=dora)
    assert hasattr(m.lm.model.layers[0].self_attn.q_proj, "lora_A")  # peft wrapped the live modules in place
    prefix, out = greedy(m, dec)
    assert torch.equal(out, full_argmax(m, prefix, out))
    assert not torch.equal(out, base)  # the adapters change what is sampled


def test_adapters_switch_disable_and_weight_between_calls():
    from peft.helpers import rescale_adapter_scale

    m = build(prefix_lm=False)
    _, base = greedy(m, m.decoder())
    pm = add_lora(m, names=("style", "other"))
    dec = m.decoder()
    outs = {}
    for name in ("style", "other"):
        pm.set_adapter(name)
        prefix, outs[name] = greedy(m, dec)
        assert torch.equal(outs[name], full_argmax(m, prefix, outs[name])), name
    assert not torch.equal(outs["style"], outs["other"])
    with pm.disable_adapter():
        assert torch.equal(greedy(m, dec)[1], base)
    with rescale_adapter_scale(pm, 0.0):  # the active adapter ("other") weighted by 0: the base model
        assert torch.equal(greedy(m, dec)[1], base)
    with rescale_adapter_scale(pm, 0.4):  # weighted by 0.4: the model the teacher-forced forward sees
        prefix, half = greedy(m, dec)
        assert torch.equal(half, full_argmax(m, prefix, half))
    assert not torch.equal(half, outs["other"]) and not torch.equal(half, base)
    assert torch.equal(greedy(m, dec)[1], outs["other"])  # and back


@pytest.mark.parametrize("edit", ["in place", "through .data", "new parameter", "head in place"])
def test_a_weight_edit_after_building_the_decoder_is_used(edit):
    m = build(prefix_lm=False)
    dec = m.decoder()
    prefix, before = greedy(m, dec)
    mlp = m.lm.model.layers[0].mlp
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        if edit == "in place":
            mlp.down_proj.weight.add_(torch.randn(mlp.down_proj.weight.shape, generator=g))
        elif edit == "through .data":  # what an EMA swap does: no version-counter bump
            mlp.down_proj.weight.data.copy_(torch.randn(mlp.down_proj.weight.shape, generator=g))
        elif edit == "new parameter":
            m.lm.model.layers[1].self_attn.q_proj.weight = torch.nn.Parameter(
                torch.randn(m.lm.model.layers[1].self_attn.q_proj.weight.shape, generator=g))
        else:
            m.lm.lm_head.weight.add_(5 * torch.randn(m.lm.lm_head.weight.shape, generator=g))
    prefix, after = greedy(m, dec)
    assert not torch.equal(after, before)
    assert torch.equal(after, full_argmax(m, prefix, after))


def test_a_forward_hook_on_a_projection_is_honoured():
    m = build(prefix_lm=False)
    dec = m.decoder()
    _, before = greedy(m, dec)
    handle = m.lm.model.layers[1].mlp.down_proj.register_forward_hook(lambda mod, args, out: out * -4.0)
    try:
        prefix, after = greedy(m, dec)
        assert not torch.equal(after, before) and torch.equal(after, full_argmax(m, prefix, after))
    finally:
        handle.remove()
    assert torch.equal(greedy(m, dec)[1], before)


def test_an_edit_within_a_sampling_call_is_used_at_the_next_step():
    """The transposed copies are re-checked against the weights' version counters before every step."""
    m = build(prefix_lm=False)
    dec = m.decoder()
    ids = torch.tensor([m.layouts.decode_plan("t2v", m.encode_prompt("a red circle")).prefix])
    with torch.inference_mode():
        dec.reset(1)
        h = dec.forward(ids, 0)
        dec.logits(h)
    with torch.no_grad():
        m.lm.lm_head.weight.mul_(-1)
    with torch.inference_mode():
        torch.testing.assert_close(dec.logits(h), h @ m.lm.lm_head.weight.T)
