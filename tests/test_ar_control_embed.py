"""ControlAR control embeddings (ar_models/control_embed.py) on a tiny AR model: exact no-op when fresh and at
scale 0, KV-cached sampling equals the teacher-forced forward with a control (with and without guidance),
gradients reach only the control, a frozen base learns to follow a condition, save / load refuses another base."""

import warnings
from types import SimpleNamespace

import pytest
import torch

from duogen.ar_models.control_embed import (ControlARConfig, control_embeddings, load_control_embed,
                                            make_control_embed, next_video_index, save_control_embed)
from duogen.ar_models.layouts import LayoutSpec
from duogen.ar_models.model import ARConfig, MultimodalLM
from duogen.ar_models.sampling import SamplingConfig, generate_ids
from duogen.errors import CheckpointError, DataError
from duogen.tokenizers.text import train_text_tokenizer
from duogen.tokenizers.vocab import UnifiedVocab

pytestmark = pytest.mark.usefixtures("one_thread")

CAPS = [f"a {c} {s} moves {d}" for c in ("red", "blue") for s in ("circle", "square") for d in ("left", "right")]
LATENT, FRAMES, SIZE, K = (3, 2, 2), 9, 8, 16  # latent grid of 9-frame 8x8 clips; codebook size


class Active:
    def __init__(self, module, condition, scale=1.0):
        self.module, self.condition, self.scale = module, condition, scale


def build(seed=0, layers=2, factorized=False):
    torch.manual_seed(seed)
    text = train_text_tokenizer(CAPS, None, vocab_size=320)
    vocab = UnifiedVocab(text.vocab_size, {"video": K})
    spec = LayoutSpec(max_text=12, latent=LATENT, tasks=["t2v"])
    cfg = ARConfig(hidden=64, layers=layers, heads=4, kv_heads=2, mlp=128, prefix_lm=True,
                   factorized_positions=factorized)
    return MultimodalLM(cfg, vocab, spec, text).eval()


def control_for(model, every=1, seed=1, perturb=True):
    torch.manual_seed(seed)
    c = make_control_embed(ControlARConfig(every=every, enc_channels=8), model, FRAMES, SIZE)
    if perturb:  # a trained control: non-zero heads
        with torch.no_grad():
            for p in c.heads.parameters():
                p.normal_(0, 0.5)
    return c


def condition(seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(1, 1, FRAMES, SIZE, SIZE, generator=g) > 0.5).float()  # (1, 1, F, H, W)


def teacher_batch(model, clips):
    exs = [model.layouts.example("t2v", model.encode_prompt(CAPS[0]), c) for c in clips]
    return model.layouts.batch(exs)


def test_next_video_index_points_at_the_token_each_position_predicts():
    m = build()
    clip = torch.arange(12) % K
    ex = m.layouts.example("t2v", m.encode_prompt(CAPS[0]), clip)
    ids = torch.tensor([ex.ids])
    r = m.vocab.codec_range("video")
    markers = torch.tensor([m.vocab.tokens["<bov>"], m.vocab.tokens["<boi>"]])
    k, _ = next_video_index(ids, (r.start, r.stop), markers, 12)
    P = ex.prefix_len  # the <bov> sits at P-1 and predicts video token 0
    want = torch.full_like(ids, -1)
    want[0, P - 1 : P - 1 + 12] = torch.arange(12)  # position P-1+j predicts token j; the last token predicts <eov>
    assert torch.equal(k, want)
    # a cached decode feeds the prefix, then one token at a time: the same indices
    k1, st = next_video_index(ids[:, :P], (r.start, r.stop), markers, 12)
    parts = [k1]
    for t in range(P, ids.shape[1]):
        kt, st = next_video_index(ids[:, t : t + 1], (r.start, r.stop), markers, 12, st)
        parts.append(kt)
    assert torch.equal(torch.cat(parts, 1), want)


@pytest.mark.parametrize("factorized", [False, True])
def test_fresh_control_is_an_exact_noop(factorized):
    m = build(factorized=factorized)
    c = control_for(m, perturb=False)
    batch = teacher_batch(m, [torch.arange(12) % K])
    s = SamplingConfig(temperature=1.0, guidance=2.0)
    with torch.no_grad():
        want_logits = m(batch["ids"], batch["prefix_len"])
        want = generate_ids(m, CAPS[:2], seed=3, sampling=s)
        with control_embeddings(m, [Active(c, condition())]):
            got_logits = m(batch["ids"], batch["prefix_len"])
            got = generate_ids(m, CAPS[:2], seed=3, sampling=s)
    assert torch.equal(got_logits, want_logits)
    assert torch.equal(got, want)


def test_scale_zero_is_the_base_and_a_trained_control_changes_it():
    m = build()
    c = control_for(m)
    batch = teacher_batch(m, [torch.arange(12) % K])
    with torch.no_grad():
        base = m(batch["ids"], batch["prefix_len"])
        with control_embeddings(m, [Active(c, condition(), 0.0)]):
            zero = m(batch["ids"], batch["prefix_len"])
        with control_embeddings(m, [Active(c, condition(), 1.0)]):
            one = m(batch["ids"], batch["prefix_len"])
    assert torch.equal(zero, base)
    P = int(batch["prefix_len"][0])
    assert (one[:, P - 1 : P + 11] - base[:, P - 1 : P + 11]).abs().amax() > 1e-2  # every video prediction moves


def _uncached_greedy(m, prompt, ctl, guidance=None):
    """Greedy decoding by the full teacher-forced forward at every step (no cache)."""
    plan = m.layouts.decode_plan("t2v", m.encode_prompt(prompt))
    uplan = m.layouts.decode_plan("t2v", [])
    seqs = [list(plan.prefix)] + ([list(uplan.prefix)] if guidance else [])
    for lo, hi in plan.ranges:
        with control_embeddings(m, [ctl]):
            ids = torch.tensor(seqs)
            logits = m(ids, torch.full((len(seqs),), len(plan.prefix)))
        lg = logits[:, -1, lo:hi]
        if guidance:
            lg = lg[:1] + (guidance - 1) * (lg[:1] - lg[1:])
        tok = int(lg[0].argmax()) + lo
        for s in seqs:
            s.append(tok)
    return torch.tensor(seqs[0][len(plan.prefix):])


@pytest.mark.parametrize("guidance", [None, 3.0])
def test_cached_sampling_equals_the_uncached_forward_with_a_control(guidance):
    m = build()
    ctl = Active(control_for(m), condition(), 0.7)
    with torch.no_grad():
        want = _uncached_greedy(m, CAPS[1], ctl, guidance)
        with ctl.module.sampling(SimpleNamespace(model=m), ctl.condition, ctl.scale):  # the bridges' protocol
            got = generate_ids(m, [CAPS[1]], sampling=SamplingConfig(temperature=0, guidance=guidance))
        base = generate_ids(m, [CAPS[1]], sampling=SamplingConfig(temperature=0, guidance=guidance))
    got = got.reshape(-1) + m.vocab.codec_range("video").start
    assert torch.equal(got, want)
    assert not torch.equal(got, base.reshape(-1) + m.vocab.codec_range("video").start)  # the control steered


def test_gradients_reach_only_the_control():
    m = build()
    for p in m.parameters():
        p.requires_grad_(False)
    c = control_for(m, perturb=False)
    batch = teacher_batch(m, [torch.arange(12) % K, (torch.arange(12) * 5) % K])
    with control_embeddings(m, [Active(c, torch.cat([condition(0), condition(1)]))]):
        m.loss(batch).loss.backward()
    assert all(p.grad is None for p in m.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in c.heads.parameters())


def test_a_frozen_base_learns_to_follow_the_condition():
    """Two conditions, two clips, one prompt: only the control trains; teacher-forced loss falls >10x and greedy
    sampling draws each condition's own clip."""
    m = build()
    with torch.no_grad():  # a trained head: at its 0.02 init no token can get more than ~2.5 nats over another
        m.lm.lm_head.weight.mul_(25)
    for p in m.parameters():
        p.requires_grad_(False)
    c = control_for(m, perturb=False)
    g = torch.Generator().manual_seed(5)
    clips = [torch.randint(0, K, (12,), generator=g) for _ in range(2)]
    conds = torch.cat([condition(0), condition(1)])
    batch = teacher_batch(m, clips)
    opt = torch.optim.Adam(c.parameters(), lr=1e-2)
    losses = []
    for _ in range(150):
        with control_embeddings(m, [Active(c, conds)]):
            loss = m.loss(batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] / 10, losses[::25]
    with torch.no_grad():
        for i in range(2):
            with control_embeddings(m, [Active(c, conds[i : i + 1])]):
                got = generate_ids(m, [CAPS[0]], sampling=SamplingConfig(temperature=0))
            assert torch.equal(got.reshape(-1), clips[i])


def test_save_load_round_trip_and_another_base_is_refused(tmp_path):
    m = build()
    c = control_for(m)
    path = save_control_embed(c, tmp_path / "control.safetensors")
    back = load_control_embed(path, m)
    cond = condition()
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(c.embeddings(cond), back.embeddings(cond)))
    assert back.config == c.config
    with pytest.raises(CheckpointError, match="another AR base"):
        load_control_embed(path, build(seed=1))  # same shape, other weights
    with pytest.raises(CheckpointError, match="depth"):
        load_control_embed(path, build(layers=3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DataError, match="frames, H, W"):  # a condition clip of another size
            c.embeddings(torch.zeros(1, 1, FRAMES, SIZE * 2, SIZE * 2))
        with pytest.raises(DataError, match="frames, H, W"):  # of another length
            c.embeddings(torch.zeros(1, 1, FRAMES - 1, SIZE, SIZE))
