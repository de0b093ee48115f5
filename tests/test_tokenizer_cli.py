"""The tokenizer CLI end to end on tiny codecs: `tokenizer recon`, `tokenizer eval --json`, `train tokenizer`."""

import importlib.util
import json
import math
import warnings

import numpy as np
import pytest
import torch
from test_audio_codec import SMALL
from test_codecs import IMAGE_TEST, VIDEO_TEST, _clips

from duogen import cli
from duogen.data import media
from duogen.tokenizers import load
from duogen.tokenizers.audio_codec import build_audio_codec
from duogen.tokenizers.image_codec import build_image_codec
from duogen.tokenizers.text import TextTokenizer
from duogen.tokenizers.video_codec import build_video_codec

pytestmark = pytest.mark.usefixtures("one_thread")
HAS_SPEECH = importlib.util.find_spec("espeakng_loader") is not None


@pytest.fixture(scope="module")
def codecs(tmp_path_factory):
    """Untrained tiny codecs saved as model directories: 16x16 image and 9-frame video (4x down), audio (hop 320)."""
    root = tmp_path_factory.mktemp("codecs")
    torch.manual_seed(0)
    for name, codec in [("image", build_image_codec("tiny", IMAGE_TEST)), ("video", build_video_codec("tiny", VIDEO_TEST)),
                        ("audio", build_audio_codec("tiny", SMALL))]:
        codec.eval().save_pretrained(root / name)
    return {name: str(root / name) for name in ("image", "video", "audio")}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """12 tiny shapes-world clips (train 10, validation 1, heldout 1), with spoken captions when espeak-ng is there."""
    from duogen.data import make_dataset

    out = tmp_path_factory.mktemp("data") / "shapes"
    make_dataset("shapes", out, n=12, seed=0, audio=HAS_SPEECH)
    return str(out)


def _run(capsys, *argv):
    """`duogen ARGV --json` -> (exit status, parsed summary or None, stderr lines)."""
    code = cli.main([*argv, "--json"])
    captured = capsys.readouterr()
    return code, json.loads(captured.out) if code == 0 else None, captured.err.strip().splitlines()


def _u8(x: torch.Tensor) -> np.ndarray:
    """(3, F, H, W) in [-1, 1] -> uint8 (F, H, W, 3)."""
    return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 3, 0).numpy()


def test_recon_image_resizes_with_a_warning(codecs, tmp_path, capsys):
    png = tmp_path / "in.png"
    media.write_image(png, (np.arange(20 * 24 * 3).reshape(20, 24, 3) % 251).astype(np.uint8))
    with pytest.warns(UserWarning, match="1 frames of 24x20 resized to 1 frames of 16x16"):
        code, s, _ = _run(capsys, "tokenizer", "recon", "--model", codecs["image"], "--input", str(png),
                          "--out", str(tmp_path / "rec.png"))
    assert code == 0 and s["size"] == 16 and s["tokens"] == 16  # 16x16 at 4x down: 4x4 ids
    assert media.read_image(tmp_path / "rec.png").shape == (16, 16, 3)
    side = media.read_video(s["side_by_side"])  # input | 2-pixel black gap | reconstruction, upscaled by u
    u = side.shape[1] // 16
    assert side.shape == (1, 16 * u, 34 * u, 3) and side[0, :, 16 * u : 18 * u].max() == 0


def test_recon_video_gif_and_trim_warning(codecs, tmp_path, capsys):
    clip = _u8(_clips(b=1)[0])  # (9, 16, 16, 3): the codec's own size, so no warning
    media.write_gif(tmp_path / "in.gif", clip, upscale=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, s, _ = _run(capsys, "tokenizer", "recon", "--model", codecs["video"], "--input", str(tmp_path / "in.gif"),
                          "--out", str(tmp_path / "rec.mp4"))
    assert code == 0 and not [w for w in caught if "resized" in str(w.message)]
    assert s["frames"] == 9 and s["tokens"] == 3 * 4 * 4 and math.isfinite(s["psnr"])
    assert media.read_video(tmp_path / "rec.mp4").shape[0] == 9 and media.read_video(s["side_by_side"]).shape[0] == 9
    media.write_gif(tmp_path / "six.gif", clip[:6], upscale=1)  # 6 frames: trimmed to 1 + 4k = 5
    with pytest.warns(UserWarning, match="6 frames of 16x16 resized to 5 frames of 16x16"):
        code, s, _ = _run(capsys, "tokenizer", "recon", "--model", codecs["video"], "--input", str(tmp_path / "six.gif"),
                          "--out", str(tmp_path / "six_rec.gif"))
    assert code == 0 and s["frames"] == 5 and media.read_video(tmp_path / "six_rec.gif").shape[0] == 5


def test_recon_wav_resamples_with_a_warning(codecs, tmp_path, capsys):
    t = np.arange(2400) / 8000  # 0.3 s at 8 kHz
    media.write_wav(tmp_path / "in.wav", 0.5 * np.sin(2 * np.pi * 220 * t), sample_rate=8000)
    with pytest.warns(UserWarning, match="8000 Hz audio resampled to 16000 Hz"):
        code, s, _ = _run(capsys, "tokenizer", "recon", "--model", codecs["audio"], "--input", str(tmp_path / "in.wav"),
                          "--out", str(tmp_path / "rec.wav"))
    assert code == 0 and s["samples"] == 4800
    rec, sr = media.read_audio(tmp_path / "rec.wav")
    assert sr == 16000 and rec.shape == (4800,)
    side, _ = media.read_audio(s["side_by_side"])
    assert side.shape == (2 * 4800 + 16000 // 4,)  # input, a quarter second of silence, reconstruction


def test_recon_output_suffix_must_fit_the_codec(codecs, tmp_path, capsys):
    media.write_wav(tmp_path / "in.wav", np.zeros(3200), sample_rate=16000)
    media.write_image(tmp_path / "in.png", np.zeros((16, 16, 3), np.uint8))
    for model, src, out in [("audio", "in.wav", "rec.gif"), ("image", "in.png", "rec.wav"), ("video", "in.png", "rec")]:
        code, _, err = _run(capsys, "tokenizer", "recon", "--model", codecs[model], "--input", str(tmp_path / src),
                            "--out", str(tmp_path / out))
        assert code == 2 and len(err) == 1 and err[0].startswith("duogen: error:") and "change --out" in err[0], err
        assert not (tmp_path / out).exists()


def test_eval_json_image_codec(codecs, data, capsys):
    code, s, _ = _run(capsys, "tokenizer", "eval", "--model", codecs["image"], "--data", data, "--split", "heldout")
    assert code == 0
    assert {"psnr", "psnr_continuous", "ssim", "codebook_usage", "perplexity", "bits_per_pixel", "compression_ratio"} <= set(s)
    assert s["items"] == 9  # one held-out clip of 9 frames, each an image
    # 32x32 at 4x down: 64 ids of log2(125) bits over 1024 pixels; 24 bits per RGB pixel uncompressed
    assert s["bits_per_pixel"] == pytest.approx(64 * math.log2(125) / 1024)
    assert s["compression_ratio"] == pytest.approx(24 / s["bits_per_pixel"])
    assert 0 < s["codebook_usage"] <= 1 and -1 <= s["ssim"] <= 1


@pytest.mark.skipif(not HAS_SPEECH, reason="needs espeak-ng (espeakng_loader) for the audio column")
def test_eval_json_audio_codec(codecs, data, capsys):
    code, s, _ = _run(capsys, "tokenizer", "eval", "--model", codecs["audio"], "--data", data, "--split", "validation")
    assert code == 0 and s["utterances"] == 1 and s["seconds"] > 0.5
    assert {"si_snr_db", "mel_distance", "codebook_usage", "perplexity"} <= set(s)
    # 50 frames/s x 4 levels x log2(16) bits = 800 bit/s; 16-bit PCM at 16 kHz is 256,000 bit/s
    assert s["bits_per_second"] == 800 and s["compression_ratio"] == 320
    assert 0 < s["codebook_usage"] <= 1 and math.isfinite(s["si_snr_db"]) and s["mel_distance"] > 0


def test_train_tokenizer_text(data, tmp_path, capsys):
    code, s, _ = _run(capsys, "train", "tokenizer", "--modality", "text", "--data", data, "--out", str(tmp_path / "t"),
                      "vocab_size=300")
    assert code == 0 and s["captions"] == 10 and s["vocab_size"] <= 300
    tok = TextTokenizer.load(s["out"])
    for text in ["a red circle moves left", "ünïcödé ✓"]:  # byte fallback: anything encodes
        assert tok.decode(tok.encode(text)) == text
    code, _, err = _run(capsys, "train", "tokenizer", "--modality", "text", "--data", data, "--out", str(tmp_path / "u"),
                        "vocab=300")
    assert code == 2 and len(err) == 1 and "vocab_size, model_type" in err[0]


@pytest.mark.skipif(not HAS_SPEECH, reason="needs espeak-ng (espeakng_loader) for the audio column")
def test_train_tokenizer_audio_splits_overrides_and_passes_the_seed(data, tmp_path, capsys):
    import yaml

    run = tmp_path / "a"
    code, s, err = _run(capsys, "train", "tokenizer", "--modality", "audio", "--data", data, "--out", str(run), "--seed", "3",
                        "train.steps=2", "train.max_minutes=0", "train.batch_size=2", "train.precision=fp32",
                        "eval_utterances=1", *SMALL)
    assert code == 0, err
    assert s["steps"] == 2 and s["heldout"]["utterances"] == 1 and s["bitrate_bps"] == 800
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["train"]["seed"] == 3 and resolved["train"]["max_minutes"] == 0 and resolved["train"]["steps"] == 2
    assert load(run / "final").cfg.channels == 8  # the codec keys reached the codec
    code, _, err = _run(capsys, "train", "tokenizer", "--modality", "audio", "--data", data, "--out", str(tmp_path / "b"),
                        "train.bogus=1")
    assert code == 2 and len(err) == 1 and "bogus" in err[0]
