"""Audio tasks of the next-token model: `train_ar` with t2a / v2a through an audio codec, `duogen generate` to WAV."""

import json
import shutil
import wave

import numpy as np
import pytest
import torch

from duogen.ar_models.model import MultimodalLM
from duogen.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["model.hidden=32", "model.layers=1", "model.heads=2", "model.kv_heads=2", "model.mlp=64", "max_text=16",
        "text_vocab=300", "train.steps=2", "train.batch_size=4", "train.log_every=1", "train.precision=fp32",
        "audio_seconds=0.2"]  # 0.2 s at hop 320 and 16 kHz: 10 codec frames
AUDIO_CODEC = ["channels=8", "dilations=[1]", "quantizer.codebook_size=16", "quantizer.num_quantizers=2"]
FRAMES, LEVELS, HOP = 10, 2, 320


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A shapes world with speech, untrained tiny codecs, and a t2v + t2a + v2a model trained 2 steps on them."""
    pytest.importorskip("espeakng_loader")
    from duogen.data import make_dataset
    from duogen.tokenizers.audio_codec import build_audio_codec
    from duogen.tokenizers.video_codec import build_video_codec
    from duogen.train.ar_recipe import train_ar

    root = tmp_path_factory.mktemp("ar_audio")
    make_dataset("shapes", root / "data", n=16, preset="tiny", seed=0, audio=True)
    torch.manual_seed(0)
    build_video_codec("tiny", ["patch=4", "widths=[16]"]).save_pretrained(root / "codec")
    build_audio_codec("tiny", AUDIO_CODEC).save_pretrained(root / "audio")
    info = train_ar(root / "data", root / "codec", root / "run", audio_tokenizer=root / "audio",
                    tasks=["t2v", "t2a", "v2a"], overrides=TINY)
    return root, info


@pytest.fixture
def spy(monkeypatch):
    """Records the prefix and the sampled global ids of every `sample_plans` call."""
    from duogen.ar_models import sampling

    calls = []
    real = sampling.sample_plans

    def record(decoder, prefix, *a, **k):
        out = real(decoder, prefix, *a, **k)
        calls.append((prefix.clone(), out.clone()))
        return out

    monkeypatch.setattr(sampling, "sample_plans", record)
    return calls


def _wav(path):
    with wave.open(str(path), "rb") as w:
        return w.getframerate(), w.getnchannels(), np.frombuffer(w.readframes(w.getnframes()), "<i2")


def _in_audio_ranges(m, g):
    """Output position n of the time-major audio segment must lie in level n % L's range."""
    for n in range(g.shape[1]):
        r = m.vocab.codec_range("audio", n % LEVELS)
        assert ((g[:, n] >= r.start) & (g[:, n] < r.stop)).all(), (n, g[:, n], r)


def test_train_ar_with_audio_tasks_references_the_audio_codec(run):
    root, info = run
    assert info["steps"] == 2 and np.isfinite(info["final_loss"]) and info["tasks"] == ["t2v", "t2a", "v2a"]
    assert info["audio_tokens"] == [FRAMES, LEVELS] and info["audio_s"] == pytest.approx(FRAMES * HOP / 16000)
    m = MultimodalLM.from_pretrained(root / "run" / "final")
    assert (m.spec.audio_tokens, m.spec.audio_levels) == (FRAMES, LEVELS)
    assert m.codec_path(audio=True) == (root / "audio").resolve() and m.codec_path() == (root / "codec").resolve()
    assert m.vocab.codec_levels["audio"] == LEVELS and m.vocab.codec_range("audio", 1).size == 16
    # the audio was encoded once into the clips' cache, at the fixed length
    keys = [json.loads(p.read_text()) for p in (root / ".cache").glob("*/pretokenize_key.json")]
    assert sorted(k["codec"] for k in keys) == sorted(str((root / d).resolve()) for d in ("audio", "codec"))
    assert [k["samples"] for k in keys if k["codec"].endswith("audio")] == [FRAMES * HOP]


def test_generate_t2a_writes_the_decoded_sampled_audio(run, spy, tmp_path, capsys):
    from duogen.tokenizers import load

    root, _ = run
    out = tmp_path / "t2a"
    s = main_json(["generate", "--model", str(root / "run" / "final"), "--task", "t2a", "--prompt", "a red circle",
                    "--n", "2", "--out", str(out), "--top-k", "8"], capsys)
    assert s["task"] == "t2a" and s["sample_rate"] == 16000 and s["tokens"] == 2 * FRAMES * LEVELS
    assert sorted(p.name for p in out.iterdir()) == ["audio_000_00.wav", "audio_000_01.wav", "generation.json"]
    (prefix, g), = spy
    m = MultimodalLM.from_pretrained(root / "run" / "final")
    assert g.shape == (2, FRAMES * LEVELS) and prefix[0, 1] == m.vocab.id("<t2a>")
    _in_audio_ranges(m, g)
    # the WAV is the audio codec's decoding of exactly those ids (levels de-interleaved), as 16-bit PCM
    local = m.vocab.global_to_codec("audio", g.view(2, FRAMES, LEVELS)).transpose(1, 2)  # (B, L, T)
    with torch.inference_mode():
        want = load(root / "audio").decode(local)[:, 0].numpy()  # (B, S)
    for i in range(2):
        rate, channels, pcm = _wav(out / f"audio_000_{i:02d}.wav")
        assert (rate, channels, pcm.shape) == (16000, 1, (FRAMES * HOP,))
        np.testing.assert_array_equal(pcm, (np.clip(want[i], -1, 1) * 32767).round().astype(np.int16))


def test_generate_v2a_conditions_on_the_clip(run, spy, tmp_path, capsys):
    from duogen.bridges.generate import ARGenerator
    from duogen.data import load_dataset
    from duogen.data.media import write_mp4

    root, _ = run
    clip = tmp_path / "clip.mp4"
    write_mp4(clip, np.asarray(load_dataset(root / "data")["validation"][0]["video"], np.uint8), upscale=1)
    out = tmp_path / "v2a"
    s = main_json(["generate", "--model", str(root / "run" / "final"), "--task", "v2a", "--video", str(clip),
                   "--prompt", "a red circle", "--out", str(out)], capsys)
    assert [p.split("/")[-1] for p in s["files"]] == ["audio_000_00.wav"] and not s["warnings"]
    rate, _, pcm = _wav(out / "audio_000_00.wav")
    assert rate == 16000 and pcm.shape == (FRAMES * HOP,)
    (prefix, g), = spy
    gen = ARGenerator.from_pretrained(root / "run" / "final")
    m = gen.model
    want = m.layouts.decode_plan("v2a", m.encode_prompt("a red circle"), gen.condition("v2a", video=clip)).prefix
    assert prefix[0].tolist() == want  # the clip's codec ids sit in the condition segment
    _in_audio_ranges(m, g)


def test_audio_errors_are_clear_and_come_before_sampling(run, spy, tmp_path, capsys):
    from duogen.cli import main
    from duogen.data import make_dataset
    from duogen.train.ar_recipe import train_ar

    root, _ = run
    with pytest.raises(ConfigError, match="t2a need an audio codec: pass --audio-tokenizer"):
        train_ar(root / "data", root / "codec", tmp_path / "r", tasks=["t2v", "t2a"], overrides=TINY)
    assert main(["train", "ar", "--data", str(root / "data"), "--tokenizer", str(root / "codec"), "--out",
                 str(tmp_path / "r"), "--tasks", "t2v,v2a"]) == 2
    assert "v2a need an audio codec" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="holds a 'video_codec', not an audio codec"):
        train_ar(root / "data", root / "codec", tmp_path / "r", audio_tokenizer=root / "codec", tasks=["t2a"], overrides=TINY)
    make_dataset("shapes", tmp_path / "silent", n=8, preset="tiny", seed=0)
    with pytest.raises(ConfigError, match="need an `audio` column"):
        train_ar(tmp_path / "silent", root / "codec", tmp_path / "r", audio_tokenizer=root / "audio",
                 tasks=["t2a"], overrides=TINY)
    # a model whose audio codec has gone: t2a / v2a fail before any token is sampled
    final = tmp_path / "moved"
    shutil.copytree(root / "run" / "final", final)
    conf = json.loads((final / "config.json").read_text())
    (final / "config.json").write_text(json.dumps({**conf, "audio_codec": str(tmp_path / "gone")}))
    for extra in (["--task", "t2a"], ["--task", "v2a"]):
        assert main(["generate", "--model", str(final), "--prompt", "a", "--out", str(tmp_path / "o"), *extra]) == 2
        assert "audio codec this model was trained on" in capsys.readouterr().err
    assert not spy


def main_json(argv, capsys):
    from duogen.cli import main

    assert main([*argv, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    return {**summary, **summary["settings"]}
