"""Codec loss and recipe options of issue 19: object-normalised loss, mean-color term, schedule length, step hook."""

import json

import pytest
import torch
from test_codecs import VIDEO_TEST

from duogen import config
from duogen.tokenizers.losses import (
    CodecLossConfig,
    balanced_weight,
    codec_loss,
    foreground_weight,
    gradient_loss,
    mean_color_loss,
    reconstruction_loss,
)
from duogen.tokenizers.video_codec import build_video_codec


def _frame_with_square(size=8, lo=2, hi=4, value=1.0):
    t = -torch.ones(1, 3, size, size)
    t[..., lo:hi, lo:hi] = value
    return t


def test_options_off_are_the_old_loss_bit_for_bit():
    g = torch.Generator().manual_seed(0)
    t = _frame_with_square()
    p = (t + 0.3 * torch.randn(t.shape, generator=g)).clamp(-1, 1)
    aux = torch.tensor(0.25)
    cfg = CodecLossConfig()  # fg_share 0, color_weight 0
    w = foreground_weight(t, p, cfg)
    e = p - t
    old_rec = ((e.abs() + e.square()) * w).sum() / (w.sum() * 3)
    old = old_rec + cfg.grad_weight * gradient_loss(p, t) + aux
    out = codec_loss(p, t, aux, cfg)
    assert torch.equal(out.loss, old) and "color" not in out.metrics


def test_object_normalised_loss_is_the_plain_loss_where_objects_fill_the_frame():
    g = torch.Generator().manual_seed(1)
    t = torch.rand(2, 3, 3, 8, 8, generator=g) * 1.5 - 0.5  # (B, C, F, H, W): every pixel above the threshold
    p = torch.rand(t.shape, generator=g) * 2 - 1
    plain = reconstruction_loss(p, t, CodecLossConfig(fg_weight=0.0))
    for share in (0.3, 0.75, 1.0):
        assert float(reconstruction_loss(p, t, CodecLossConfig(fg_share=share))) == pytest.approx(float(plain), rel=1e-6)
    # an all-background frame: the plain mean too
    bg = -torch.ones(1, 3, 8, 8)
    pb = bg + 0.1
    assert float(reconstruction_loss(pb, bg, CodecLossConfig(fg_share=0.75))) == pytest.approx(0.1 + 0.01, rel=1e-5)


def test_object_normalised_loss_gives_objects_their_share_whatever_their_area():
    cfg = CodecLossConfig(fg_share=0.75, l2_weight=0.0)
    for hi in (3, 6):  # a 1x1 and a 4x4 object (3x3 and 6x6 once dilated)
        t = _frame_with_square(size=16, lo=2, hi=hi, value=0.5)
        p = t.clone()
        p[..., 2:hi, 2:hi] = 0.0  # error 0.5 on the object pixels only
        w = balanced_weight(t, p, cfg)
        assert float(w.sum()) == pytest.approx(1.0)
        n_obj, n_fg = (hi - 2) ** 2, (hi - 2 + 2) ** 2  # object pixels, dilated foreground pixels
        expected = 0.75 * 0.5 * n_obj / n_fg  # fg weight 0.75 / n_fg per pixel, error 0.5 on n_obj of them
        assert float(reconstruction_loss(p, t, cfg)) == pytest.approx(expected, rel=1e-5)


def test_mean_color_term_sees_patch_colors_not_pixel_detail():
    cfg = CodecLossConfig(color_weight=1.0, color_patch=4)
    t = _frame_with_square(size=8, lo=0, hi=4, value=0.2)  # one 4x4 patch of flat color
    detail = t.clone()
    detail[..., 0:4:2, :4] += 0.1  # the same patch mean, different pixels
    detail[..., 1:4:2, :4] -= 0.1
    assert float(mean_color_loss(detail, t, cfg)) == pytest.approx(0.0, abs=1e-6)
    assert float(reconstruction_loss(detail, t, cfg)) > 0
    hue = t.clone()
    hue[:, 0, :4, :4] = 0.8  # red channel off by 0.6 over the patch
    c = mean_color_loss(hue.requires_grad_(), t, cfg)
    assert float(c.detach()) > 0
    c.backward()
    assert float(hue.grad.abs().sum()) > 0
    out = codec_loss(hue.detach(), t, torch.zeros(()), cfg)
    off = codec_loss(hue.detach(), t, torch.zeros(()), CodecLossConfig(color_patch=4))
    assert float(out.loss) == pytest.approx(float(off.loss) + out.metrics["color"], rel=1e-6)


def _items(n=4):
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(n, 9, 16, 16, 3, dtype=torch.uint8)
    for i in range(n):
        x[i, :, 4:10, 3 + i : 9 + i] = torch.randint(64, 256, (3,), generator=g).to(torch.uint8)
    return x.numpy()  # (N, F, H, W, 3)


def _run(tmp_path, name, hook=None, **train):
    from duogen.train.tokenizer_recipe import VideoTokenizerRun, train_codec

    run = config.from_dict(VideoTokenizerRun, {
        "model": config.to_dict(build_video_codec("tiny", VIDEO_TEST).cfg),
        "loss": {"color_weight": 1.0, "fg_share": 0.75},
        "train": {"steps": 3, "max_minutes": 0, "batch_size": 2, "eval_items": 2, "eval_every_s": 1000,
                  "stats_items": 4, "precision": "fp32", "log_every": 1, "warmup_steps": 1, "lr": 1e-3, **train}})
    items = _items()
    train_codec(run, "video", "synthetic", tmp_path / name, train_items=items, val_items=items[:2],
                heldout_items=items[2:], step_hook=hook)
    rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows if "eval" not in r}


def test_schedule_steps_and_step_hook(tmp_path):
    seen = []

    def hook(step, codec):
        seen.append((step, codec.training))
        codec.eval()  # the loop must put it back in training mode

    short = _run(tmp_path, "short", hook=hook)
    long = _run(tmp_path, "long", schedule_steps=100)
    assert seen == [(1, True), (2, True), (3, True)]
    # cosine over 3 steps is well down at step 3; over 100 steps it has barely moved
    assert short[3]["lr"] < 0.6 * long[3]["lr"] and long[3]["lr"] > 0.99e-3
    assert short[1]["lr"] == long[1]["lr"] and "color" in short[1]



def test_weight_average_is_what_evaluations_the_hook_and_final_see_and_training_is_unchanged(tmp_path):
    from duogen.tokenizers import load as load_codec_dir

    def recorder(into):
        def hook(step, codec):
            into[step] = {k: v.detach().clone() for k, v in codec.named_parameters()}
        return hook

    raw, avg = {}, {}
    plain = _run(tmp_path, "plain", hook=recorder(raw))
    averaged = _run(tmp_path, "avg", hook=recorder(avg), ema=0.9)
    assert [plain[s]["loss"] for s in (1, 2, 3)] == [averaged[s]["loss"] for s in (1, 2, 3)]  # the swaps change no step
    for n in (1, 2):  # update n folds the step-(n + 1) weights in with decay min(0.9, (1 + n) / (10 + n))
        d = (1 + n) / (10 + n)
        for k, v in avg[n + 1].items():
            torch.testing.assert_close(v, d * avg[n][k] + (1 - d) * raw[n + 1][k], rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(avg[3][k], raw[3][k]) for k in raw[3])
    for name, want in (("plain", raw[3]), ("avg", avg[3])):  # final/ holds the average (the raw weights without it)
        saved = dict(load_codec_dir(tmp_path / name / "final").named_parameters())
        for k, v in want.items():
            torch.testing.assert_close(saved[k], v)


def test_weight_average_decay_is_checked():
    from duogen.errors import ConfigError
    from duogen.train.tokenizer_recipe import CodecTrainConfig

    with pytest.raises(ConfigError, match="train.ema"):
        CodecTrainConfig(steps=1, ema=1.0).check()


def test_object_cells_follow_the_causal_frame_groups_and_the_2d_blocks():
    codec = build_video_codec("tiny")
    x = -torch.ones(1, 3, 9, 32, 32)
    x[0, 1, 0, 0, 31] = 0.5  # frame 0 is latent frame 0 alone
    x[0, 0, 5, 10, 10] = 1.0  # frames 5-8 are latent frame 2; pixel (10, 10) is in 4x4 block (2, 2)
    x[0, :, 4, 20, 3] = -0.9  # below the threshold: background
    cells = codec.object_cells(x)
    assert cells.shape == (1, 3, 8, 8)
    assert sorted(map(tuple, cells.nonzero().tolist())) == [(0, 0, 0, 7), (0, 2, 2, 2)]


def test_background_term_is_the_spread_of_object_free_cells_and_only_trains():
    """background_weight adds the spread of object-free cells' continuous latents to the quantizer's aux loss in
    training (off: the aux loss as before); a codec whose latent is flat over the background pays nothing."""
    torch.manual_seed(0)
    x = -torch.ones(2, 3, 9, 32, 32)
    x[:, 0, :, 4:10, 4:10] = 1.0  # a red square: the cells it touches are object cells
    off = build_video_codec("tiny", ["latent_norm=rms", "latent_dropout=0"])
    on = build_video_codec("tiny", ["latent_norm=rms", "latent_dropout=0", "background_weight=2.0"])
    on.load_state_dict(off.state_dict())
    cells = on.object_cells(x)
    assert cells.shape == (2, 3, 8, 8) and cells[:, :, 1:3, 1:3].all() and cells.sum() == 2 * 3 * 2 * 2
    z = on.encoder(x)
    spread = on.background_spread(x, z)
    bg = on.quantizer.continuous(z).movedim(1, -1)[~cells]
    assert torch.allclose(spread, (bg - bg.mean(0)).square().sum(-1).mean())
    _, q_off, _ = off.train()(x)
    _, q_on, _ = on.train()(x)
    assert torch.allclose(q_on.aux_loss, q_off.aux_loss + 2.0 * spread, atol=1e-6)
    q_on.aux_loss.backward()
    assert sum(p.grad.abs().sum() for p in on.enc_out.parameters()) > 0  # the term trains the encoder
    _, q_eval, _ = on.eval()(x)
    assert torch.equal(q_eval.aux_loss, off.eval()(x)[1].aux_loss)
    flat = torch.zeros(1, 4, 3, 8, 8)  # a latent equal everywhere: no spread, whatever the objects
    assert float(on.background_spread(x[:1], flat)) == 0.0
    with pytest.raises(Exception, match="background_weight"):
        build_video_codec("tiny", ["background_weight=-1"])


def test_code_entropy_term_spreads_object_cells_only_when_asked():
    """entropy_cells=objects: FSQ's code-entropy term averages only object cells over the batch (an all-black batch:
    no batch part, the per-position entropy alone, >= 0); entropy_cells=all: every cell."""
    from duogen.tokenizers.quantizers import _to_seq, fsq_entropy_loss

    torch.manual_seed(0)
    overrides = ["latent_dropout=0", "quantizer.fsq_entropy_weight=0.5"]
    every = build_video_codec("tiny", overrides).train()
    objects = build_video_codec("tiny", [*overrides, "entropy_cells=objects"]).train()
    objects.load_state_dict(every.state_dict())
    q = objects.quantizer
    x = -torch.ones(2, 3, 9, 32, 32)
    x[1, 0, :, 4:10, 4:10] = 1.0  # a red square in the second clip only
    for clips in (x[:1], x):
        cells = objects.object_cells(clips)
        units = q._level_units(_to_seq(objects.encoder(clips))[0])
        loss = lambda mask: 0.5 * fsq_entropy_loss(units, q.cfg.levels, q.cfg.fsq_entropy_temperature, batch_mask=mask)  # noqa: E731
        assert torch.allclose(objects(clips)[1].aux_loss, loss(cells), atol=1e-5)
        assert torch.allclose(every(clips)[1].aux_loss, loss(None), atol=1e-5)
        assert int(cells.sum()) == (0 if clips.shape[0] == 1 else 3 * 2 * 2)
    assert float(objects(x[:1])[1].aux_loss.detach()) >= 0
    with pytest.raises(Exception, match="entropy_cells"):
        build_video_codec("tiny", ["entropy_cells=background"])
