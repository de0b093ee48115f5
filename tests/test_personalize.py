"""Personalization: concept data, LoRA and Textual Inversion on both paradigms, `duogen personalize`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _tiny_runs import cli  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- concept data


@pytest.mark.parametrize("kind", ["star", "heart", "sprite", "digit-style"])
def test_concept_clips_have_the_placeholder_and_a_class_word(kind):
    from duogen.data.concepts import concept_clips, concept_mask
    from duogen.data.shapes import sprite

    c = concept_clips(kind, n=5, token="<v9>", seed=1)
    assert c.videos.shape == (5, 9, 32, 32, 3) and c.videos.dtype == np.uint8
    assert len(c.captions) == 5 and all("<v9>" in cap for cap in c.captions)
    assert len({a[0]["color"] for a in c.attributes}) == 3 and len({a[0]["motion"] for a in c.attributes}) == 5
    assert c.class_word and all(c.class_word in p and "<v9>" not in p for p in c.class_prompts())
    # the object is drawn: each frame holds the caption's color, and nothing else
    for v, a in zip(c.videos, c.attributes):
        assert (v.reshape(9, -1, 3).max(1) > 0).any(1).all()
    # a new shape: not one of the world's masks at the same size
    m = concept_mask(kind, 14)
    for shape in ("circle", "square", "triangle", "7"):
        w = sprite(shape, 14)
        assert w.shape != m.shape or not np.array_equal(w, m)


def test_make_concept_cli_and_bad_input(tmp_path):
    from duogen.data.concepts import load_concept

    rc, s, err = cli("data", "make", "concept", "--kind", "star", "--out", str(tmp_path / "c"), "--n", "4")
    assert rc == 0, err
    assert s["clips"] == 4 and s["class_word"] == "triangle"
    info = json.loads((tmp_path / "c" / "source.json").read_text())
    assert info["token"] == "<v1>" and len(info["class_prompts"]) == 4
    c = load_concept(tmp_path / "c", size=32, frames=9, token="<v2>")
    assert c.videos.shape == (4, 9, 32, 32, 3) and all("<v2>" in cap and "<v1>" not in cap for cap in c.captions)
    with pytest.warns(UserWarning, match="fitted"):  # wrong size: fitted with a warning
        assert load_concept(tmp_path / "c", size=16, frames=5).videos.shape == (4, 5, 16, 16, 3)
    for bad in (["--kind", "moon"], ["--n", "2", "--kind", "star"], [], ["--kind", "star", "colors=red,teal"],
                ["--kind", "star", "hue=3"]):
        rc, _, err = cli("data", "make", "concept", "--out", str(tmp_path / "bad"), *bad)
        assert rc == 2 and err.count("\n") == 1, err


def test_concept_in_given_colors_keeps_the_rest_of_the_draw(tmp_path):
    """colors=...: a held-out set in colors the training clips lack; the same seed draws the same motions and
    sizes, so only the colors differ."""
    from duogen.data.concepts import concept_clips

    a = concept_clips("star", n=6, seed=3)
    b = concept_clips("star", n=6, seed=3, colors=["red", "white"])
    assert [x[0]["color"] for x in b.attributes] == ["red", "white"] * 3
    assert all(cap.startswith(f"a {x[0]['color']} <v1>") for cap, x in zip(b.captions, b.attributes))
    for x, y in zip(a.attributes, b.attributes):
        assert {k: v for k, v in x[0].items() if k != "color"} == {k: v for k, v in y[0].items() if k != "color"}
    assert ((a.videos > 0).any(-1) == (b.videos > 0).any(-1)).all()  # the same masks and paths
    rc, s, err = cli("data", "make", "concept", "--kind", "star", "--out", str(tmp_path / "c"), "--n", "4",
                     "colors=green,magenta")
    assert rc == 0, err
    assert [c.split()[1] for c in s["captions"]] == ["green", "magenta", "green", "magenta"]


def test_shifted_copies_move_the_object_inside_the_frame_and_keep_textured_clips():
    from duogen.data.concepts import concept_clips, shifted_copies
    from duogen.errors import DataError

    c = concept_clips("star", n=4, seed=2)
    rng = np.random.default_rng(0)
    textured = rng.integers(0, 256, c.videos[0].shape, dtype=np.uint8)  # a photo-like clip: no room to move
    clips = np.concatenate([c.videos, textured[None]])
    out, fixed = shifted_copies(clips, 5, seed=1)
    assert out.shape == (25, *clips.shape[1:]) and fixed == [4]
    for i, v in enumerate(clips[:4]):
        copies = out[5 * i: 5 * i + 5]
        assert np.array_equal(copies[0], v)  # the clip itself first
        moved = 0
        for w in copies[1:]:
            # the whole object in every frame: the same pixels, the same colors, somewhere else
            assert ((w > 0).any(-1).sum((1, 2)) == (v > 0).any(-1).sum((1, 2))).all()
            assert np.array_equal(np.sort(w.reshape(-1, 3), 0), np.sort(v.reshape(-1, 3), 0))
            moved += not np.array_equal(w, v)
        assert moved >= 3
    assert all(np.array_equal(w, textured) for w in out[20:])
    assert np.array_equal(shifted_copies(clips, 1)[0], clips)
    assert np.array_equal(shifted_copies(clips, 5, seed=1)[0], out)  # seeded: a resumed run reads the same data
    with pytest.raises(DataError):
        shifted_copies(clips, 0)


def test_user_folder_concept(tmp_path):
    from duogen.data.concepts import load_concept
    from duogen.data.media import write_image
    from duogen.errors import DataError

    folder = tmp_path / "mine"
    folder.mkdir()
    img = np.zeros((48, 40, 3), np.uint8)
    img[10:30, 10:20] = (255, 0, 0)
    write_image(folder / "a.png", img)
    lines = [{"file_name": "a.png", "caption": "a red <v1> stays still"}, {"file_name": "a.png", "caption": "no token"}]
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    with pytest.warns(UserWarning):
        c = load_concept(folder, size=32, frames=9)
    assert c.videos.shape == (1, 9, 32, 32, 3) and c.captions == ["a red <v1> stays still"] and c.class_word is None
    (folder / "metadata.jsonl").write_text(json.dumps(lines[1]) + "\n")
    with pytest.raises(DataError, match="no usable clip"):
        load_concept(folder, size=32, frames=9)


# ----------------------------------------------------------------------------- tiny bases

import shutil  # noqa: E402

import torch  # noqa: E402

from test_latent_diffusion import make_codec  # noqa: E402

CAPTIONS = [f"a {c} {s} moves {d}" for c in ("red", "blue", "green", "yellow", "cyan")
            for s in ("circle", "square", "triangle") for d in ("left", "right", "up", "down")]


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """A tiny codec, a tiny AR and a tiny DiT model directory (random live weights), and a 4-clip star concept."""
    from duogen.ar_models.layouts import LayoutSpec
    from duogen.ar_models.model import ARConfig, MultimodalLM
    from duogen.data.concepts import make_concept
    from duogen.diffusion.dit import DiTConfig
    from duogen.diffusion.latent import LatentDiffusionConfig, LatentDiffusionModel
    from duogen.diffusion.text_encoder import TextEncoderConfig
    from duogen.tokenizers.text import train_text_tokenizer
    from duogen.tokenizers.vocab import UnifiedVocab

    root = tmp_path_factory.mktemp("personalize")
    codec = make_codec(0)
    codec.save_pretrained(root / "codec")
    C, f, h, w = codec.latent_shape((9, 32, 32))
    text = train_text_tokenizer(CAPTIONS, None, vocab_size=300)
    torch.manual_seed(0)
    vocab = UnifiedVocab(text.vocab_size, {"video": codec.vocab_size}, codec_refs={"video": str(root / "codec")})
    ar = MultimodalLM(ARConfig(hidden=32, layers=2, heads=2, kv_heads=2, mlp=64), vocab,
                      LayoutSpec(max_text=16, latent=(f, h, w), tasks=["t2v"]), text, codec_ref=str(root / "codec"))
    ar.save_pretrained(root / "ar")
    cfg = LatentDiffusionConfig(denoiser="dit", dit=DiTConfig(hidden=32, depth=1, heads=2, patch_size=2),
                                text=TextEncoderConfig(vocab_size=text.vocab_size, width=32, layers=1, heads=2,
                                                       max_tokens=24), latent=[C, f, h, w], steps=4)
    dit = LatentDiffusionModel(cfg, text, codec)
    with torch.no_grad():  # live weights everywhere (the DiT starts at exactly 0)
        for p in dit.parameters():
            p.add_(0.05 * torch.randn_like(p))
    dit.save_pretrained(root / "dit")
    make_concept("star", root / "star", n=4)
    return root


def load(root: Path, paradigm: str):
    from duogen.ar_models.model import MultimodalLM
    from duogen.diffusion.latent import LatentDiffusionModel

    return (MultimodalLM if paradigm == "ar" else LatentDiffusionModel).from_pretrained(root / paradigm)


def outputs(m) -> torch.Tensor:
    """The adapted module's output on fixed inputs: the Llama's logits, or the denoiser's prediction."""
    with torch.no_grad():
        if hasattr(m, "lm"):
            ids = torch.arange(48).reshape(2, 24) * 7 % m.vocab.size
            return m(ids)
        z = torch.randn(2, *m.config.latent, generator=torch.Generator().manual_seed(1))
        return m.denoiser(z, torch.tensor([100, 700]), m.encode_prompts(["a red circle moves left", "a <v1>"]))


def randomize_lora(m, name: str, seed: int) -> None:
    from duogen.bridges.personalize.lora import lora_layers

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(m):
            for p in (layer.lora_A[name].weight, layer.lora_B[name].weight):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


PARADIGMS = ["ar", "dit"]


@pytest.mark.parametrize("paradigm", PARADIGMS)
def test_zero_init_lora_is_a_noop_and_targets_attention_and_mlp(bases, paradigm):
    from duogen.bridges.personalize.lora import LoraSettings, add_lora, lora_layers

    m = load(bases, paradigm)
    before = outputs(m)
    cfg = add_lora(m, LoraSettings(r=2))
    assert torch.equal(outputs(m), before)
    names = {n.rsplit(".", 1)[-1] for n in cfg.target_modules}
    want = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} if paradigm == "ar" \
        else {"to_q", "to_kv", "to_out", "0", "2"}
    assert names == want and len(lora_layers(m)) > 0


@pytest.mark.parametrize("paradigm", PARADIGMS)
def test_lora_round_trip_weights_combine_fuse_and_unfuse(bases, tmp_path, paradigm):
    from duogen.bridges.personalize import load_adapter, set_adapter_weights, fuse_adapters, unfuse_adapters
    from duogen.bridges.personalize.lora import LoraSettings, add_lora, lora_layers, save_lora

    base_out = outputs(load(bases, paradigm))
    trained = []
    for k in range(2):  # two "trained" adapters: random A and B
        m = load(bases, paradigm)
        add_lora(m, LoraSettings(r=2, alpha=4.0))
        randomize_lora(m, "default", seed=10 + k)
        trained.append(outputs(m))
        save_lora(m, tmp_path / f"a{k}", bases / paradigm)
        assert not torch.equal(trained[-1], base_out)
    assert (tmp_path / "a0" / "adapter_config.json").is_file()
    m = load(bases, paradigm)
    assert load_adapter(m, tmp_path / "a0", bases / paradigm, name="one") == "one"
    assert torch.equal(outputs(m), trained[0])  # save / load round trip: identical outputs
    set_adapter_weights(m, {"one": 0.0})
    assert torch.equal(outputs(m), base_out)  # weight 0 = the base
    load_adapter(m, tmp_path / "a1", bases / paradigm, name="two", weight=1.0)
    set_adapter_weights(m, {"one": 0.0, "two": 1.0})
    assert torch.equal(outputs(m), trained[1])
    set_adapter_weights(m, {"one": 0.7, "two": -0.4})
    both = outputs(m)
    layer = lora_layers(m)[0]
    W0 = layer.base_layer.weight.detach().clone()
    delta = sum(w * (4.0 / 2) * layer.lora_B[n].weight @ layer.lora_A[n].weight for n, w in (("one", 0.7), ("two", -0.4)))
    fuse_adapters(m)  # W <- W + sum_i w_i (alpha / r) B_i A_i
    torch.testing.assert_close(layer.base_layer.weight, W0 + delta, rtol=0, atol=1e-6)
    torch.testing.assert_close(outputs(m), both, rtol=1e-4, atol=1e-5)  # fused == unfused
    unfuse_adapters(m)
    set_adapter_weights(m, {"one": 0.0, "two": 0.0})
    torch.testing.assert_close(outputs(m), base_out, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("paradigm", PARADIGMS)
def test_lora_method_trains_a_small_adapter_and_refuses_another_base(bases, tmp_path, paradigm):
    from duogen.bridges.personalize import load_adapter, personalize
    from duogen.errors import CheckpointError
    from duogen.io import load_state_dict

    before = (bases / paradigm / "model.safetensors").read_bytes()
    s = personalize("lora", bases / paradigm, bases / "star", tmp_path / "run", token="<v1>", steps=3, lr=1e-2,
                    rank=2)
    assert (bases / paradigm / "model.safetensors").read_bytes() == before  # the base is never modified
    from duogen.data import load_dataset

    # the AR model trains on each of the 4 clips and 7 moved copies of it, a batch the 4 clips' size
    shifts = {"ar": 8, "dit": 1}[paradigm]
    assert load_dataset(tmp_path / "run" / "concept")["train"].num_rows == 4 * shifts and s["shifts"] == shifts
    import yaml

    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]["batch_size"] == 4
    final = tmp_path / "run" / "final"
    keys = load_state_dict(final / "adapter_model.safetensors")
    assert keys and all(".lora_A." in k or ".lora_B." in k for k in keys)
    assert s["adapter_bytes"] < s["model_bytes"] / 5 and s["steps"] == 3
    m = load(bases, paradigm)
    load_adapter(m, tmp_path / "run", bases / paradigm)
    assert not torch.equal(outputs(m), outputs(load(bases, paradigm)))  # trained: B moved off zero
    other = tmp_path / "other"
    shutil.copytree(bases / paradigm, other)
    state = load_state_dict(other / "model.safetensors")
    k = next(iter(state))
    state[k] = state[k] + 1
    from duogen.io import save_state_dict

    save_state_dict(state, other / "model.safetensors")
    with pytest.raises(CheckpointError) as e:
        load_adapter(load(tmp_path, "other") if False else _load_dir(other, paradigm), tmp_path / "run", other)
    assert "another base model" in str(e.value) and "\n" not in str(e.value)
    rc, _, err = cli("generate", "--model", str(other), "--adapter", str(tmp_path / "run"), "--prompt", "a <v1>",
                     "--out", str(tmp_path / "g"), *(["--steps", "2"] if paradigm == "dit" else []))
    assert rc == 2 and err.count("\n") == 1 and "another base model" in err


def test_prepare_concept_repeats_a_clip_that_fills_its_frame(bases, tmp_path):
    """A photo-like clip cannot move without a seam: it is repeated, with one warning that says so; a flat one moves."""
    from duogen.bridges.personalize.common import base_info, prepare_concept
    from duogen.data import load_dataset
    from duogen.data.media import write_image

    folder = tmp_path / "mine"
    folder.mkdir()
    flat = np.zeros((32, 32, 3), np.uint8)
    flat[4:12, 6:14] = (255, 0, 0)
    textured = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    write_image(folder / "flat.png", flat)
    write_image(folder / "photo.png", textured)
    lines = [{"file_name": "flat.png", "caption": "a red <v1>"}, {"file_name": "photo.png", "caption": "a <v1>"}]
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    with pytest.warns(UserWarning, match="1 of 2 clips fill their frame and were not shifted"):
        c = prepare_concept(folder, base_info(bases / "ar"), tmp_path / "run", "<v1>")
    assert (c.clips, c.shifts) == (2, 8)
    rows = load_dataset(c.data_dir)["train"].with_format("numpy")
    assert rows.num_rows == 16 and list(rows["caption"]) == ["a red <v1>"] * 8 + ["a <v1>"] * 8
    videos = np.asarray(rows["video"])
    assert len({v.tobytes() for v in videos[:8]}) > 1 and len({v.tobytes() for v in videos[8:]}) == 1


def _load_dir(d: Path, paradigm: str):
    from duogen.ar_models.model import MultimodalLM
    from duogen.diffusion.latent import LatentDiffusionModel

    return (MultimodalLM if paradigm == "ar" else LatentDiffusionModel).from_pretrained(d)


def test_lora_run_resumes_exactly(bases, tmp_path):
    from duogen.bridges.personalize import personalize
    from duogen.io import load_state_dict
    from duogen.train.checkpoint import list_checkpoints

    kw = dict(token="<v1>", steps=4, lr=1e-2, rank=2, overrides=("train.ckpt_every=2", "train.keep_last=0"))
    personalize("lora", bases / "dit", bases / "star", tmp_path / "a", **kw)
    ck = list_checkpoints(tmp_path / "a")[0]
    assert ck.name.endswith("2")
    (tmp_path / "b" / "checkpoints").mkdir(parents=True)
    shutil.copytree(ck, tmp_path / "b" / "checkpoints" / ck.name)
    personalize("lora", bases / "dit", bases / "star", tmp_path / "b", resume="auto", **kw)
    a = load_state_dict(tmp_path / "a" / "final" / "adapter_model.safetensors")
    b = load_state_dict(tmp_path / "b" / "final" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- textual inversion


@pytest.mark.parametrize("paradigm", PARADIGMS)
def test_textual_inversion_trains_only_the_new_row(bases, tmp_path, paradigm):
    from duogen.bridges.personalize import load_adapter, personalize
    from duogen.io import load_state_dict
    from duogen.train.checkpoint import latest_checkpoint

    s = personalize("textual-inversion", bases / paradigm, bases / "star", tmp_path / "ti", token="<v1>", steps=12,
                    lr=5e-2, overrides=("train.log_every=1",))
    base = load(bases, paradigm)
    ck = load_state_dict(latest_checkpoint(tmp_path / "ti") / "model.safetensors")
    name = "lm.model.embed_tokens.weight" if paradigm == "ar" else "text_encoder.embed.weight"
    assert list(ck) == [name]  # the checkpoint holds the one trained table; everything else stayed frozen
    old = base.state_dict()[name]
    V = old.shape[0]
    assert s["row"] == V and ck[name].shape[0] == V + 1
    assert torch.equal(ck[name][:V], old)  # every other row bit-equal
    assert (tmp_path / "ti" / "final" / "learned_embeds.safetensors").stat().st_size < 4096
    m = load(bases, paradigm)
    assert load_adapter(m, tmp_path / "ti", bases / paradigm) == "<v1>"
    from duogen.bridges.personalize.textual_inversion import embedding_tables

    assert torch.equal(embedding_tables(m)[1][V], ck[name][V]) and not torch.equal(ck[name][V], old[0])
    if paradigm == "ar":  # every old logit unchanged
        with torch.no_grad():
            ids = torch.arange(48).reshape(2, 24) * 7 % V
            assert torch.equal(m(ids)[..., :V], base(ids))
    init = load(bases, paradigm)  # the base with the placeholder at its initial row (the class word's)
    if paradigm == "ar":
        init.add_tokens(text={"<v1>": "triangle"})
    else:
        init.text_encoder.add_placeholder("<v1>", "triangle")
    assert concept_loss(m, bases) < concept_loss(init, bases)  # the loss on the concept fell


def concept_loss(model, bases: Path) -> float:
    from duogen.bridges.personalize.common import concept_loss as loss

    return loss(model, bases / ("ar" if hasattr(model, "lm") else "dit"), bases / "star")


def test_textual_inversion_bad_input(bases, tmp_path):
    grown = load(bases, "dit")
    grown.text_encoder.add_placeholder("<v1>", "circle")
    grown.save_pretrained(tmp_path / "grown")
    for model, token in ((tmp_path / "grown", "<v1>"), (bases / "ar", "a")):  # a placeholder, or a word, it knows
        rc, _, err = cli("personalize", "--model", str(model), "--concept", str(bases / "star"), "--method",
                         "textual-inversion", "--token", token, "--out", str(tmp_path / "x"))
        assert rc == 2 and err.count("\n") == 1 and "already in" in err, err
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "metadata.jsonl").write_text(json.dumps({"file_name": "a.png", "caption": "a <v1>"}) + "\n")
    for extra in (["--concept", str(empty)], ["--concept", str(bases / "star"), "--method", "nope"],
                  ["--concept", str(tmp_path / "missing")], ["--concept", str(bases / "star"), "--shifts", "0"]):
        rc, _, err = cli("personalize", "--model", str(bases / "ar"), "--out", str(tmp_path / "y"), *extra)
        assert rc == 2 and err.count("\n") == 1, err
    rc, _, err = cli("personalize", "--concept", str(bases / "star"), "--out", str(tmp_path / "z"))
    assert rc == 2 and "--model" in err
    assert not (tmp_path / "y").exists()  # refused before anything is written


@pytest.mark.parametrize("denoiser", ["unet", "unet2d"])
def test_lora_on_the_unets_attention_and_mlp(bases, denoiser):
    """The U-Nets' transformer blocks take LoRA too: zero-init no-op, fused == unfused, unfuse restores."""
    from duogen.bridges.personalize import fuse_adapters, unfuse_adapters
    from duogen.bridges.personalize.lora import LoraSettings, add_lora
    from duogen.diffusion.latent import LatentDiffusionConfig, LatentDiffusionModel
    from duogen.diffusion.text_encoder import TextEncoderConfig
    from duogen.diffusion.unet import UNetConfig
    from duogen.diffusion.video_unet import VideoUNetConfig

    dit = load(bases, "dit")
    small = dict(channels=16, channel_mult=[1, 2], attention_levels=[1], heads=2)
    cfg = LatentDiffusionConfig(denoiser=denoiser, unet=VideoUNetConfig(**small), unet2d=UNetConfig(**small),
                                text=TextEncoderConfig(vocab_size=dit.config.text.vocab_size, width=32, layers=1,
                                                       heads=2, max_tokens=24), latent=list(dit.config.latent))
    torch.manual_seed(0)
    m = LatentDiffusionModel(cfg, dit.tokenizer, dit.codec).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    base = outputs(m)
    lcfg = add_lora(m, LoraSettings(r=2))
    assert {"to_q", "to_kv", "to_out"} <= {n.rsplit(".", 1)[-1] for n in lcfg.target_modules}
    assert torch.equal(outputs(m), base)
    randomize_lora(m, "default", seed=3)
    adapted = outputs(m)
    fuse_adapters(m)
    torch.testing.assert_close(outputs(m), adapted, rtol=1e-4, atol=1e-5)
    unfuse_adapters(m)
    from duogen.bridges.personalize import set_adapter_weights

    set_adapter_weights(m, {"default": 0.0})
    torch.testing.assert_close(outputs(m), base, rtol=1e-4, atol=1e-5)


def test_generate_with_adapters_follows_the_weight(bases, tmp_path):
    """`duogen generate --adapter RUN:0` samples the base's ids exactly (the AR decoder reads the live LoRA);
    at weight 1 the samples change; generation.json names the adapters."""
    from duogen.bridges.personalize import load_adapter
    from duogen.bridges.personalize.lora import LoraSettings, add_lora, save_lora

    m = load(bases, "ar")
    add_lora(m, LoraSettings(r=2))
    randomize_lora(m, "default", seed=5)
    save_lora(m, tmp_path / "run" / "final", bases / "ar")
    ids = {}
    for tag, extra in (("base", []), ("w0", ["--adapter", f"{tmp_path / 'run'}:0"]),
                       ("w1", ["--adapter", str(tmp_path / "run")])):
        rc, s, err = cli("generate", "--model", str(bases / "ar"), "--prompt", "a red <v1> moves left", "--n", "2",
                         "--out", str(tmp_path / tag), "--save-latents", *extra)
        assert rc == 0, err
        from duogen.io import load_state_dict

        ids[tag] = load_state_dict(tmp_path / tag / s["latents_file"].rsplit("/", 1)[-1])["ids"]
    assert s["adapters"] == [{"adapter": str(tmp_path / "run"), "weight": 1.0, "name": "adapter0"}]
    assert torch.equal(ids["w0"], ids["base"]) and not torch.equal(ids["w1"], ids["base"])
    # the same through Python, on the generator
    from duogen.bridges.generate import load_generator

    gen = load_generator(bases / "ar")
    load_adapter(gen, tmp_path / "run", bases / "ar", weight=0.0)
    assert torch.equal(torch.as_tensor(gen.generate(["a red <v1> moves left"], n=2, seed=0).ids), ids["base"])
