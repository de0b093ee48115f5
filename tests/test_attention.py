"""Attention processors on both paradigms: one call object, identity = bit for bit, every layer at every step
with its step index and guidance role, replaced probabilities reach the output (decode and teacher-forced)."""

import pytest
import torch

from duogen.ar_models.sampling import SamplingConfig, generate_ids, sample_plans
from duogen.attention import (AttentionStore, apply_probs, attention_context, attention_probs, attention_processor,
                              sdpa)
from duogen.diffusion.blocks import TextCond
from duogen.diffusion.dit import DiT, DiTConfig
from duogen.diffusion.sampling import ddim_invert, sample
from duogen.diffusion.schedulers import DDIMScheduler
from duogen.diffusion.schedules import NoiseSchedule
from test_ar_sampling import build

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["a red circle moves left", "a blue square moves right"]


class Recorder:
    """An identity processor that notes (layer, step, role, batch, query tokens) of every call."""

    def __init__(self):
        self.seen = []

    def __call__(self, call):
        self.seen.append((call.module.name, call.step, call.role, call.q.shape[0], call.q.shape[2]))
        return sdpa(call)


def uniform(call):
    """Replace the probabilities: every allowed key gets the same weight (scores of a zero query)."""
    return apply_probs(call, attention_probs(call._replace(q=torch.zeros_like(call.q))))


# ----------------------------------------------------------------------------- AR


@pytest.fixture(scope="module")
def ar():
    return build(prefix_lm=False)  # 4 query heads over 2 key/value heads: grouped-query attention


def logits_of(m, **kw):
    seen = []
    ids = generate_ids(m, PROMPTS, n=2, seed=5, callback=lambda n, p, lg, t: seen.append(lg.clone()), **kw)
    return ids, torch.stack(seen)


@pytest.mark.parametrize("guidance", [None, 3.0])
def test_ar_identity_processor_decodes_bit_for_bit(ar, guidance):
    s = SamplingConfig(temperature=1.0, top_k=20, guidance=guidance)
    ids, logits = logits_of(ar, sampling=s)
    with attention_processor(ar, sdpa):
        ids_p, logits_p = logits_of(ar, sampling=s)
    assert torch.equal(ids, ids_p) and torch.equal(logits, logits_p)
    with attention_processor(ar, uniform):
        assert not torch.equal(logits_of(ar, sampling=s)[1], logits)  # and a replacing processor does act


@pytest.mark.parametrize("prefix_lm", [False, True])
def test_ar_identity_processor_keeps_the_teacher_forced_forward_bit_for_bit(prefix_lm):
    m = build(prefix_lm)
    ids = torch.randint(0, m.vocab.size, (3, 30), generator=torch.Generator().manual_seed(0))
    prefix_len = torch.tensor([12, 12, 12])
    with torch.no_grad():
        ref = m(ids, prefix_len)
        with attention_processor(m, sdpa):
            same = m(ids, prefix_len)
        with attention_processor(m, uniform):
            changed = m(ids, prefix_len)
    assert torch.equal(ref, same)
    assert (changed - ref).abs().max() > 1e-2


@pytest.mark.parametrize("guidance", [None, 2.0])
def test_ar_recording_processor_sees_every_layer_at_every_step_with_its_role(ar, guidance):
    N, B = 32, 4  # 2 prompts x 2 samples; a t2v clip is 2x4x4 = 32 tokens
    rec = Recorder()
    with attention_processor(ar, rec):
        generate_ids(ar, PROMPTS, n=2, sampling=SamplingConfig(guidance=guidance))
    P = len(ar.layouts.decode_plan("t2v", []).prefix)
    layers = [f"lm.model.layers.{i}.self_attn" for i in range(ar.cfg.layers)]
    roles = ["cond", "uncond"] if guidance else ["cond"]
    want = [(name, step, role, B, P if step == 0 else 1) for step in range(N) for name in layers for role in roles]
    assert rec.seen == want  # in call order: step by step, layer by layer, cond before uncond


def test_ar_teacher_forced_forward_is_told_the_step_and_roles_it_runs_under(ar):
    ids = torch.randint(0, ar.vocab.size, (4, 20), generator=torch.Generator().manual_seed(1))
    rec = Recorder()
    with torch.no_grad(), attention_processor(ar, rec):
        ar(ids)  # outside a sampler: no step, the conditional role
        with attention_context(step=7, roles=("cond", "uncond")):
            ar(ids)
    names = [f"lm.model.layers.{i}.self_attn" for i in range(ar.cfg.layers)]
    assert rec.seen == [(n, None, "cond", 4, 20) for n in names] + [
        (n, 7, role, 2, 20) for n in names for role in ("cond", "uncond")]


def test_ar_replaced_probabilities_are_the_same_in_decoding_and_in_the_full_forward(ar):
    """Uniform attention installed once: the decoder's logits at every step are the teacher-forced forward's."""
    plan = ar.layouts.decode_plan("t2v", ar.encode_prompt(PROMPTS[0]))
    prefix = torch.tensor([plan.prefix])
    P, seen = prefix.shape[1], []
    with attention_processor(ar, uniform):
        out = sample_plans(ar.decoder(), prefix, [(0, ar.vocab.size)] * 12, SamplingConfig(temperature=0),
                           prefix_lm=False, callback=lambda n, p, lg, t: seen.append(lg[0].clone()))
        with torch.no_grad():
            full = ar(torch.cat([prefix, out], 1))[0, P - 1 : -1]  # (N, V)
    with torch.no_grad():
        plain = ar(torch.cat([prefix, out], 1))[0, P - 1 : -1]
    torch.testing.assert_close(torch.stack(seen), full, atol=1e-4, rtol=1e-4)
    assert (plain - full).abs().max() > 1e-2  # the replacement matters


def test_ar_attention_store_records_maps_per_step(ar):
    store = AttentionStore(kinds=("self",))
    with attention_processor(ar, store, only=lambda name, layer: name.endswith("layers.1.self_attn")):
        generate_ids(ar, PROMPTS[:1], sampling=SamplingConfig(guidance=2.0))
    (name,) = store.maps
    P = len(ar.layouts.decode_plan("t2v", []).prefix)
    assert [m.shape for m in store.maps[name][:4]] == [(1, 4, P, P)] * 2 + [(1, 4, 1, P + 1)] * 2
    assert store.calls[name][:4] == [(0, "cond"), (0, "uncond"), (1, "cond"), (1, "uncond")]
    torch.testing.assert_close(store.maps[name][2].sum(-1), torch.ones(1, 4, 1))
    assert all(layer.processor is None for layer in ar.modules() if hasattr(layer, "processor"))  # restored


# ----------------------------------------------------------------------------- diffusion


def dit_and_cond():
    torch.manual_seed(0)
    m = DiT(DiTConfig(in_channels=4, hidden=32, depth=2, heads=2, patch_size=2, context_dim=16)).eval()
    with torch.no_grad():
        for p in m.parameters():  # make the zero-initialised gates live
            p.add_(0.05 * torch.randn(p.shape))
    g = torch.Generator().manual_seed(2)
    cond = TextCond(torch.randn(3, 5, 16, generator=g), torch.ones(3, 5, dtype=torch.bool))
    uncond = TextCond(torch.zeros(1, 5, 16), torch.ones(1, 5, dtype=torch.bool))
    return m, cond, uncond


def run(m, cond, uncond, guidance, steps=3):
    return sample(m, DDIMScheduler(NoiseSchedule.make("linear")), (3, 4, 2, 4, 4), cond, steps=steps,
                  guidance=guidance, uncond=uncond, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("guidance", [1.0, 4.0])
def test_diffusion_identity_processor_samples_bit_for_bit(guidance):
    m, cond, uncond = dit_and_cond()
    ref = run(m, cond, uncond, guidance)
    with attention_processor(m, sdpa):
        assert torch.equal(run(m, cond, uncond, guidance), ref)
    with attention_processor(m, uniform, only=lambda name, layer: layer.kind == "cross"):
        assert not torch.equal(run(m, cond, uncond, guidance), ref)


@pytest.mark.parametrize("guidance", [1.0, 4.0])
def test_diffusion_recording_processor_sees_every_layer_at_every_step_with_its_role(guidance):
    m, cond, uncond = dit_and_cond()
    rec = Recorder()
    with attention_processor(m, rec):
        run(m, cond, uncond, guidance, steps=3)
    layers = [f"blocks.{i}.{kind}" for i in range(2) for kind in ("attn", "cross")]
    roles = ["cond", "uncond"] if guidance != 1.0 else ["cond"]
    want = [(name, step, role, 3) for step in range(3) for name in layers for role in roles]
    assert [s[:4] for s in rec.seen] == want
    rec.seen.clear()
    with attention_processor(m, rec):  # inversion counts its own steps
        ddim_invert(m, DDIMScheduler(NoiseSchedule.make("linear")), torch.randn(3, 4, 2, 4, 4), cond, steps=2)
    assert [s[1] for s in rec.seen] == [0] * 4 + [1] * 4


def test_one_processor_runs_on_both_paradigms(ar):
    """An uncond-only edit written once: it changes guided outputs of both models, and nothing without guidance."""

    def flatten_uncond(call):
        return uniform(call) if call.role == "uncond" else sdpa(call)

    m, cond, uncond = dit_and_cond()
    for guided in (False, True):
        s = SamplingConfig(temperature=0, guidance=3.0 if guided else None)
        ar_ref, dif_ref = generate_ids(ar, PROMPTS, sampling=s), run(m, cond, uncond, 4.0 if guided else 1.0)
        with attention_processor(ar, flatten_uncond), attention_processor(m, flatten_uncond):
            ar_out, dif_out = generate_ids(ar, PROMPTS, sampling=s), run(m, cond, uncond, 4.0 if guided else 1.0)
        assert torch.equal(ar_out, ar_ref) != guided and torch.equal(dif_out, dif_ref) != guided


# ----------------------------------------------------------------------------- CPU attention under bf16 autocast


def test_cpu_attention_runs_in_float32_under_bf16_autocast():
    """CPU autocast would run SDPA in bf16 (its backward several times slower than float32 on CPUs with AMX):
    the shared fast path attends in float32 and returns the input's dtype, with float32 gradients."""
    import torch.nn.functional as F

    from duogen.attention import sdpa_tensors

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 6, 8, generator=g, requires_grad=True) for _ in range(3))
    mask = torch.rand(2, 1, 6, 6, generator=g) > 0.3
    mask[..., 0] = True
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # float32, no autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        ours = sdpa_tensors(q, k, v, mask)
        half = sdpa_tensors(q.bfloat16(), k.bfloat16(), v.bfloat16(), mask)
    assert plain.dtype == torch.bfloat16  # what autocast alone does
    assert ours.dtype == torch.float32 and torch.equal(ours, want)
    assert half.dtype == torch.bfloat16  # half in, half out; computed in float32 from the rounded inputs
    ref = F.scaled_dot_product_attention(q.bfloat16().float(), k.bfloat16().float(), v.bfloat16().float(), attn_mask=mask)
    assert torch.equal(half, ref.bfloat16())
    ours.sum().backward()
    assert q.grad.dtype == torch.float32


def test_both_paradigms_attend_in_float32_in_a_bf16_cpu_training_step(ar):
    """The DiT's attention layers and the Llama's (through transformers' attention interface) hand SDPA
    float32 tensors under bf16 autocast, and the step's loss is finite."""
    import torch.nn.functional as F

    seen = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, *a, **kw):
        seen.append({q.dtype, k.dtype, v.dtype})
        return real(q, k, v, *a, **kw)

    m, cond, _ = dit_and_cond()
    x = torch.randn(3, 4, 2, 4, 4)
    ids = torch.randint(0, ar.vocab.size, (2, 20), generator=torch.Generator().manual_seed(0))
    F.scaled_dot_product_attention = spy
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            dit_out = m(x, torch.tensor([10, 20, 30]), cond)
            ar_out = ar(ids, None)
    finally:
        F.scaled_dot_product_attention = real
    assert len(seen) >= 2 and all(s == {torch.float32} for s in seen)
    assert torch.isfinite(dit_out.float()).all() and torch.isfinite(ar_out.float()).all()
