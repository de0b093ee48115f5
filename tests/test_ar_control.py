"""AR control, method `tokens` (condition tokens in the prefix): layouts, the glue (`ARGenerator.generate(controls=)`,
`duogen train control` / `duogen generate --control` on an AR model), scale 0 = the base bit for bit, KV-cached
decoding = full forwards, an overfit pair follows its condition, exact resume, and bad input."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import duogen

sys.path.insert(0, str(Path(__file__).parent))
from _tiny_runs import cli, train_tiny_bases  # noqa: E402

from duogen.ar_models.control import (LayoutTokens, TokenControl, TokenControlConfig, dequantise_boxes,  # noqa: E402
                                      make_token_control, model_fingerprint, quantise_boxes, render_condition)
from duogen.ar_models.layouts import NULL_CLIP  # noqa: E402
from duogen.data.conditions import BoxTrack, condition_clip, write_boxes  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
TRAIN = ["train.batch_size=4", "train.precision=fp32", "train.max_minutes=0", "train.warmup_steps=0"]
REF_AR = Path(duogen.__file__).parent / "assets" / "reference" / "ar"
PROMPT = "a red circle"


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    return train_tiny_bases(tmp_path_factory.mktemp("arctl"))


@pytest.fixture(scope="module")
def gen(bases):
    from duogen.bridges.generate import ARGenerator

    return ARGenerator.from_pretrained(bases / "ar" / "final")


@pytest.fixture(scope="module")
def files(bases):
    """A boxes JSON, a mask video and an edges clip from the first training clip."""
    from duogen.data import load_dataset
    from duogen.data.media import write_mp4
    from duogen.train.ar_control_recipe import row_tracks

    row = load_dataset(bases / "data")["train"][0]
    video = np.asarray(row["video"], np.uint8)
    return {"boxes": write_boxes(bases / "boxes.json", row_tracks(row)),
            "mask": write_mp4(bases / "mask.mp4", render_condition(condition_clip("mask", 9, 32, video=video))),
            "edges": write_mp4(bases / "clip.mp4", video)}


def _control(gen, condition, noise=0.0, seed=0):
    cfg = TokenControlConfig(condition=condition, base_fingerprint=model_fingerprint(gen.model))
    m = make_token_control(gen.model, cfg)
    if noise:
        torch.manual_seed(seed)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(noise * torch.randn_like(p))
    return TokenControl(m, cfg, gen.codec)


def _tracks(*boxes):
    return [BoxTrack(f"a {c} circle", np.asarray([b] * 9, np.float64)) for c, b in zip(("red", "blue"), boxes)]


# ----------------------------------------------------------------------------- layouts


def test_box_quantisation_round_trips_pixels_and_covers_the_box():
    b = np.array([[0, 3, 17, 32], [5, 0, 6, 1]], np.float64)
    assert np.array_equal(dequantise_boxes(quantise_boxes(b, 32, 32), 32, 32), b)  # K = size: exact
    q = dequantise_boxes(quantise_boxes(b, 32, 8), 32, 8)  # coarse bins: the smallest bin-aligned box around it
    assert (q[:, :2] <= b[:, :2]).all() and (q[:, 2:] >= b[:, 2:]).all() and (q[:, 2:] - b[:, 2:] < 4).all()


def test_layout_and_control_sequences_put_condition_and_output_where_stated(gen):
    ctl = _control(gen, "boxes").model
    cfg = TokenControlConfig(condition="boxes")
    lay = LayoutTokens(ctl, cfg)
    tracks = _tracks([2, 3, 14, 15], [20, 1, 31, 12])
    ids = lay.ids(tracks)
    assert len(ids) == cfg.layout_tokens == ctl.spec.layout_tokens
    assert [b.tolist() for b in lay.boxes(ids)] == [t.boxes.tolist() for t in tracks]
    assert lay.boxes(lay.ids(tracks[:1]))[0].tolist() == tracks[0].boxes.tolist()  # an empty slot is skipped
    text = ctl.encode_prompt(PROMPT)
    target = torch.randint(0, 1000, tuple(ctl.spec.latent))
    ex = ctl.layouts.example("layout", text, target, {"layout": ids})
    t, m = ctl.vocab.tokens, ctl.spec.max_text
    assert ex.ids[1] == t["<layout>"] and ex.ids[4 + m: 4 + m + len(ids)] == ids
    assert ex.ids[ex.prefix_len - 2: ex.prefix_len] == [t["<sep>"], t["<bov>"]]
    assert ex.ids[ex.out_start: ex.out_end] == ctl.vocab.codec_to_global("video", target.reshape(-1).tolist())
    null = ctl.layouts.example("layout", text, target, {"layout": NULL_CLIP})
    assert null.ids[4 + m: 4 + m + len(ids)] == [t["<pad>"]] * len(ids) and len(null.ids) == len(ex.ids)
    mk = _control(gen, "mask").model
    cond = torch.randint(0, 1000, tuple(mk.spec.latent))
    ex = mk.layouts.example("control", text, target, {"control": cond})
    n = mk.spec.video_tokens
    assert ex.ids[1] == mk.vocab.tokens["<control>"]
    assert ex.ids[5 + m: 5 + m + n] == mk.vocab.codec_to_global("video", cond.reshape(-1).tolist())
    assert len(ex.ids) <= mk.max_len and mk.max_len > gen.model.max_len


# ----------------------------------------------------------------------------- sampling


def test_scale_zero_is_the_base_bit_for_bit_and_a_control_changes_the_clips(gen):
    from duogen.ar_models.sampling import ControlStream, SamplingConfig, sample_plans
    from duogen.diffusion.control import ActiveControl

    ctl = _control(gen, "boxes", noise=0.05)
    cond = ctl.make_condition("boxes", frames=9, size=32, tracks=_tracks([2, 3, 14, 15]))
    kw = dict(n=2, seed=3, temperature=1.0, top_k=50)
    plain = gen.generate([PROMPT], **kw)
    zero = gen.generate([PROMPT], controls=[ActiveControl(ctl, cond, 0.0)], **kw)
    on = gen.generate([PROMPT], controls=[ActiveControl(ctl, cond, 1.0)], **kw)
    assert torch.equal(plain.ids, zero.ids) and np.array_equal(plain.videos, zero.videos)
    assert not torch.equal(plain.ids, on.ids)
    # in the sampler itself (the generator skips scale-0 controls): a stream at scale 0 leaves every draw alone
    plan = gen.model.layouts.decode_plan("t2v", gen.model.encode_prompt(PROMPT))
    prefix = torch.tensor([plan.prefix] * 2)
    s = SamplingConfig(temperature=1.0)
    stream = ControlStream(ctl.decoder(), ctl.prefixes([gen.model.encode_prompt(PROMPT)] * 2, cond), 0.0)
    a = sample_plans(gen.decoder, prefix, plan.ranges, s, seed=5)
    b = sample_plans(gen.decoder, prefix, plan.ranges, s, seed=5, streams=[stream])
    assert torch.equal(a, b)


@pytest.mark.parametrize("guidance", [None, 2.0])
def test_cached_decoding_equals_full_forwards(gen, guidance):
    """Every step's steered logits from the KV-cached decoders equal those of full forwards of both models."""
    from duogen.diffusion.control import ActiveControl

    ctl = _control(gen, "mask", noise=0.05)
    video = np.zeros((9, 32, 32, 3), np.uint8)
    video[:, 4:14, 6:18] = 255
    cond = ctl.make_condition("mask", frames=9, size=32, video=video)
    seen = []
    res = gen.generate([PROMPT], n=1, seed=0, temperature=0.0, guidance=guidance,
                       controls=[ActiveControl(ctl, cond, 1.7)], callback=lambda n, pos, lg, toks: seen.append(lg.clone()))
    base, cm = gen.model, ctl.model
    text = base.encode_prompt(PROMPT)
    lo, hi = base.layouts.decode_plan("t2v", text).ranges[0]
    rows = [(base, "t2v", None), (cm, "control", {"control": cond[0]})]
    prefixes = [(m.layouts.decode_plan(t, text, c).prefix, m.layouts.decode_plan(t, [], c).prefix) for m, t, c in rows]
    toks = (res.ids[0].reshape(-1) + lo).tolist()
    assert len(seen) == len(toks)
    for n in range(0, len(seen), 37):
        outs = []
        for (m, _, _), (pc, pu) in zip(rows, prefixes):
            seqs = [pc + toks[:n]] + ([pu + toks[:n]] if guidance else [])
            x = torch.tensor(seqs)
            with torch.no_grad():
                lg = m(x, torch.tensor([len(pc) if i == 0 else len(pu) for i in range(len(seqs))]))[:, -1, lo:hi]
            outs.append(lg[0] + (guidance - 1) * (lg[0] - lg[1]) if guidance else lg[0])
        want = outs[0] + 1.7 * (outs[1] - outs[0])
        torch.testing.assert_close(seen[n][0], want, rtol=1e-4, atol=2e-4)


def test_overfit_pairs_follow_their_condition(gen):
    """Two (mask, clip) pairs with the same prompt: once fitted, each mask brings back its own clip."""
    from duogen.diffusion.control import ActiveControl

    ctl = _control(gen, "mask")
    m = ctl.model
    masks = [np.zeros((9, 32, 32, 3), np.uint8) for _ in range(2)]
    masks[0][:, 2:12, 2:12] = 255
    masks[1][:, 18:30, 16:30] = 255
    conds = [ctl.make_condition("mask", frames=9, size=32, video=v) for v in masks]
    targets = [torch.full(tuple(m.spec.latent), k) for k in (3, 7)]  # two clips of one code each
    text = m.encode_prompt(PROMPT)
    batch = m.layouts.batch([m.layouts.example("control", text, t, {"control": c[0]}) for t, c in zip(targets, conds)])
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    m.train()
    for _ in range(60):
        opt.zero_grad()
        loss = m.loss(batch).loss
        loss.backward()
        opt.step()
    m.eval()
    assert float(loss.detach()) < 0.05
    for c, t in zip(conds, targets):
        out = gen.generate([PROMPT], seed=0, temperature=0.0, controls=[ActiveControl(ctl, c, 1.0)])
        assert (out.ids[0] == t).float().mean() > 0.95


# ----------------------------------------------------------------------------- the CLI


def _train(bases, out, condition, *extra, model=None):
    model = model or bases / "ar" / "final"
    return cli("train", "control", "--model", str(model), "--method", "tokens", "--condition", condition,
               "--data", str(bases / "data"), "--out", str(out), *TRAIN, *extra)


def _gen(model, out, *extra):
    return cli("generate", "--model", str(model), "--prompt", PROMPT, "--save-latents", "--out", str(out), *extra)


@pytest.fixture(scope="module")
def runs(bases, tmp_path_factory):
    root = tmp_path_factory.mktemp("arruns")
    for c in ("boxes", "mask", "edges"):
        rc, s, err = _train(bases, root / c, c, "train.steps=3", "train.lr=1e-2")
        assert rc == 0, err
        assert s["steps"] == 3 and s["paradigm"] == "ar"
    return root


def test_train_saves_only_the_changed_tensors_and_leaves_the_base_alone(bases, runs):
    from duogen.io import file_sha256, load_state_dict, read_json

    final = runs / "boxes" / "final"
    conf = read_json(final / "control.json")
    assert conf["paradigm"] == "ar" and conf["method"] == "tokens" and conf["condition"] == "boxes"
    assert conf["base_sha256"] == file_sha256(bases / "ar" / "final" / "model.safetensors")
    saved = load_state_dict(final / "control.safetensors")
    assert "lm.model.embed_tokens.weight" in saved  # grown by the task and bin tokens
    from duogen.bridges.control import load_control_run
    from duogen.ar_models.model import MultimodalLM

    base = MultimodalLM.from_pretrained(bases / "ar" / "final")
    ctl = load_control_run(final, base)
    assert ctl.config.condition == "boxes" and "<bin0>" in ctl.model.vocab.tokens and "<bin0>" not in base.vocab.tokens


def test_resume_is_exact(bases, tmp_path):
    from duogen.io import load_state_dict

    common = ["train.steps=4", "train.ckpt_every=2", "train.keep_last=0", "max_clips=8", "train.log_every=1"]
    rc, _, err = _train(bases, tmp_path / "a", "mask", *common)
    assert rc == 0, err
    ck = sorted((tmp_path / "a" / "checkpoints").iterdir())[0]
    assert ck.name.endswith("2")
    (tmp_path / "b" / "checkpoints").mkdir(parents=True)
    shutil.copytree(ck, tmp_path / "b" / "checkpoints" / ck.name)
    rc, s, err = _train(bases, tmp_path / "b", "mask", *common, "--resume")
    assert rc == 0, err
    assert s["steps"] == 4
    a = load_state_dict(tmp_path / "a" / "final" / "control.safetensors")
    b = load_state_dict(tmp_path / "b" / "final" / "control.safetensors")
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_generate_with_each_condition_kind(bases, runs, files, tmp_path):
    from duogen.io import load_state_dict

    ar = bases / "ar" / "final"
    rc, _, err = _gen(ar, tmp_path / "plain")
    assert rc == 0, err
    plain = load_state_dict(tmp_path / "plain" / "latents.safetensors")["ids"]
    for c in ("boxes", "mask", "edges"):
        rc, s, err = _gen(ar, tmp_path / c, "--control", f"{runs / c}:1.5", f"--{c}", str(files[c]))
        assert rc == 0, (c, err)
        assert s["settings"]["control_scales"] == [1.5] and len(list((tmp_path / c).glob("*.mp4"))) == 1
        assert not torch.equal(plain, load_state_dict(tmp_path / c / "latents.safetensors")["ids"])
    rc, _, err = _gen(ar, tmp_path / "zero", "--control", f"{runs / 'mask'}:0", "--mask", str(files["mask"]))
    assert rc == 0, err
    assert torch.equal(plain, load_state_dict(tmp_path / "zero" / "latents.safetensors")["ids"])


def test_bad_input_is_one_line_and_exit_2(bases, runs, files, tmp_path):
    from duogen.data.media import read_video, write_mp4
    from duogen.diffusion.control import ControlConfig, make_control, save_control
    from duogen.diffusion.latent import LatentDiffusionModel

    ar, dit = bases / "ar" / "final", bases / "dit" / "final"
    short = write_mp4(tmp_path / "short.mp4", read_video(files["mask"])[:-1])
    outside = tmp_path / "outside.json"
    outside.write_text('[{"phrase": "a red circle", "boxes": ' + str([[40, 40, 50, 50]] * 9) + "]")
    three = write_boxes(tmp_path / "three.json", _tracks([0, 0, 4, 4], [5, 5, 9, 9]) + _tracks([10, 10, 14, 14]))
    torch.manual_seed(0)
    save_control(make_control(ControlConfig(), LatentDiffusionModel.from_pretrained(dit).denoiser),
                 tmp_path / "ditctl" / "final" / "control.safetensors")
    mask, boxes = str(runs / "mask"), str(runs / "boxes")
    cases = [
        (ar, ["--control", mask, "--mask", str(short)], "frames"),
        (ar, ["--control", boxes, "--boxes", str(outside)], "outside"),
        (ar, ["--control", boxes, "--boxes", str(three)], "at most 2"),
        (ar, ["--control", boxes, "--mask", str(files["mask"])], "--boxes"),
        (REF_AR, ["--control", mask, "--mask", str(files["mask"])], "another base"),
        (dit, ["--control", mask, "--mask", str(files["mask"]), "--steps", "2"], "AR control"),
        (ar, ["--control", str(tmp_path / "ditctl"), "--mask", str(files["mask"])], "diffusion control"),
        (ar, ["--control", mask, "--mask", str(files["mask"]), "--task", "uncond"], "t2v"),
    ]
    for k, (model, extra, says) in enumerate(cases):
        rc, _, err = _gen(model, tmp_path / f"bad{k}", *extra)
        assert rc == 2 and err.count("\n") == 1 and says in err, (k, err)
    rc, _, err = cli("train", "control", "--model", str(ar), "--method", "controlnet", "--condition", "mask",
                     "--data", str(bases / "data"), "--out", str(tmp_path / "r"), *TRAIN)
    assert rc == 2 and err.count("\n") == 1 and "tokens" in err, err
