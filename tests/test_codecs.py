"""Image and video codecs: the codec contract, causality, save / load, bad input, losses, a short training run."""

import copy
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from duogen import tokenizers
from duogen.errors import CheckpointError, ConfigError, DataError
from duogen.tokenizers.image_codec import IMAGE_CODEC_PRESETS, ImageCodec, build_image_codec
from duogen.tokenizers.layers import CausalLatentAttention, CausalResBlock3d
from duogen.tokenizers.losses import (
    CodecLossConfig,
    PatchDiscriminator,
    PatchDiscriminator3d,
    build_discriminator,
    codec_loss,
    foreground_weight,
    gradient_loss,
    psnr,
)
from duogen.tokenizers.video_codec import VideoCodec, build_video_codec

VIDEO_TEST = ["patch=2", "widths=[16,32]", "latent_blocks=1", "size=16", "frames=9",
              "quantizer.dim=3", "quantizer.levels=[5,5,5]", "latent_dropout=0", "train_frames=0"]
IMAGE_TEST = ["patch=2", "widths=[16,32]", "size=16", "quantizer.dim=3", "quantizer.levels=[5,5,5]"]
# the 'small' preset's 8x spatial factor (patch 1, four levels), narrow
VIDEO_8X = ["widths=[8,8,8,16]", "latent_blocks=1", "size=16", "frames=9",
            "quantizer.dim=3", "quantizer.levels=[5,5,5]", "latent_dropout=0", "train_frames=0"]


def _clips(b=2, f=9, s=16, seed=0):
    """Deterministic clips in [-1, 1]: a bright square moving one pixel per frame on black, plus a little noise."""
    g = torch.Generator().manual_seed(seed)
    x = -torch.ones(b, 3, f, s, s)
    for i in range(b):
        c = torch.rand(3, generator=g) * 1.6 - 0.6
        for t in range(f):
            x[i, :, t, 3 + t // 2 : 9 + t // 2, 2 + (t + i) % 6 : 8 + (t + i) % 6] = c.view(3, 1, 1)
    return (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(-1, 1)


@pytest.fixture(scope="module")
def video():
    torch.manual_seed(0)
    return build_video_codec("tiny", VIDEO_TEST).eval()


@pytest.fixture(scope="module")
def video8x():
    torch.manual_seed(0)
    codec = build_video_codec("small", VIDEO_8X).eval()
    # Residual branches start at zero (SkipInit), which makes every causal 3D block the identity;
    # small random last convs make the causality test below reach the blocks' temporal kernels.
    with torch.no_grad():
        for block in codec.modules():
            if isinstance(block, CausalResBlock3d):
                nn.init.normal_(block.convs[-1].conv.weight, std=0.05)
    return codec


def _with_running_stats(latent_norm):
    """The video codec with this latent norm, after three training batches set its running statistics."""
    torch.manual_seed(0)
    codec = build_video_codec("tiny", VIDEO_TEST + [f"latent_norm={latent_norm}"]).train()
    with torch.no_grad():
        for seed in range(3):
            codec(_clips(b=4, seed=seed))
    return codec.eval()


@pytest.fixture(scope="module")
def video_bn():
    """Standardized latent channels (latent_norm=batch)."""
    return _with_running_stats("batch")


@pytest.fixture(scope="module")
def video_white():
    """Decorrelated latent channels (latent_norm=whiten)."""
    return _with_running_stats("whiten")


@pytest.fixture(scope="module")
def video_color():
    """The video codec with the color path, its decoder side set off zero so the tests see it."""
    torch.manual_seed(0)
    codec = build_video_codec("tiny", VIDEO_TEST).eval()  # the preset has it
    with torch.no_grad():
        nn.init.normal_(codec.color_out.weight, std=0.3)
    return codec


@pytest.fixture(scope="module")
def video_attn():
    """The video codec with a latent attention block each side, its output projections and the residual blocks'
    last convs set off zero (both start as the identity) so the tests reach them."""
    torch.manual_seed(0)
    codec = build_video_codec("tiny", VIDEO_TEST).eval()  # the preset has one block each side
    assert codec.cfg.latent_attention == 1
    with torch.no_grad():
        for block in codec.modules():
            if isinstance(block, CausalLatentAttention):
                nn.init.normal_(block.proj.weight, std=0.2)
            if isinstance(block, CausalResBlock3d):
                nn.init.normal_(block.convs[-1].conv.weight, std=0.05)
    return codec


@pytest.fixture(scope="module")
def image():
    torch.manual_seed(0)
    return build_image_codec("tiny", IMAGE_TEST).eval()


def test_video_shapes(video):
    x = _clips()
    with torch.no_grad():
        ids, z = video.encode(x), video.encode_latents(x)
        assert ids.shape == (2, 3, 4, 4) and ids.dtype == torch.long  # 9 frames -> 1 + 2 latent frames, 16 -> 4
        assert z.shape == (2, 3, 3, 4, 4)
        assert video.latent_shape(x.shape) == (3, 3, 4, 4)
        assert video.decode(ids).shape == x.shape
        assert video.vocab_size == 125 and int(ids.max()) < 125
        # the forward (training) pass quantizes to the same ids in eval mode
        rec, q, frames = video(x)
        assert torch.equal(q.ids, ids) and frames.tolist() == list(range(9)) and rec.shape == x.shape


def test_image_shapes(image):
    x = _clips()[:, :, 0]
    with torch.no_grad():
        ids = image.encode(x)
        assert ids.shape == (2, 4, 4) and image.encode_latents(x).shape == (2, 3, 4, 4)
        assert image.latent_shape(x.shape) == (3, 4, 4) and image.decode(ids).shape == x.shape


@pytest.mark.parametrize("preset, factor", [("tiny", 4), ("small", 8), ("base", 16)])
def test_image_shapes_at_each_downsampling_factor(preset, factor):
    # the preset's depth and patch (so its factor) with narrow widths and one block per level
    depth = len(IMAGE_CODEC_PRESETS[preset].widths)
    codec = build_image_codec(preset, [f"widths={[8] * (depth - 1) + [16]}", "blocks=1"]).eval()
    assert codec.cfg.spatial_factor == factor
    x = _clips(s=48)[:, :, 0, :32]  # (2, 3, 32, 48): not square, so swapped h and w would show
    h, w = 32 // factor, 48 // factor
    with torch.no_grad():
        ids = codec.encode(x)
        assert ids.shape == (2, h, w) and codec.encode_latents(x).shape == (2, codec.cfg.quantizer.dim, h, w)
        assert codec.latent_shape(x.shape) == (codec.cfg.quantizer.dim, h, w)
        assert codec.decode(ids).shape == x.shape
    with pytest.raises(DataError, match=f"multiple of {factor}"):
        codec.encode(x[:, :, :30])


def test_decoder_with_its_own_levels():
    """decoder_extra_levels: the 2D decoder gets a level finer than the encoder's (here 16x16 after patch 4's 8x8)."""
    torch.manual_seed(0)
    codec = build_video_codec("tiny", ["patch=4", "widths=[16]", "decoder_extra_levels=1", "size=16", "latent_blocks=1",
                                       "quantizer.dim=3", "quantizer.levels=[5,5,5]", "train_frames=0"]).eval()
    assert codec.cfg.dec_widths == [8, 16] and codec.dec2d.patch == 2 and codec.enc2d.patch == 4
    x = _clips()
    with torch.no_grad():
        ids = _check_id_paths(codec, x)
        assert ids.shape == (2, 3, 4, 4) and codec.decode(ids).shape == x.shape
    assert build_video_codec("tiny", ["patch=4", "widths=[16]"]).cfg.dec_widths == [8, 16]  # the preset's extra level follows widths
    full = build_video_codec("tiny", ["patch=4", "widths=[16]", "decoder_extra_levels=2"]).eval()
    assert full.cfg.dec_widths == [4, 8, 16] and full.dec2d.patch == 1  # two extra levels: the finest at full resolution
    with torch.no_grad():
        assert full.decode(full.encode(_clips(s=32))).shape == _clips(s=32).shape
    for bad in (["patch=2", "decoder_extra_levels=2"], ["widths=[12]", "decoder_extra_levels=3"], ["decoder_extra_levels=-1"]):
        with pytest.raises(ConfigError, match="decoder_extra_levels"):
            build_video_codec("tiny", bad)


def test_the_tiny_preset_with_patch_2_has_a_16x16_grid_and_a_full_resolution_decoder():
    """`model.patch=2` (README, issue 19: 27.2 dB at 1,000 steps): the preset's other choices follow it; the color
    path averages 2x2 cells; 768 ids per 9-frame 32x32 clip, and ids decode to the clip's shape."""
    torch.manual_seed(0)
    codec = build_video_codec("tiny", ["patch=2", "widths=[16]", "latent_blocks=1"]).eval()
    cfg = codec.cfg
    assert cfg.spatial_factor == 2 and cfg.dec_patch == 1 and cfg.dec_widths == [8, 16] and cfg.color_path
    x = _clips(s=32)
    with torch.no_grad():
        ids = _check_id_paths(codec, x)
        assert ids.shape == (2, 3, 16, 16) and ids[0].numel() == 768 and codec.decode(ids).shape == x.shape


def test_video_8x_shapes(video8x):
    x = _clips(s=32)[..., :16, :]  # (2, 3, 9, 16, 32)
    with torch.no_grad():
        ids = video8x.encode(x)
        assert video8x.cfg.spatial_factor == 8
        assert ids.shape == (2, 3, 2, 4)  # 9 frames -> 1 + 2 latent frames, 16 x 32 -> 2 x 4
        assert video8x.encode_latents(x).shape == (2, 3, 3, 2, 4) and video8x.latent_shape(x.shape) == (3, 3, 2, 4)
        assert video8x.decode(ids).shape == x.shape
        assert torch.equal(video8x(x)[1].ids, ids)


def _check_id_paths(codec, x):
    """encode(x) -> ids; decode(ids) is decode_latents(ids_to_latents(ids)) and the ids round the latents."""
    ids = codec.encode(x)
    assert torch.equal(codec.decode(ids), codec.decode_latents(codec.ids_to_latents(ids)))
    assert torch.equal(codec.latents_to_ids(codec.encode_latents(x)), ids)
    assert torch.equal(codec.latents_to_ids(codec.ids_to_latents(ids)), ids)
    return ids


@pytest.mark.parametrize("name", ["video", "image"])
def test_ids_and_latent_paths_agree(name, video, image):
    codec = video if name == "video" else image
    x = _clips() if name == "video" else _clips()[:, :, 0]
    with torch.no_grad():
        ids = _check_id_paths(codec, x)
        # FSQ continuous latents stay within half a level of their codes
        gap = (codec.encode_latents(x) - codec.ids_to_latents(ids)).abs().max()
        assert float(gap) <= 0.5 / 2 + 1e-4


@pytest.mark.parametrize("name", ["video", "video8x", "video_bn", "video_white", "video_color", "video_attn"])
def test_causal_first_frame_and_prefix(name, request):
    video = request.getfixturevalue(name)
    x = _clips()
    with torch.no_grad():
        z_all, z_first, z_five = video.encode_latents(x), video.encode_latents(x[:, :, :1]), video.encode_latents(x[:, :, :5])
        # MAGVIT-v2 causality: frame 0 is encoded on its own, so an image is a one-frame video
        torch.testing.assert_close(z_all[:, :, :1], z_first, atol=1e-5, rtol=0)
        torch.testing.assert_close(z_all[:, :, :2], z_five, atol=1e-5, rtol=0)
        assert torch.equal(video.encode(x)[:, :1], video.encode(x[:, :, :1]))
        # the decoder is causal too: the first frame decodes from the first latent frame alone
        ids = video.encode(x)
        torch.testing.assert_close(video.decode(ids)[:, :, :1], video.decode(ids[:, :1]), atol=1e-5, rtol=0)
        # changing a later frame never changes earlier latents
        y = x.clone()
        y[:, :, 8] = 1.0
        torch.testing.assert_close(video.encode_latents(y)[:, :, :2], z_all[:, :, :2], atol=1e-5, rtol=0)
        assert not torch.allclose(video.encode_latents(y)[:, :, 2], z_all[:, :, 2])


@pytest.mark.parametrize("kind", ["vq", "lfq"])
@pytest.mark.parametrize("name", ["video", "image"])
def test_vq_and_lfq_codecs_keep_the_contract(kind, name, tmp_path):
    torch.manual_seed(0)
    base = VIDEO_TEST if name == "video" else IMAGE_TEST
    quant = [f"quantizer.kind={kind}", "quantizer.dim=4", "quantizer.codebook_size=16", "quantizer.kmeans_iters=2"]
    build = build_video_codec if name == "video" else build_image_codec
    codec = build("tiny", [o for o in base if not o.startswith("quantizer.")] + quant)
    x = _clips() if name == "video" else _clips()[:, :, 0]
    with torch.no_grad():
        codec.train()(x)  # VQ: k-means initialises the (all-zero) codebook on this first training batch
        codec.eval()
        ids = _check_id_paths(codec, x)
        assert ids.shape == (2, *codec.latent_shape(x.shape)[1:]) and codec.vocab_size == 16
        assert int(ids.min()) >= 0 and int(ids.max()) < 16 and ids.unique().numel() > 1
        assert codec.decode(ids).shape == x.shape
        assert torch.equal(codec(x)[1].ids, ids)  # the library's own eval-mode lookup picks the same codes
        codec.save_pretrained(tmp_path / "c")
        assert torch.equal(tokenizers.load(tmp_path / "c").encode(x), ids)


def _pre_norm_latent(codec, x):
    """The encoder's latent (B, D, f, h, w) before its latent norm (`enc_std`), computed layer by layer."""
    z = codec.enc_out(codec.enc_norm(codec.enc_latent(codec.enc_down(codec.enc_frame(
        codec.enc2d(x.transpose(1, 2).flatten(0, 1)).unflatten(0, x.shape[:1] + x.shape[2:3]).transpose(1, 2))))))
    if codec.color_in is not None:  # the preset's color path adds each cell's mean color before the norm
        z = z + codec.color_in(codec.cell_colors(x))
    return z


def test_standardized_latent_channels(video_bn, tmp_path):
    """latent_norm=batch: training standardizes each of the D channels over the batch; eval applies the
    running statistics, a fixed affine map, so the codec contract, causality (above) and save / load hold."""
    x = _clips()
    bn = video_bn.enc_std
    assert int(bn.num_batches_tracked) == 3 and not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
    with torch.no_grad():
        _check_id_paths(video_bn, x)
        z_raw = _pre_norm_latent(video_bn, x)
        shape = (1, -1, 1, 1, 1)
        want = (z_raw - bn.running_mean.view(shape)) / (bn.running_var.view(shape) + bn.eps).sqrt()
        torch.testing.assert_close(video_bn.encoder(x), want, atol=1e-5, rtol=1e-5)
        state = {k: v.clone() for k, v in bn.state_dict().items()}
        z_train = video_bn.train().encoder(_clips(b=4, seed=7))  # training: this batch's own statistics
        bn.load_state_dict(state)  # the fixture is shared: undo this batch's update of the running statistics
        video_bn.eval()
        torch.testing.assert_close(z_train.mean((0, 2, 3, 4)), torch.zeros(z_train.shape[1]), atol=1e-5, rtol=0)
        torch.testing.assert_close(z_train.var((0, 2, 3, 4), unbiased=False), torch.ones(z_train.shape[1]), atol=1e-3, rtol=0)
        video_bn.save_pretrained(tmp_path / "c")
        loaded = tokenizers.load(tmp_path / "c")
        assert torch.equal(loaded.encode(x), video_bn.encode(x))
        assert torch.equal(loaded.enc_std.running_mean, bn.running_mean)
    # calibration: the running statistics become the exact ones of these clips under the current weights
    calibrated = copy.deepcopy(video_bn)
    rng = torch.get_rng_state()
    calibrated.calibrate_latent_norm([x[:1], x[1:]])
    assert torch.equal(torch.get_rng_state(), rng) and not calibrated.training
    cbn = calibrated.enc_std
    per_clip = [z_raw[i : i + 1].transpose(0, 1).flatten(1) for i in range(2)]  # (D, n) each
    torch.testing.assert_close(cbn.running_mean, sum(p.mean(1) for p in per_clip) / 2)
    torch.testing.assert_close(cbn.running_var, sum(p.var(1) for p in per_clip) / 2)
    calibrated.train().calibrate_latent_norm([x])
    assert calibrated.training  # the mode it had
    with pytest.raises(ConfigError, match="latent_norm"):
        build_video_codec("tiny", ["latent_norm=layer"])


def test_whitened_latent_channels(video_white, tmp_path):
    """latent_norm=whiten: training maps the D channels to zero mean and identity covariance over the batch (every
    position a sample); eval applies the running mean and covariance's Cholesky factor, a fixed linear map per
    position, so the id paths, causality (above) and save / load hold; calibration averages per-batch statistics."""
    x = _clips()
    wt = video_white.enc_std
    assert int(wt.num_batches_tracked) == 3
    with torch.no_grad():
        _check_id_paths(video_white, x)
        z_raw = _pre_norm_latent(video_white, x)
        flat = z_raw.movedim(1, -1).reshape(-1, z_raw.shape[1])
        chol = torch.linalg.cholesky(wt.running_cov + wt.eps * torch.eye(wt.dim))
        want = torch.linalg.solve(chol, (flat - wt.running_mean).T).T
        torch.testing.assert_close(video_white.encoder(x).movedim(1, -1).reshape_as(flat), want, atol=1e-4, rtol=1e-4)
        state = {k: v.clone() for k, v in wt.state_dict().items()}
        z_train = video_white.train().encoder(_clips(b=4, seed=7))  # training: this batch's own statistics
        wt.load_state_dict(state)  # the fixture is shared: undo this batch's update of the running statistics
        video_white.eval()
        zt = z_train.movedim(1, -1).reshape(-1, z_train.shape[1])
        torch.testing.assert_close(zt.mean(0), torch.zeros(zt.shape[1]), atol=1e-4, rtol=0)
        torch.testing.assert_close(torch.cov(zt.T), torch.eye(zt.shape[1]), atol=1e-2, rtol=0)  # eps on the diagonal
        video_white.save_pretrained(tmp_path / "c")
        loaded = tokenizers.load(tmp_path / "c")
        assert torch.equal(loaded.encode(x), video_white.encode(x))
        assert torch.equal(loaded.enc_std.running_cov, wt.running_cov)
    calibrated = copy.deepcopy(video_white)
    calibrated.calibrate_latent_norm([x[:1], x[1:]])
    per_clip = [z_raw[i : i + 1].movedim(1, -1).reshape(-1, z_raw.shape[1]) for i in range(2)]  # (n, D) each
    torch.testing.assert_close(calibrated.enc_std.running_mean, sum(p.mean(0) for p in per_clip) / 2)
    torch.testing.assert_close(calibrated.enc_std.running_cov, sum(torch.cov(p.T) for p in per_clip) / 2)
    # bf16 training: the statistics and the factor stay in fp32 (a bf16 covariance would not whiten)
    layer = copy.deepcopy(wt).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(z_raw.bfloat16())
    yf = y.float().movedim(1, -1).reshape(-1, y.shape[1])
    torch.testing.assert_close(torch.cov(yf.T), torch.eye(yf.shape[1]), atol=3e-2, rtol=0)
    with pytest.raises(ConfigError, match="rms, batch, whiten"):
        build_video_codec("tiny", ["latent_norm=zca"])


def test_color_path_carries_each_cells_mean_color_through_the_latent(video_color, tmp_path):
    """color_path=true: each latent cell's mean input color (its s x s pixels over its frames: frame 0 alone,
    then r frames per latent frame) enters the latent linearly, and a linear map of the latent paints one flat
    color over the same pixels and frames. At initialisation the latent's first three channels carry the cell
    colors on top of the convolutions' output and the decoder adds nothing, so the codec starts as without it."""
    x = _clips()
    s, r = video_color.cfg.spatial_factor, video_color.cfg.temporal_factor
    cells = video_color.cell_colors(x)
    assert cells.shape == (2, 3, 3, 16 // s, 16 // s)
    for j, frames in ((0, slice(0, 1)), (1, slice(1, 1 + r)), (2, slice(1 + r, 1 + 2 * r))):
        for a, b in ((0, 0), (1, 3), (3, 2)):
            want = x[:, :, frames, a * s : (a + 1) * s, b * s : (b + 1) * s].mean((2, 3, 4))
            torch.testing.assert_close(cells[:, :, j, a, b], want, atol=1e-6, rtol=0)
    with torch.no_grad():
        z = torch.randn(2, 3, 3, 16 // s, 16 // s)
        paint, flat = video_color.cell_image(z), video_color.color_out(z)
        assert paint.shape == (2, 3, 9, 16, 16)
        torch.testing.assert_close(paint[:, :, 0, :s, :s], flat[:, :, 0, :1, :1].expand(-1, -1, s, s))
        torch.testing.assert_close(paint[:, :, 1 : 1 + r, s : 2 * s, :s], flat[:, :, 1, 1:2, :1, None].expand(-1, -1, r, s, s))
        torch.testing.assert_close(paint[:, :, 1 + r :, :s, -s:], flat[:, :, 2, :1, -1:, None].expand(-1, -1, r, s, s))
    torch.manual_seed(0)
    plain = build_video_codec("tiny", VIDEO_TEST + ["color_path=false"]).eval()
    torch.manual_seed(0)
    fresh = build_video_codec("tiny", VIDEO_TEST).eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh.encoder(x), plain.encoder(x) + cells, atol=1e-5, rtol=0)
        ids = fresh.encode(x)
        torch.testing.assert_close(fresh.decode(ids), plain.decode(ids), atol=1e-6, rtol=0)
    rec, q, frames = fresh.train()(x)  # training moves both sides of the path
    codec_loss(rec, x[:, :, frames], q.aux_loss, CodecLossConfig()).loss.backward()
    assert fresh.color_in.weight.grad.abs().sum() > 0 and fresh.color_out.weight.grad.abs().sum() > 0
    with torch.no_grad():
        video_color.save_pretrained(tmp_path / "c")
        loaded = tokenizers.load(tmp_path / "c")
        assert loaded.cfg.color_path and torch.equal(loaded.decode(loaded.encode(x)), video_color.decode(video_color.encode(x)))


def test_latent_attention_starts_as_the_identity_and_reads_the_whole_frame(video_attn):
    """`latent_attention`: a new block passes its input through; once trained, a latent cell's code depends on
    cells beyond the 3x3 reach of the convolutions around it (a far corner of the same frame), and a block
    works on any grid size."""
    
    torch.manual_seed(0)
    block = CausalLatentAttention(32)
    h = torch.randn(2, 32, 3, 4, 6)
    assert torch.equal(block(h), h)
    x = _clips(s=32)
    y = x.clone()
    y[:, :, :, 24:, 24:] = 1.0  # the bottom-right corner of every frame
    with torch.no_grad():
        z, zy = video_attn.encode_latents(x), video_attn.encode_latents(y)
        plain = build_video_codec("tiny", VIDEO_TEST + ["latent_attention=0"]).eval()
        for m in plain.modules():
            if isinstance(m, CausalResBlock3d):
                nn.init.normal_(m.convs[-1].conv.weight, std=0.05)
        p, py = plain.encode_latents(x), plain.encode_latents(y)
    # the top-left latent cell: out of the convolutions' reach, within the attention's
    assert torch.allclose(p[..., 0, 0], py[..., 0, 0], atol=1e-6)
    assert not torch.allclose(z[..., 0, 0], zy[..., 0, 0], atol=1e-4)
    for bad in (["latent_attention=-1"], ["latent_attention=1", "widths=[16,30]"]):  # 30: not divisible by 4 heads
        with pytest.raises(ConfigError, match="latent_attention"):
            build_video_codec("tiny", VIDEO_TEST + bad)


def test_latent_attention_positions_fit_any_width():
    """Each of t, y, x gets 2 * (width // 6) sinusoid channels, the rest stay 0: any width the heads divide works (a
    16-wide test codec has a block too), and a 128-wide one keeps the 42 per axis its codecs were trained with."""
    for ch, per_axis in ((8, 2), (16, 4), (128, 42)):
        pe = CausalLatentAttention.positions(3, 8, 8, ch, torch.device("cpu"))
        assert pe.shape == (3 * 8 * 8, ch)
        assert pe[:, 3 * per_axis:].abs().max() == 0 and (pe[:, :3 * per_axis].abs().amax(0) > 0).all()
        assert torch.unique(pe, dim=0).shape[0] == 3 * 8 * 8  # every (t, y, x) told apart
    block = CausalLatentAttention(16)
    h = torch.randn(1, 16, 2, 3, 3)
    assert torch.equal(block(h), h)
    with pytest.raises(ValueError, match="divisible by heads"):
        CausalLatentAttention(18)


def test_uint8_input_matches_float(video, image):
    x = _clips(b=1)
    u8 = ((x[0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 3, 0).numpy()  # (F, H, W, 3)
    xf = torch.from_numpy(u8).float().div(127.5).sub(1).permute(3, 0, 1, 2)[None]
    with torch.no_grad():
        assert torch.equal(video.encode(u8), video.encode(xf))
        assert torch.equal(image.encode(u8[0]), image.encode(xf[:, :, 0]))
        assert torch.equal(video.encode(u8[:1]), video.encode(xf[:, :, :1]))  # one frame: an image through the video codec


@pytest.mark.parametrize("name", ["video", "image"])
def test_save_load_identical(name, video, image, tmp_path):
    codec = video if name == "video" else image
    x = _clips() if name == "video" else _clips()[:, :, 0]
    with torch.no_grad():
        codec.set_latent_stats(codec.encode_latents(x))
        codec.save_pretrained(tmp_path / "c")
        assert json.loads((tmp_path / "c" / "config.json").read_text())["kind"] == codec.kind
        loaded = tokenizers.load(tmp_path / "c")
        assert type(loaded) is type(codec)
        assert torch.equal(loaded.encode(x), codec.encode(x))
        assert torch.equal(loaded.decode(codec.encode(x)), codec.decode(codec.encode(x)))
        assert torch.equal(loaded.latent_scale, codec.latent_scale) and torch.equal(loaded.latent_shift, codec.latent_shift)
    assert type(codec).from_pretrained(tmp_path / "c").cfg == codec.cfg


def test_latent_stats_normalise(video):
    x = _clips(b=4)
    with torch.no_grad():
        z = video.encode_latents(x)
        video.set_latent_stats(z)
        n = video.normalize_latents(z).transpose(0, 1).reshape(3, -1)
        torch.testing.assert_close(n.mean(1), torch.zeros(3), atol=1e-5, rtol=0)
        torch.testing.assert_close(n.std(1), torch.ones(3), atol=1e-4, rtol=0)
        torch.testing.assert_close(video.denormalize_latents(video.normalize_latents(z)), z, atol=1e-5, rtol=0)


def test_bad_input(video, image, tmp_path):
    x = _clips()
    with pytest.raises(DataError, match="1 \\+ 4k frames"):
        video.encode(x[:, :, :8])
    with pytest.raises(DataError, match="multiple of 4"):
        video.encode(x[:, :, :, :14, :14])
    with pytest.raises(DataError, match=r"\[-1, 1\]"):
        video.encode((x + 1) * 127.5)
    with pytest.raises(DataError, match=r"\(B, 3, F, H, W\)"):
        video.encode(x[:, :2])
    with pytest.raises(DataError, match="multiple of 4"):
        image.encode(x[:, :, 0, :10, :10])
    with pytest.raises(DataError, match="out of range"):
        video.decode(torch.full((1, 3, 4, 4), 125))
    with pytest.raises(DataError, match="out of range"):
        image.decode(torch.full((1, 4, 4), -1))
    with pytest.raises(DataError, match="uint8"):
        video.encode(np.zeros((9, 16, 16, 3), np.int32))
    with pytest.raises(CheckpointError, match="no config.json"):
        tokenizers.load(tmp_path)
    (tmp_path / "config.json").write_text('{"kind": "mystery"}')
    with pytest.raises(CheckpointError, match="unknown codec kind"):
        tokenizers.load(tmp_path)
    with pytest.raises(CheckpointError, match="not a video_codec"):
        image.save_pretrained(tmp_path / "img")
        VideoCodec.from_pretrained(tmp_path / "img")
    with pytest.raises(ConfigError):
        build_video_codec("tiny", ["frames=8"])
    with pytest.raises(ConfigError, match="multiple of the spatial factor"):
        build_video_codec("tiny", ["size=30"])


def test_losses_constructed_cases():
    t = -torch.ones(1, 3, 8, 8)
    t[..., 2:4, 2:4] = 1.0
    cfg = CodecLossConfig(fg_weight=4.0)
    w = foreground_weight(t, t, cfg)
    assert float(w[0, 0, 2, 2]) == 5.0 and float(w[0, 0, 1, 1]) == 5.0 and float(w[0, 0, 7, 7]) == 1.0  # dilated by 1 px
    assert float(gradient_loss(t, t)) == 0.0
    # a uniform error of 0.2 in [-1, 1] is 0.1 on the [0, 1] scale: PSNR = -10 log10(0.01) = 20 dB
    assert float(psnr(t.clamp(-1, 0.8) * 0 + 0.2, t * 0)) == pytest.approx(20.0, abs=1e-4)
    # a black prediction of a mostly black frame: the weighted loss is larger than the plain one
    plain = codec_loss(-torch.ones_like(t), t, torch.zeros(()), CodecLossConfig(fg_weight=0, grad_weight=0)).loss
    weighted = codec_loss(-torch.ones_like(t), t, torch.zeros(()), CodecLossConfig(fg_weight=4, grad_weight=0)).loss
    assert float(weighted) > 2 * float(plain)


def test_adversarial_term_switches_on_after_warmup():
    torch.manual_seed(0)
    d = PatchDiscriminator(8)
    cfg = CodecLossConfig(adv_weight=0.1, adv_start=5)
    x = _clips(b=1)
    before = codec_loss(x * 0.5, x, torch.zeros(()), cfg, step=4, discriminator=d)
    after = codec_loss(x * 0.5, x, torch.zeros(()), cfg, step=5, discriminator=d)
    assert "adv_g" not in before.metrics and "adv_g" in after.metrics
    assert float(after.loss.detach()) == pytest.approx(float(before.loss.detach()) + 0.1 * after.metrics["adv_g"], rel=1e-5)


def test_3d_discriminator_maps_clips_to_space_time_patches():
    d = PatchDiscriminator3d(8)
    x = _clips()  # (2, 3, 9, 16, 16)
    assert d(x).shape == (2, 1, 5, 4, 4)  # time halved once (ceil), space by 4
    assert d(x[:, :, :1]).shape == (2, 1, 1, 4, 4)  # a one-frame clip (an image) fits
    # its kernels span frames, locally: frame 8 reaches time patches 1-4 (frames 7-8 after layer 1,
    # patches 3-4 after the stride-2 layer, two kernel-3 layers after that), never patch 0 (it sees frames 0-6)
    y = x.clone()
    y[:, :, 8] = 1.0
    with torch.no_grad():
        diff = (d(y) - d(x)).abs().amax(dim=(0, 1, 3, 4))  # (5,)
    assert diff[0] == 0 and (diff[1:] > 0).all()
    assert isinstance(build_discriminator("video"), PatchDiscriminator3d)
    assert isinstance(build_discriminator("image"), PatchDiscriminator)


def test_overfit_one_batch():
    """A tiny video codec on one batch of two clips: the loss must fall at least 3x in 60 steps (measured: 1.89 -> 0.49)."""
    torch.manual_seed(0)
    codec = build_video_codec("tiny", VIDEO_TEST[:-2] + ["latent_dropout=0.1", "train_frames=4"]).train()
    x = _clips()
    with torch.no_grad():
        before = float(psnr(codec.eval().decode(codec.encode(x)), x).mean())
    codec.train()
    opt = torch.optim.AdamW(codec.parameters(), lr=3e-3)
    cfg = CodecLossConfig()
    losses = []
    for _ in range(60):
        rec, q, frames = codec(x)
        out = codec_loss(rec, x[:, :, frames], q.aux_loss, cfg)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(float(out.loss.detach()))
    assert losses[-1] < losses[0] / 3, (losses[0], losses[-1])
    codec.eval()
    with torch.no_grad():
        after = float(psnr(codec.decode(codec.encode(x)), x).mean())
    assert after > before + 8.0, (before, after)  # measured: about 6 dB -> 17.6 dB through the ids


def test_recipe_writes_loadable_codec(tmp_path):
    from duogen.train.tokenizer_recipe import VideoTokenizerRun, evaluate_codec, train_codec
    from duogen import config

    run = config.from_dict(VideoTokenizerRun, {"model": config.to_dict(build_video_codec("tiny", VIDEO_TEST).cfg),
                                               "train": {"steps": 3, "max_minutes": 0, "batch_size": 2, "eval_items": 2,
                                                         "eval_every_s": 1000, "stats_items": 4, "precision": "fp32",
                                                         "log_every": 1}})
    items = ((_clips(b=4) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1).numpy()  # (N, F, H, W, 3)
    s = train_codec(run, "video", "synthetic", tmp_path / "run", train_items=items, val_items=items[:2], heldout_items=items[2:])
    assert s["steps"] == 3 and (tmp_path / "run" / "metrics.jsonl").is_file()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "step" in r] == [1, 2, 3] and all(r["grad_norm"] > 0 for r in rows if "step" in r)
    codec = tokenizers.load(tmp_path / "run" / "final")
    assert isinstance(codec, VideoCodec) and float(codec.latent_scale.min()) > 0
    # the preset's standardized latent was calibrated on the training items before saving: recalibrating changes nothing
    assert codec.cfg.latent_norm == "batch"
    again = copy.deepcopy(codec)
    again.calibrate_latent_norm([items])
    torch.testing.assert_close(again.enc_std.running_mean, codec.enc_std.running_mean)
    torch.testing.assert_close(again.enc_std.running_var, codec.enc_std.running_var)
    ev = evaluate_codec(codec, items[2:])
    assert ev["psnr"] == pytest.approx(s["heldout"]["psnr"], abs=1e-4)
    assert ev["tokens_per_item"] == 48 and ev["bits_per_pixel"] == pytest.approx(48 * math.log2(125) / (9 * 16 * 16))
    assert 0 < ev["codebook_usage"] <= 1


def test_video_recipe_trains_against_the_3d_discriminator_after_warmup(tmp_path):
    from duogen import config
    from duogen.train.tokenizer_recipe import VideoTokenizerRun, train_codec

    run = config.from_dict(VideoTokenizerRun, {"model": config.to_dict(build_video_codec("tiny", VIDEO_TEST).cfg),
                                               "loss": {"adv_weight": 0.1, "adv_start": 1},
                                               "train": {"steps": 3, "max_minutes": 0, "batch_size": 2, "eval_items": 2,
                                                         "eval_every_s": 1000, "stats_items": 4, "precision": "fp32",
                                                         "log_every": 1}})
    items = ((_clips(b=4) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1).numpy()  # (N, F, H, W, 3)
    train_codec(run, "video", "synthetic", tmp_path / "run", train_items=items, val_items=items[:2], heldout_items=items[2:])
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = {r["step"]: r for r in rows if "eval" not in r}
    assert sorted(steps) == [1, 2, 3]
    assert "adv_g" not in steps[1] and "adv_d" not in steps[1]  # step 0 is before adv_start
    for k in (2, 3):
        assert math.isfinite(steps[k]["adv_g"]) and steps[k]["adv_d"] > 0  # hinge D loss is >= 0, 2 at a blank start


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown when no GPU is there")
def test_codec_training_on_a_missing_gpu_is_a_clear_error(tmp_path):
    from duogen import config
    from duogen.errors import ConfigError
    from duogen.train.tokenizer_recipe import VideoTokenizerRun, train_codec
    from duogen.utils import resolve_device

    assert resolve_device("auto") == "cpu" and resolve_device("cpu") == "cpu"
    run = config.from_dict(VideoTokenizerRun, {"model": config.to_dict(build_video_codec("tiny", VIDEO_TEST).cfg),
                                               "train": {"steps": 1, "max_minutes": 0, "device": "cuda"}})
    items = ((_clips(b=2) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1).numpy()
    with pytest.raises(ConfigError, match="torch sees no GPU"):
        train_codec(run, "video", "synthetic", tmp_path / "run", train_items=items, val_items=items, heldout_items=items)
