"""The patch-level AR model (`duogen.ar_models.patch`): its layout, its likelihood's order, that it learns and samples
what it learned, and the bench that trains it on a demo run."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from duogen.ar_models.patch import PatchAR, PatchARConfig
from duogen.errors import ConfigError, DataError

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(hidden=32, layers=1, heads=2, mlp=64, local_hidden=16, local_heads=1, local_mlp=32, max_text=4)


def tiny(latent=(2, 4, 4), codec_vocab=16, **kw):
    return PatchAR(PatchARConfig(**{**TINY, **kw}), latent, codec_vocab, text_vocab=10)


def fit(m, batch, steps):
    """`steps` Adam steps of `m` on one batch -> the last step's (ids counted, metrics)."""
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    for _ in range(steps):
        loss, n, metrics = m.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return n, metrics


def test_patches_are_raster_order_blocks_and_round_trip():
    m = tiny()
    ids = torch.arange(32).reshape(1, 2, 4, 4)
    x = m.to_patches(ids)
    assert x.shape == (1, 8, 4)
    assert x[0, 0].tolist() == [0, 1, 4, 5]  # frame 0's top-left 2x2 block, raster inside
    assert x[0, 1].tolist() == [2, 3, 6, 7]  # then the block to its right
    assert x[0, 4].tolist() == [16, 17, 20, 21]  # frame 1 starts after frame 0's four blocks
    assert torch.equal(m.from_patches(x), ids)


def test_each_ids_likelihood_reads_only_the_prompt_and_the_ids_before_it():
    m = tiny().eval()
    text = m.text_block([[1, 2, 3]])
    ids = torch.randint(0, 16, (1, 2, 4, 4))
    before = m.token_logp(text, ids)  # (1, 8 patches, 4)
    changed = ids.clone()
    changed[0, 0, 2, 3] = (changed[0, 0, 2, 3] + 1) % 16  # patch 3, slot 1 (frame 0, bottom-right block)
    after = m.token_logp(text, changed)
    flat_b, flat_a = before.flatten(), after.flatten()
    k = 3 * 4 + 1
    assert torch.allclose(flat_b[:k], flat_a[:k], atol=1e-6)  # everything before it: untouched
    assert not torch.allclose(flat_b[k:], flat_a[k:])  # it and what follows: read it
    other = m.token_logp(m.text_block([[4]]), ids)
    assert not torch.allclose(other[0, 0], before[0, 0])  # the first patch reads the prompt


def test_it_learns_each_prompts_clip_and_samples_it_back():
    """Two prompts, each with its own clip: after training, sampling (guided or not) draws each prompt's clip."""
    torch.manual_seed(0)
    m = tiny(latent=(1, 4, 4), codec_vocab=8, cond_dropout=0.0)
    clips = torch.randint(0, 8, (2, 1, 4, 4))
    n, metrics = fit(m, {"text": m.text_block([[1, 2], [3]]), "ids": clips}, 150)
    assert n == 32 and metrics["loss"] < 0.05
    m.eval()
    for guidance in (1.0, 3.0):
        g = torch.Generator().manual_seed(0)
        drawn = m.sample([[1, 2], [3], [1, 2]], guidance=guidance, temperature=0.5, generator=g)
        assert drawn.shape == (3, 1, 4, 4)
        assert torch.equal(drawn, clips[[0, 1, 0]])


def test_sampling_is_seeded_and_top_k_one_is_greedy():
    m = tiny().eval()
    draw = lambda seed, **kw: m.sample([[1], [2]], guidance=3.0, generator=torch.Generator().manual_seed(seed), **kw)
    assert torch.equal(draw(1), draw(1))
    assert torch.equal(draw(1, top_k=1), draw(2, top_k=1))
    with pytest.raises(ConfigError, match="temperature"):
        draw(1, temperature=0)


def test_bad_configs_fail_with_their_reason():
    with pytest.raises(ConfigError, match="patch"):
        tiny(latent=(1, 3, 4))
    with pytest.raises(ConfigError, match="cond_dropout"):
        tiny(cond_dropout=1.0)


def _bench(name):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_batch_speed_bench_times_each_batch_against_the_first():
    rows = _bench("bench_ar_batch_speed").main(["--batches", "2,1", "--repeats", "1", "--rounds", "1"])
    assert [r["batch"] for r in rows] == [2, 1] and rows[0]["ratio"] == 1.0
    assert rows[1]["ratio"] == pytest.approx(rows[1]["clip_s"] / rows[0]["clip_s"]) and rows[1]["step_s"] > 0


def test_the_sampling_bench_times_all_three_samplers():
    res = _bench("bench_patch_ar_sampling").main(["--batch", "1", "--repeats", "1", "--json"])
    assert len(res["s_per_clip"]) == 3 and all(s > 0 for s in res["s_per_clip"].values())
    assert res["cache_speedup"] > 0 and res["patch_vs_flat"] > 0


def test_the_bench_trains_on_a_demo_run_and_writes_its_scores(tmp_path):
    from duogen.data import load_dataset, make_dataset
    from duogen.tokenizers.text import train_text_tokenizer
    from test_latent_diffusion import make_codec

    run = tmp_path / "run"
    make_dataset("shapes", run / "data", n=12, preset="tiny", seed=0)
    make_codec(0).save_pretrained(tmp_path / "codec")  # not in RUN: --codec names it
    train_text_tokenizer(list(load_dataset(run / "data")["train"]["caption"]), run / "text", vocab_size=300)
    bench = _bench("bench_patch_ar")
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match="codec.*missing"):
        bench.main(["--run", str(run), "--out", str(out)])
    with pytest.raises(SystemExit, match="give --codec and --text"):
        bench.main(["--data", str(run / "data"), "--out", str(out)])
    res = bench.main(["--run", str(run), "--codec", str(tmp_path / "codec"), "--out", str(out), "--flops", "1e8",
                      "--layers", "1", "--local-hidden", "32",
                      "--per-split", "1", "--n", "2", "--precision", "fp32", "--batch-size", "4"])
    saved = json.loads((out / "results.json").read_text())
    assert saved["steps"] == res["steps"] >= 1 and saved["flops"] >= 1e8
    assert set(saved["models"]["patch"]["accuracy"]["all"]) >= {"color", "direction", "count", "shape"}
    assert saved["models"]["patch"]["cost_per_clip"] == 2 * 3 * 8 * 8  # ids per clip, two streams under guidance
    # the saved model loads as a generator and draws the same clips for the same seed
    from duogen.bridges.generate import load_generator

    gen = load_generator(out / "final")
    a, b = (gen.generate(["a red circle"], n=2, seed=5, guidance=3.0) for _ in range(2))
    assert a.videos.shape[0] == 2 and (a.videos == b.videos).all() and a.tokens == 2 * 3 * 8 * 8
    # i2v: the first latent frame comes from the image, the two after it are drawn (counted, returned as ids)
    import numpy as np

    from duogen.bridges.conditions import first_frame_ids
    from duogen.bridges.result import to_uint8

    frame = np.zeros((20, 20, 3), np.uint8)
    frame[4:12, 4:12] = (255, 0, 0)
    with pytest.warns(UserWarning, match="resized"):
        c = gen.generate(["a red square"], n=2, seed=1, task="i2v", image=frame, guidance=3.0)
        given = first_frame_ids(gen.codec, frame, None, 1)  # (1, 8, 8)
    assert c.ids.shape == (2, 2, 8, 8) and c.tokens == 2 * 2 * 8 * 8 and c.videos.shape[:2] == a.videos.shape[:2]
    with torch.inference_mode():
        whole = torch.cat([given[None].expand(2, -1, -1, -1), c.ids], 1)  # the image's frame, then the drawn ones
        assert (c.videos == to_uint8(gen.codec.decode(whole))).all()
    # best of 4 first frames: the result counts the discarded candidates' ids too; compare names the setting
    lc = gen.generate(["a red circle"], n=2, seed=5, guidance=3.0, layout_candidates=4)
    assert lc.tokens == 2 * (3 * 8 * 8 + 3 * 8 * 8) and lc.info["layout_candidates"] == 4
    # unguided, the no-prompt stream runs for the 4 candidate frames alone: counted in the one stream's tokens
    assert gen.generate(["a red circle"], n=2, seed=5, layout_candidates=4).tokens == 2 * (3 * 64 + 3 * 64 + 4 * 64)
    from duogen.eval.compare import ar_settings

    assert [s.label for s in ar_settings(3.0, layout_candidates=4)] == ["cfg-3 lc4", "no-cfg lc4"]
    with pytest.raises(DataError, match="text-to-video and i2v"):
        gen.generate(["a red circle"], task="inpaint")
    with pytest.raises(DataError, match="needs the first frame"):
        gen.generate(["a red circle"], task="i2v")
    with pytest.raises(DataError, match="use task i2v"):
        gen.generate(["a red circle"], image=frame)
    with pytest.raises(DataError, match="callback"):
        gen.generate(["a red circle"], callback=lambda *a: None)
    with pytest.raises(SystemExit, match="demo"):
        bench.main(["--run", str(tmp_path / "nowhere"), "--out", str(out)])
    # the paired layout-candidates bench on the same model: one row per K over the same prompts
    lcb = _bench("bench_layout_candidates").main(["--model", str(out / "final"), "--data", str(run / "data"),
                                                  "--k", "1,2", "--per-split", "1", "--n", "2"])
    assert set(lcb["k"]) == {"1", "2"} and lcb["clips_per_k"] == 2 * lcb["prompts"]
    assert all(0 <= r["color"] <= 1 and 0 <= r["count"] <= 1 for r in lcb["k"].values())
    # the i2v bench on the same model: both modes and the codec's ceiling, on the held-out split (one clip here)
    i2v = _bench("bench_i2v")
    res = i2v.main(["--model", str(out / "final"), "--data", str(run / "data"), "--clips", "2", "--n", "1",
                    "--out", str(tmp_path / "i2v.json")])
    assert set(res["modes"]) == {"t2v", "i2v", "codec"} and res["clips"] == 1  # the tiny set holds one
    assert json.loads((tmp_path / "i2v.json").read_text())["modes"] == res["modes"]
    for m in res["modes"].values():
        assert set(m) == {"psnr", "color", "direction", "count", "centre_px"} and 0 < m["psnr"] <= 100
    # its centre error: 0 px on the real clip's own readings, the frame size where the objects are missing
    from duogen.data import load_dataset
    from duogen.eval.probes import probe_clip

    row = load_dataset(run / "data")["heldout"][0]
    clip = np.asarray(row["video"], np.uint8)
    own = i2v.centre_error(probe_clip(clip), clip.shape[1], row["boxes"], row["attributes"])
    assert own < 1.0 and i2v.centre_error([], clip.shape[1], row["boxes"], row["attributes"]) == clip.shape[1]


def test_a_saved_model_loads_back_the_same_and_another_kind_is_refused(tmp_path):
    import json as _json

    from duogen.errors import CheckpointError

    m = tiny().eval()
    m.save_pretrained(tmp_path / "m")
    back = PatchAR.from_pretrained(tmp_path / "m")
    text, ids = m.text_block([[1, 2]]), torch.randint(0, 16, (1, 2, 4, 4))
    assert torch.equal(back.token_logp(text, ids), m.token_logp(text, ids))
    conf = _json.loads((tmp_path / "m" / "config.json").read_text())
    assert conf["kind"] == "patch_ar" and conf["latent"] == [2, 4, 4]
    (tmp_path / "m" / "config.json").write_text(_json.dumps({**conf, "kind": "ar"}))
    with pytest.raises(CheckpointError, match="not a patch AR model"):
        PatchAR.from_pretrained(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(_json.dumps({**conf, "format_version": 99}))
    with pytest.raises(CheckpointError, match="newer"):
        PatchAR.from_pretrained(tmp_path / "m")


def test_duogen_train_ar_trains_the_patch_model_and_refuses_what_it_lacks(tmp_path):
    from _tiny_runs import cli

    from duogen.bridges.generate import load_generator
    from duogen.data import make_dataset
    from test_latent_diffusion import make_codec

    make_dataset("shapes", tmp_path / "data", n=12, preset="tiny", seed=0)
    make_codec(0).save_pretrained(tmp_path / "codec")
    common = ["train", "ar", "--data", str(tmp_path / "data"), "--tokenizer", str(tmp_path / "codec"),
              "model.patch=2", "model.hidden=32", "model.layers=1", "model.heads=2", "model.kv_heads=2", "model.mlp=64",
              "model.local_hidden=32", "max_text=16", "text_vocab=300", "train.batch_size=4", "train.precision=fp32"]
    rc, summary, err = cli(*common, "--out", str(tmp_path / "ar"), "train.steps=2")
    assert rc == 0, err
    assert summary["patch"] == 2 and summary["steps"] == 2 and summary["sequence_tokens"] == 16 + 3 * 4 * 4
    gen = load_generator(tmp_path / "ar" / "final")
    assert gen.model.cfg.layers == 1 and gen.model.cfg.local_hidden == 32
    assert gen.generate(["a red circle"], n=1, seed=0, guidance=3.0).videos.shape[0] == 1
    rc, _, err = cli(*common, "--out", str(tmp_path / "ar2"), "train.steps=1", "--tasks", "t2v,i2v")
    assert rc != 0 and "tasks other than t2v" in err and not (tmp_path / "ar2" / "final").exists()
    assert "--task i2v` needs no i2v task here" in err  # it continues frames without training on them


def test_the_demo_times_the_patch_model_it_trains():
    from duogen.speed import ar_step

    sm = ar_step(patch=2, layers=1)
    assert isinstance(sm.model, PatchAR) and sm.model.cfg.layers == 1 and sm.model.cfg.patch == 2
    assert float(sm.loss(sm.model)) > 0
    half = ar_step(batch_size=8, patch=2, layers=1)  # the demo's batch size, not the preset's 32
    assert half.batch_size == 8 and sm.batch_size == 32 and float(half.loss(half.model)) > 0


def test_the_cached_sampler_reads_what_the_full_forward_reads():
    """The sampler's KV-cached global model gives the states the full forward gives: clips drawn greedily must be
    each clip's own greedy continuation under token_logp (every id the argmax given the ids before it)."""
    m = tiny().eval()
    ids = m.sample([[1, 2], [3]], guidance=1.0, top_k=1, generator=torch.Generator().manual_seed(0))
    x = m.to_patches(ids)
    text = m.text_block([[1, 2], [3]])
    B, P, k = x.shape
    state = m.global_states(text, x[:, :-1]).reshape(B * P, -1)
    logits = m.local_logits(state, x.reshape(B * P, k)[:, :-1])
    assert torch.equal(logits.argmax(-1), x.reshape(B * P, k))


def test_a_continuation_keeps_the_given_frame_and_draws_the_rest_given_it():
    """i2v: the clips start with the given latent frame, and each drawn id is the argmax given the prompt, that
    frame and the drawn ids before it (greedy, one stream and guided)."""
    m = tiny(latent=(3, 4, 4)).eval()
    first = torch.randint(0, 16, (1, 4, 4))
    for guidance in (1.0, 2.0):
        ids = m.sample([[1, 2], [3]], guidance=guidance, top_k=1, first=first, generator=torch.Generator().manual_seed(0))
        assert ids.shape == (2, 3, 4, 4) and torch.equal(ids[:, :1], first[None].expand(2, -1, -1, -1))
    ids = m.sample([[1, 2], [3]], guidance=1.0, top_k=1, first=first)
    x = m.to_patches(ids)
    B, P, k = x.shape
    state = m.global_states(m.text_block([[1, 2], [3]]), x[:, :-1]).reshape(B * P, -1)
    best = m.local_logits(state, x.reshape(B * P, k)[:, :-1]).argmax(-1).reshape(B, P, k)
    assert torch.equal(best[:, 4:], x[:, 4:])  # frame 0's 4 patches were given, not drawn
    with pytest.raises(DataError, match="1 <= f0 < 3"):
        m.sample([[1]], first=torch.zeros(3, 4, 4, dtype=torch.long))  # the whole clip
    with pytest.raises(DataError, match="shape"):
        m.sample([[1]], first=torch.zeros(1, 4, 5, dtype=torch.long))
    with pytest.raises(DataError, match=r"\[0, 16\)"):
        m.sample([[1]], first=torch.full((1, 4, 4), 16))


def frame_gap(m, text_ids, ids, frame):
    """Each clip's sum over latent frame `frame`'s ids of log p(id | prompt) - log p(id | no prompt), read by the
    full forward (`token_logp`), not by the sampler."""
    per_frame = m.n_patches // m.latent[0]
    gap = m.token_logp(m.text_block(text_ids), ids) - m.token_logp(m.text_block([[]] * len(text_ids)), ids)
    return gap[:, frame * per_frame:(frame + 1) * per_frame].sum((1, 2))


@pytest.mark.parametrize("guidance,given", [(3.0, False), (1.0, False), (3.0, True)])
def test_layout_candidates_keep_the_first_drawn_frame_the_prompt_explains_best(guidance, given):
    """K candidates for the first drawn latent frame are the K clips plain sampling of the K-times repeated prompt
    starts with (same generator); the kept one is the candidate with the largest prompt-vs-no-prompt log-likelihood
    gap by the full forward, and the frames after it are drawn given it (greedy check). With a given first frame
    (i2v) the candidates are for the frame after it."""
    m = tiny(latent=(3, 4, 4)).eval()
    prompts, K = [[1, 2], [3]], 4
    first = torch.randint(0, 16, (1, 4, 4), generator=torch.Generator().manual_seed(9)) if given else None
    f0 = 1 if given else 0
    kept = m.sample(prompts, guidance=guidance, first=first, layout_candidates=K,
                    generator=torch.Generator().manual_seed(3))
    rows = [t for t in prompts for _ in range(K)]
    plain = m.sample(rows, guidance=guidance, first=first, generator=torch.Generator().manual_seed(3))
    scores = frame_gap(m, rows, plain, f0).view(2, K)
    best = plain[scores.argmax(1) + torch.arange(2) * K]
    assert len({tuple(c.flatten().tolist()) for c in plain[:K, f0]}) > 1  # the candidates differ
    assert torch.equal(kept[:, : f0 + 1], best[:, : f0 + 1])
    if given:
        assert torch.equal(kept[:, :1], first[None].expand(2, -1, -1, -1))
    # the frame after the kept one is drawn given it: greedy sampling reads each id's argmax under the full forward
    greedy = m.sample(prompts, guidance=1.0, top_k=1, first=first, layout_candidates=K,
                      generator=torch.Generator().manual_seed(3))
    x = m.to_patches(greedy)
    B, P, k = x.shape
    state = m.global_states(m.text_block(prompts), x[:, :-1]).reshape(B * P, -1)
    argmax = m.local_logits(state, x.reshape(B * P, k)[:, :-1]).argmax(-1).reshape(B, P, k)
    assert torch.equal(argmax[:, 4 * (f0 + 1):], x[:, 4 * (f0 + 1):])
    assert torch.equal(m.sample(prompts, generator=torch.Generator().manual_seed(3), layout_candidates=1),
                       m.sample(prompts, generator=torch.Generator().manual_seed(3)))
    with pytest.raises(ConfigError, match="layout_candidates"):
        m.sample(prompts, layout_candidates=0)


def test_it_learns_to_continue_from_the_first_frame_it_is_given():
    """One prompt, two clips whose first frames differ and decide the second: given either first frame, the
    trained model draws that clip's second frame."""
    torch.manual_seed(0)
    m = tiny(latent=(2, 4, 4), codec_vocab=8, cond_dropout=0.0)
    clips = torch.randint(0, 8, (2, 2, 4, 4))
    fit(m, {"text": m.text_block([[1], [1]]), "ids": clips}, 200)
    m.eval()
    for i in (0, 1):
        drawn = m.sample([[1], [1]], guidance=1.0, temperature=0.5, first=clips[i, :1],
                         generator=torch.Generator().manual_seed(i))
        assert torch.equal(drawn, clips[[i, i]])


def test_a_resumed_patch_run_ends_where_an_uninterrupted_one_does(tmp_path):
    """Prompt dropout draws from torch's checkpointed generator, so 2 steps + --resume 2 more = 4 steps straight."""
    from _tiny_runs import cli

    from duogen.data import make_dataset
    from duogen.io import load_model_dir
    from test_latent_diffusion import make_codec

    make_dataset("shapes", tmp_path / "data", n=12, preset="tiny", seed=0)
    make_codec(0).save_pretrained(tmp_path / "codec")
    common = ["train", "ar", "--data", str(tmp_path / "data"), "--tokenizer", str(tmp_path / "codec"),
              "model.patch=2", "model.hidden=32", "model.layers=1", "model.heads=2", "model.kv_heads=2", "model.mlp=64",
              "model.local_hidden=32", "model.cond_dropout=0.5", "max_text=16", "text_vocab=300", "train.batch_size=4",
              "train.precision=fp32", "train.ckpt_every=2"]
    assert cli(*common, "--out", str(tmp_path / "a"), "train.steps=4")[0] == 0
    assert cli(*common, "--out", str(tmp_path / "b"), "train.steps=2")[0] == 0
    rc, _, err = cli(*common, "--out", str(tmp_path / "b"), "train.steps=4", "--resume", "auto")
    assert rc == 0, err
    a, b = (load_model_dir(tmp_path / r / "final")[1] for r in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
