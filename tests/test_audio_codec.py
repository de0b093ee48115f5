"""SoundStream-style audio codec: shapes, the codec contract's invariants, save/load, overfitting, metrics."""

import numpy as np
import pytest
import torch

from duogen.errors import ConfigError, DataError
from duogen.tokenizers.audio_codec import (
    AudioCodec,
    build_audio_codec,
    codec_loss,
    evaluate,
    mel_distance,
    mel_filterbank,
    multi_resolution_stft_loss,
    si_snr,
)

# A small config so every test runs in seconds on a busy CPU: hop 4*2*5*8 = 320 as in `tiny`.
SMALL = ["channels=8", "dilations=[1]", "quantizer.codebook_size=16"]


def _speech(seconds=0.4, text="a red circle moves left"):
    from duogen.data.speech import speak

    x = speak(text)
    return x[: int(seconds * 16000)].copy()


def _warmed(overrides=SMALL):
    """A codec whose RVQ codebooks were initialized by k-means on real speech (as the first training step does).

    k-means sees 3 s (150 latent frames) so the 16-code books have no duplicate codes: with
    duplicates, nearest-code ties make two correct implementations pick different ids.
    """
    codec = build_audio_codec("tiny", overrides)
    warm = _speech(3.0, "the quick brown fox jumps over the lazy dog while a red circle moves to the left")
    codec.train()
    with torch.no_grad():
        codec.quantizer(codec.encoder(codec.prepare(warm)))
    return codec.eval(), torch.from_numpy(_speech())[None, None]


def test_shapes_and_padding():
    codec = build_audio_codec("tiny")
    assert codec.hop == 320 and codec.vocab_size == 256 and codec.num_levels == 4
    codec.eval()
    x = torch.zeros(2, 1, 3200).uniform_(-0.5, 0.5)
    ids = codec.encode(x)
    assert ids.shape == (2, 4, 10) and ids.dtype == torch.long  # (B, Q, T), 50 frames a second
    z = codec.encode_latents(x)
    assert z.shape == (2, 64, 10) and codec.latent_shape(x.shape) == (64, 10)
    assert codec.decode(ids).shape == (2, 1, 3200)
    # a 1D array of any length: zero-padded to a multiple of the hop
    one = np.random.default_rng(0).uniform(-0.5, 0.5, 3000).astype(np.float32)
    assert codec.encode(one).shape == (1, 4, 10) and codec.latent_shape(one.shape) == (64, 10)
    assert codec.reconstruct(one).shape == (3000,)
    pcm = (one * 32767).astype(np.int16)  # int16 PCM is accepted too
    assert codec.encode(pcm).shape == (1, 4, 10)


def test_contract_invariants():
    codec, x = _warmed()
    ids = codec.encode(x)
    # decode(encode(x)) == decode_latents(ids_to_latents(encode(x)))
    assert torch.equal(codec.decode(ids), codec.decode_latents(codec.ids_to_latents(ids)))
    # the training path (quantizer forward, eval mode) agrees with the ids path
    q = codec.quantizer(codec.encoder(codec.prepare(x)))
    assert torch.equal(q.ids.transpose(1, 2), ids)
    torch.testing.assert_close(codec.ids_to_latents(ids), q.quantized, atol=1e-5, rtol=1e-5)
    # (ids -> latents -> ids is not an identity for residual VQ: greedy re-encoding of the summed codes may differ)
    # different input, different codes at most levels
    assert not torch.equal(codec.encode(x.flip(-1)), ids)


def test_save_then_load_gives_identical_outputs(tmp_path):
    codec, x = _warmed()
    codec.set_latent_stats(codec.encode_latents(x))
    codec.save_pretrained(tmp_path / "ac")
    loaded = AudioCodec.from_pretrained(tmp_path / "ac")
    ids = codec.encode(x)
    assert torch.equal(loaded.encode(x), ids)
    assert torch.equal(loaded.decode(ids), codec.decode(ids))
    assert torch.equal(loaded.latent_scale, codec.latent_scale) and loaded.cfg == codec.cfg
    from duogen.tokenizers import load

    assert torch.equal(load(tmp_path / "ac").decode(ids), codec.decode(ids))  # the generic loader finds it by kind


def test_overfit_one_clip():
    """40 Adam steps (the recipe's lr 1e-3 and gradient clipping at 1) on one 0.4 s utterance, in fp32:
    the mean loss of the last 10 steps is at least 1.5x below the first.

    At lr 3e-3 without clipping the curve depended on the CPU's numerics (an AVX2 machine went
    5.95 -> 3.83, then back up to 4.77 by step 40; seed 2 here climbed from 3.3 to 6.6). With the recipe's
    settings it falls smoothly: seeds 0-4 on a 2-core AVX2 AMD EPYC, 1 and 2 threads, measured
    5.95 -> 3.08, 6.88 -> 3.03, 6.18 -> 3.05, 5.21 -> 3.07, 11.81 -> 3.25 (first -> mean of the last 10),
    at least 1.69x. The floor early on is the log-magnitude STFT term, which falls slowly.
    """
    torch.manual_seed(0)
    codec = build_audio_codec("tiny", SMALL)
    x = torch.from_numpy(_speech())[None, None]  # (1, 1, 6400)
    opt = torch.optim.Adam(codec.parameters(), lr=1e-3)
    losses = []
    codec.train()
    for _ in range(40):
        out = codec_loss(codec, x)
        opt.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(codec.parameters(), 1.0)
        opt.step()
        losses.append(out.loss.item())
    assert np.isfinite(losses).all()
    assert np.mean(losses[-10:]) < losses[0] / 1.5, (losses[:3], losses[-10:])


def test_bad_input_is_a_clear_error():
    codec = build_audio_codec("tiny", SMALL).eval()
    with pytest.raises(DataError, match="int16"):
        codec.encode(np.zeros(320, np.int64))
    with pytest.raises(DataError, match=r"\[-1, 1\]"):
        codec.encode(np.full(320, 3.0, np.float32))
    with pytest.raises(DataError, match="mono"):
        codec.encode(torch.zeros(1, 2, 320))
    with pytest.raises(DataError, match="empty"):
        codec.encode(np.zeros(0, np.float32))
    with pytest.raises(DataError, match=r"\(B, 4, T\)"):
        codec.decode(torch.zeros(1, 3, 5, dtype=torch.long))
    with pytest.raises(DataError, match="out of range"):
        codec.decode(torch.full((1, 4, 5), 16, dtype=torch.long))
    with pytest.raises(ConfigError, match="rvq"):
        build_audio_codec("tiny", ["quantizer.kind=vq"])


def test_si_snr_closed_forms():
    t = np.arange(16000) / 16000
    s = np.sin(2 * np.pi * 200 * t)
    n = np.sin(2 * np.pi * 350 * t)  # orthogonal to s over whole periods
    assert si_snr(s + 0.1 * n, s) == pytest.approx(20.0, abs=1e-6)  # 20 log10(1 / 0.1)
    assert si_snr(3.0 * s + 0.3 * n, s) == pytest.approx(20.0, abs=1e-6)  # scale-invariant
    assert si_snr(s + n, s) == pytest.approx(0.0, abs=1e-6)
    assert si_snr(s, s) > 100


def test_mel_distance_and_filterbank():
    fb = mel_filterbank(1024, 80, 16000)
    assert fb.shape == (80, 513) and fb.min() >= 0 and fb.max() <= 1.0 and fb.max(1).min() > 0.5  # every band sees a bin
    centres = fb.argmax(1)
    assert (np.diff(centres) >= 0).all() and centres[-1] > 480  # HTK mel scale up to 8 kHz
    x = np.random.default_rng(0).uniform(-0.3, 0.3, 16000).astype(np.float32)
    assert mel_distance(x, x) == 0.0
    # 10x the power everywhere (no band near the floor) is exactly 1.0 in log10 units
    assert mel_distance(np.sqrt(10) * x, x) == pytest.approx(1.0, abs=1e-4)
    a = torch.from_numpy(x)[None]
    assert multi_resolution_stft_loss(a, a, [256, 512]).item() == pytest.approx(0.0, abs=1e-6)
    assert multi_resolution_stft_loss(0.5 * a, a, [256, 512]).item() > 0.4


def test_evaluate_reports_bitrate_and_compression():
    codec = build_audio_codec("tiny", SMALL)
    t = np.arange(8000) / 16000
    tones = [(0.3 * np.sin(2 * np.pi * f * t)).astype(np.float32) for f in (220, 440)]
    res = evaluate(codec, tones)
    assert res["utterances"] == 2 and res["seconds"] == 1.0
    # 16000 / 320 = 50 frames/s x 4 levels x log2(16) bits; 16-bit PCM at 16 kHz is 256,000 bit/s
    assert res["bits_per_second"] == codec.bits_per_second == 800 and res["compression_ratio"] == 320
    assert 0 < res["codebook_usage"] <= 1 and 1 <= res["perplexity"] <= 16
    assert build_audio_codec("tiny").bits_per_second == 1600  # the module docstring's 1.6 kbit/s
    with pytest.raises(DataError, match="no utterances"):
        evaluate(codec, [])


def test_recipe_splits_overrides_into_run_and_codec_settings():
    from duogen.train.audio_codec_recipe import split_overrides

    run, codec = split_overrides(["train.max_minutes=2", "channels=8", "segment_s=0.25", "model.quantizer.codebook_size=16"])
    assert run == ["train.max_minutes=2", "segment_s=0.25"] and codec == ["channels=8", "quantizer.codebook_size=16"]
