"""Editing over both paradigms: the edit-pair data, the techniques' invariants, `duogen edit`."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- data make edits


def test_edit_pairs_differ_exactly_in_the_named_attribute():
    from duogen.data.edits import make_pair
    from duogen.data.shapes import load_world_config, make_clip

    cfg = load_world_config("tiny")
    seen = set()
    for split in ("validation", "heldout"):
        for i in range(12):
            row = make_pair(cfg, split, i)
            src, tgt = row["source_attributes"][0], row["target_attributes"][0]
            kind = row["edit"]
            seen.add(kind)
            changed = {k for k in ("shape", "color", "motion") if src[k] != tgt[k]}
            assert changed == {{"direction": "motion"}.get(kind, kind)}
            assert row["source_attributes"][1:] == row["target_attributes"][1:]  # the other object is untouched
            assert np.array_equal(row["source"], make_clip(cfg, split, i).video)  # the world's own clip
            mask = row["mask"].astype(bool)  # (F, H, W)
            diff = (row["source"] != row["target"]).any(-1)
            assert not diff[~mask].any()  # nothing changes outside the mask
            if kind == "color":  # same track: the mask is exactly the object's pixels in the source
                assert np.array_equal(mask, row["source"].any(-1) & (row["source"] == row["source"][mask][0]).all(-1))
            assert row["source_caption"] != row["target_caption"] and row["instruction"].split()[0] in ("make", "turn")
    assert seen == {"color", "shape", "direction"}


def test_data_make_edits_writes_splits(tmp_path):
    from duogen.data import load_dataset, make_dataset

    info = make_dataset("edits", tmp_path / "ed", n=40)
    assert info["splits"] == {"train": 36, "validation": 2, "heldout": 2}
    ds = load_dataset(tmp_path / "ed")
    assert set(ds) == {"train", "validation", "heldout"}
    assert {"source", "target", "mask", "instruction", "source_caption", "target_caption", "edit"} <= set(ds["train"].column_names)


# ----------------------------------------------------------------------------- techniques (tiny fixtures)

import torch  # noqa: E402

from duogen.bridges.diffusion import DiffusionGenerator  # noqa: E402
from duogen.bridges.edit import edit  # noqa: E402
from duogen.bridges.edit.prep import latent_mask  # noqa: E402
from duogen.bridges.generate import ARGenerator  # noqa: E402
from duogen.errors import ConfigError, DataError  # noqa: E402
from test_ar_model import ar_dir, text  # noqa: E402,F401 (fixtures: a tiny t2v + i2v AR model dir, untrained codec)
from test_latent_diffusion import model  # noqa: E402,F401 (fixture: the tiny live DiT with its codec)

SRC_PROMPT, TGT_PROMPT = "a red circle", "a blue circle"  # within the tiny AR model's 8-token text budget


@pytest.fixture(scope="module")
def pair():
    from duogen.data.edits import make_pair
    from duogen.data.shapes import load_world_config

    return make_pair(load_world_config("tiny"), "validation", 0)  # a color edit: same track


@pytest.fixture(scope="module")
def gens(ar_dir, model):  # noqa: F811
    return {"ar": ARGenerator.from_pretrained(ar_dir), "diffusion": DiffusionGenerator(model)}


def _state(res):
    return res.state["ids" if "ids" in res.state else "latents"]


@pytest.mark.parametrize("kind", ["ar", "diffusion"])
def test_strength_zero_returns_the_source_reconstruction(gens, pair, kind):
    res = gens[kind].edit(pair["source"], "sdedit", prompt=TGT_PROMPT, strength=0.0, n=2, steps=4)
    assert res.videos.shape == (2, *pair["source"].shape)
    assert all(np.array_equal(v, res.reconstruction) for v in res.videos)
    assert torch.equal(_state(res), res.state["source"].expand_as(_state(res)))


@pytest.mark.parametrize("kind", ["ar", "diffusion"])
def test_masked_compositing_keeps_the_outside_exactly(gens, pair, kind):
    """Strength 1 inside the left half: outside it the final latents / ids are the source's, bit for bit."""
    m = np.zeros(pair["source"].shape[:3], bool)
    m[:, :, :16] = True
    gen = gens[kind]
    res = gen.edit(pair["source"], "sdedit", prompt=TGT_PROMPT, strength=1.0, mask=m, n=2, steps=4, seed=3)
    lm = torch.from_numpy(latent_mask(m, res.state["source"].shape[-3:]))  # (f, h, w)
    out, src = _state(res), res.state["source"].expand_as(_state(res))
    outside = ~lm.expand_as(out)
    assert torch.equal(out[outside], src[outside])
    assert not torch.equal(out[~outside], src[~outside])  # and the inside was redrawn


def test_ddim_inversion_reconstructs_at_guidance_one(gens, pair):
    """DDIM inversion then eta-0 sampling at guidance 1 under the same prompt retraces the source latents: RMSE < 0.05
    (normalized latents of unit variance; 50 steps: the inversion's O(1/steps) error)."""
    res = gens["diffusion"].edit(pair["source"], "invert", prompt=SRC_PROMPT, source_prompt=SRC_PROMPT, guidance=1.0,
                                 steps=50)
    assert res.info["inversion_latent_rmse"] < 0.05
    assert res.info["null_text"] is False


def test_null_text_beats_plain_ddim_inversion_with_guidance(gens, pair):
    kw = dict(prompt=SRC_PROMPT, source_prompt=SRC_PROMPT, guidance=3.0, steps=8)
    plain = gens["diffusion"].edit(pair["source"], "invert", null_text=False, **kw)
    null = gens["diffusion"].edit(pair["source"], "invert", null_text=True, **kw)
    assert null.info["inversion_latent_rmse"] < 0.5 * plain.info["inversion_latent_rmse"]
    assert null.info["inversion_psnr"] > plain.info["inversion_psnr"]


def test_ar_inversion_is_exact(gens, pair):
    """The codec ids are the decoder's exact inverse, and the Gumbel-posterior noise gives them back under the
    source prompt: the reconstruction is the codec's round trip, token for token."""
    gen = gens["ar"]
    res = gen.edit(pair["source"], "invert", prompt=TGT_PROMPT, source_prompt=SRC_PROMPT, n=2, seed=5)
    assert res.info["inversion_ids_exact"] == 1.0
    assert torch.equal(res.state["reconstruction"], res.state["source"].expand(2, -1, -1, -1))
    again = gen.generate([TGT_PROMPT], ids=res.state["source"])  # the source ids decode to the reconstruction
    assert np.array_equal(again.videos[0], res.reconstruction)


def test_gumbel_posterior_makes_the_tokens_the_argmax():
    from duogen.bridges.edit.inversion import gumbel_posterior

    g = torch.Generator().manual_seed(0)
    logp = torch.log_softmax(torch.randn(3, 50, 7, generator=g), -1)
    tok = torch.randint(0, 7, (3, 50), generator=g)
    noise = gumbel_posterior(logp, tok, g)
    assert torch.equal((logp + noise).argmax(-1), tok)


def test_diffedit_mask_is_where_the_prompts_disagree(gens, pair):
    """A constructed denoiser whose prediction depends on the prompt only inside a box: the automatic mask is
    exactly that box (all draws, both prompts through the real encode / noise / eps path)."""
    from duogen.bridges.edit.diffedit import diffusion_mask

    gen = gens["diffusion"]
    z0 = gen.model.encode_video(pair["source"])
    box = torch.zeros(z0.shape[-3:], dtype=torch.bool)
    box[:, 2:5, 1:4] = True

    class Boxed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.tensor(0.3))  # the model reads its device from a parameter

        def forward(self, x, t, cond):
            word = cond.tokens.mean((1, 2))[:, None, None, None, None]  # (B, 1, 1, 1, 1): differs per prompt
            return self.scale * x + word * box.to(x)

    real = gen.model.denoiser
    gen.model.denoiser = Boxed()
    try:
        lmask, passes = diffusion_mask(gen, z0, TGT_PROMPT, SRC_PROMPT, steps=10, draws=3)
    finally:
        gen.model.denoiser = real
    assert np.array_equal(lmask, box.numpy()) and passes == 6


def test_diffedit_on_the_reference_models_covers_the_object():
    """On the shipped references, DiffEdit's mask for a color edit covers most of the object's latent cells."""
    from duogen.bridges.edit.diffedit import auto_mask
    from duogen.bridges.generate import load_generator
    from duogen.data.edits import make_pair
    from duogen.data.shapes import load_world_config

    row = make_pair(load_world_config("tiny"), "validation", 3)
    assert row["edit"] == "color"
    for kind in ("dit", "ar"):
        gen = load_generator(f"src/duogen/assets/reference/{kind}")
        m = auto_mask(gen, row["source"], prompt=row["target_caption"], source_prompt=row["source_caption"], steps=20)
        obj = row["mask"].astype(bool)
        assert (m & obj).sum() >= 0.6 * obj.sum(), kind


def test_edit_checks(gens, pair):
    gen = gens["diffusion"]
    with pytest.raises(ConfigError, match="strength"):
        gen.edit(pair["source"], "sdedit", prompt=TGT_PROMPT, strength=1.5)
    with pytest.raises(DataError, match="must match"):
        gen.edit(pair["source"], "sdedit", prompt=TGT_PROMPT, mask=np.ones((9, 16, 16), bool))
    with pytest.raises(ConfigError, match="unknown edit method 'blur'"):
        edit(gen, pair["source"], "blur", prompt=TGT_PROMPT)
    with pytest.raises(ConfigError, match="image_channels=0"):  # ip2p needs a model trained with `duogen train ip2p`
        edit(gen, pair["source"], "ip2p", instruction="make it blue")
    with pytest.raises(DataError, match="no object found"):
        gen.edit(np.zeros_like(pair["source"]), "diffedit", prompt=TGT_PROMPT, source_prompt=SRC_PROMPT)
    with pytest.warns(UserWarning, match="fitted to"):
        res = gen.edit(pair["source"][:5, :20, :20], "sdedit", prompt=TGT_PROMPT, strength=0.0)
    assert res.source.shape == pair["source"].shape
    ar = gens["ar"]
    tasks = ar.model.spec.tasks
    ar.model.spec.tasks = ["t2a"]  # an audio-only model
    try:
        with pytest.raises(DataError, match="not video"):
            ar.edit(pair["source"], "sdedit", prompt=TGT_PROMPT)
    finally:
        ar.model.spec.tasks = tasks


# ----------------------------------------------------------------------------- duogen edit


def _cli(args, capsys):
    from duogen.cli import main

    rc = main(args)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.fixture(scope="module")
def dit_dir(model, tmp_path_factory):  # noqa: F811
    d = tmp_path_factory.mktemp("edit_dit") / "dit"
    model.save_pretrained(d)
    return d


def test_edit_cli_writes_clips_reconstruction_and_json(dit_dir, pair, tmp_path, capsys):
    import hashlib
    import json

    from duogen.data.media import write_gif

    src = write_gif(tmp_path / "in.gif", pair["source"], upscale=1)
    before = hashlib.sha256(src.read_bytes()).hexdigest()
    np.save(tmp_path / "m.npy", pair["mask"].astype(bool))
    out = tmp_path / "out"
    rc, _, err = _cli(["edit", "--model", str(dit_dir), "--input", str(src), "--out", str(out), "--method", "sdedit",
                       "--target-prompt", TGT_PROMPT, "--strength", "0.5", "--mask", str(tmp_path / "m.npy"),
                       "--n", "2", "--steps", "4"], capsys)
    assert rc == 0, err
    names = {p.name for p in out.iterdir()}
    assert {"edit_00.mp4", "edit_00.gif", "edit_01.gif", "source.gif", "reconstruction.mp4", "mask.gif",
            "edit.json"} <= names
    info = json.loads((out / "edit.json").read_text())
    assert info["method"] == "sdedit" and info["info"]["strength"] == 0.5 and info["kind"] == "diffusion"
    assert hashlib.sha256(src.read_bytes()).hexdigest() == before  # the input is never modified


def test_edit_cli_passes_imagic_eta_only_to_imagic(dit_dir, pair, tmp_path, capsys):
    import json

    from duogen.data.media import write_gif

    src = write_gif(tmp_path / "in.gif", pair["source"], upscale=1)
    base = ["edit", "--model", str(dit_dir), "--input", str(src), "--target-prompt", TGT_PROMPT, "--steps", "2"]
    rc, _, err = _cli(base + ["--out", str(tmp_path / "o"), "--method", "imagic", "--eta", "0.25"], capsys)
    assert rc == 0, err
    assert json.loads((tmp_path / "o" / "edit.json").read_text())["info"]["eta"] == 0.25
    for args, want in ((["--method", "imagic", "--eta", "nan"], "eta must be"),
                       (["--method", "sdedit", "--eta", "0.5"], "Imagic's")):
        rc, _, err = _cli(base + ["--out", str(tmp_path / "bad")] + args, capsys)
        assert rc == 2 and len(err.strip().splitlines()) == 1 and want in err, err
    assert not (tmp_path / "bad").exists()


def test_edit_cli_bad_input_is_one_line_and_exit_2(dit_dir, pair, tmp_path, capsys):
    from duogen.data.media import write_gif
    from duogen.tokenizers.audio_codec import build_audio_codec

    src = write_gif(tmp_path / "in.gif", pair["source"], upscale=1)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("earlier work")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    black = write_gif(tmp_path / "black.gif", np.zeros_like(pair["source"]), upscale=1)
    np.save(tmp_path / "small.npy", np.ones((9, 16, 16), bool))
    build_audio_codec("tiny", ["channels=8", "dilations=[1]", "quantizer.codebook_size=16",
                               "quantizer.num_quantizers=2"]).save_pretrained(tmp_path / "audio")
    base = ["edit", "--model", str(dit_dir), "--target-prompt", TGT_PROMPT, "--steps", "2"]
    cases = {
        "cannot read": base + ["--input", str(bad), "--out", str(tmp_path / "o1")],
        "no object found": base + ["--input", str(black), "--out", str(tmp_path / "o2"), "--method", "diffedit",
                                   "--source-prompt", SRC_PROMPT],
        "edits AR and diffusion": ["edit", "--model", str(tmp_path / "audio"), "--input", str(src),
                                   "--out", str(tmp_path / "o3"), "--prompt", TGT_PROMPT],
        "must match": base + ["--input", str(src), "--out", str(tmp_path / "o4"), "--mask", str(tmp_path / "small.npy")],
        "strength": base + ["--input", str(src), "--out", str(tmp_path / "o5"), "--strength", "1.5"],
        "not empty": base + ["--input", str(src), "--out", str(out)],
        "holds the input": base + ["--input", str(src), "--out", str(tmp_path)],
    }
    for want, args in cases.items():
        rc, _, err = _cli(args, capsys)
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and want in lines[0], (want, err)
    assert (out / "keep.txt").read_text() == "earlier work"  # nothing already written is lost
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 6))


def test_bench_edit_rows_run_with_the_worlds_mask(gens, pair):
    """bench/bench_edit.py's row loop with a "world" mask row: the mask it hands the technique is the pair's array
    (a later `mask == "auto"` test on that array once stopped the bench with numpy's ambiguous-truth error)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from bench_edit import run_rows

    table, _ = run_rows(gens, [pair], n=1, only="world mask")
    rows = [r for r in table if r[0] == "sdedit strength 0.8, world mask"]
    assert [r[1] for r in rows] == list(gens) and all(0 <= r[5] <= 100 for r in rows)  # one scored row per model
