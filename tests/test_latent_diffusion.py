"""Latent diffusion on the codec: normalization, decode paths, save/load, codec checks, generate, the recipe."""

import json
import warnings

import numpy as np
import pytest
import torch

from duogen.bridges.diffusion import DiffusionGenerator
from duogen.bridges.generate import load_generator
from duogen.diffusion.dit import DiTConfig
from duogen.diffusion.latent import LatentDiffusionConfig, LatentDiffusionModel
from duogen.diffusion.text_encoder import TextEncoderConfig
from duogen.errors import CheckpointError, ConfigError, DataError
from duogen.tokenizers.text import train_text_tokenizer
from duogen.tokenizers.video_codec import build_video_codec

CAPTIONS = [f"a {c} {s} moves {d}" for c in ("red", "green", "blue") for s in ("circle", "square") for d in ("left", "up")]


def make_codec(seed: int = 0, levels: str = "[8,5,5,5]"):
    torch.manual_seed(seed)
    codec = build_video_codec("tiny", ["patch=4", "widths=[16]", f"quantizer.levels={levels}",
                                       f"quantizer.dim={len(json.loads(levels))}"]).eval()
    with torch.no_grad():
        codec.set_latent_stats(codec.encode_latents(clips(2)))  # stats of real encodings, not 1 / 0
    return codec


def clips(B: int) -> torch.Tensor:
    return torch.rand(B, 3, 9, 32, 32, generator=torch.Generator().manual_seed(4)) * 2 - 1


@pytest.fixture(scope="module")
def model():
    tok = train_text_tokenizer(CAPTIONS, vocab_size=300)
    codec = make_codec()
    cfg = LatentDiffusionConfig(
        denoiser="dit", dit=DiTConfig(hidden=32, depth=1, heads=2, patch_size=2),
        text=TextEncoderConfig(vocab_size=tok.vocab_size, width=32, layers=1, heads=2, max_tokens=24),
        latent=list(codec.latent_shape((9, 32, 32))), steps=4,
    )
    torch.manual_seed(0)
    m = LatentDiffusionModel(cfg, tok, codec).eval()
    with torch.no_grad():  # live weights everywhere (the DiT starts at exactly 0)
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def test_latents_are_normalized_by_the_codec_statistics(model):
    x = clips(2)
    codec = model.codec
    z = model.encode_video(x)
    raw = codec.encode_latents(x)
    view = (1, -1, 1, 1, 1)
    torch.testing.assert_close(z, (raw - codec.latent_shift.view(view)) / codec.latent_scale.view(view))
    assert not torch.allclose(codec.latent_scale, torch.ones_like(codec.latent_scale))


def test_decode_goes_through_the_codec_decoder_with_the_quantize_flag(model):
    z = torch.randn(1, *model.config.latent, generator=torch.Generator().manual_seed(1))
    raw = model.codec.denormalize_latents(z)
    direct = model.decode(z)
    torch.testing.assert_close(direct, model.codec.decode_latents(raw))
    model.config.quantize_decode = True
    try:
        quantized = model.decode(z)
    finally:
        model.config.quantize_decode = False
    torch.testing.assert_close(quantized, model.codec.decode(model.codec.latents_to_ids(raw)))
    assert direct.shape == (1, 3, 9, 32, 32) and (quantized - direct).abs().max() > 0


def test_training_loss_reaches_the_text_encoder_and_condition_dropout(model):
    ids, mask = model.text_encoder.tokenize(CAPTIONS[:4], strict=False)
    batch = {"latents": torch.randn(4, *model.config.latent), "text_ids": ids, "text_mask": mask}
    model.train()
    try:
        loss = model(batch)
        loss.backward()
        # the text encoder is trained jointly: the diffusion loss alone gives every one of its tensors a gradient
        grads = {name: p.grad for name, p in model.text_encoder.named_parameters()}
    finally:
        model.eval()
        model.zero_grad()
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert grads and all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads.values()), {
        name: None if g is None else g.abs().sum().item() for name, g in grads.items()}
    # the dropped condition is exactly the empty prompt's
    null_ids, null_mask = model.text_encoder.null_ids(ids.shape[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        empty = model.encode_prompts([""], pad_to=ids.shape[1])
    torch.testing.assert_close(model.text_encoder(null_ids, null_mask).tokens, empty.tokens)


def test_save_load_gives_identical_outputs(model, tmp_path):
    model.save_pretrained(tmp_path / "m")
    conf = json.loads((tmp_path / "m" / "config.json").read_text())
    assert conf["kind"] == "diffusion" and (tmp_path / "m" / "text.model").is_file()
    assert (tmp_path / "m" / "codec" / "model.safetensors").is_file()
    loaded = LatentDiffusionModel.from_pretrained(tmp_path / "m")
    a = model.sample_latents(["a red circle moves left"], n=2, seed=3, steps=3, guidance=2.0)
    b = loaded.sample_latents(["a red circle moves left"], n=2, seed=3, steps=3, guidance=2.0)
    assert torch.equal(a, b)
    assert torch.equal(model.decode(a), loaded.decode(b))
    c = loaded.sample_latents(["a red circle moves left"], n=2, seed=4, steps=3, guidance=2.0)
    assert not torch.equal(a, c)


def test_a_codec_that_does_not_match_is_refused(model, tmp_path):
    model.save_pretrained(tmp_path / "m")
    with pytest.raises(CheckpointError, match="codec does not match.*latent_scale"):
        LatentDiffusionModel.from_pretrained(tmp_path / "m", codec=make_codec(seed=1))
    other = make_codec(levels="[8,5,5]")  # 3 latent channels
    with pytest.raises(CheckpointError, match="codec does not match.*4-channel"):
        LatentDiffusionModel.from_pretrained(tmp_path / "m", codec=other)


@pytest.mark.parametrize("sampler,steps", [("ddpm", 3), ("ddim", 3), ("dpm", 3)])
def test_generate_through_the_bridge(model, tmp_path, sampler, steps):
    model.save_pretrained(tmp_path / "m")
    gen = load_generator(tmp_path / "m")
    assert isinstance(gen, DiffusionGenerator) and gen.kind == "diffusion"
    res = gen.generate(["a red circle moves left", "a blue square moves up"], n=2, seed=0, steps=steps,
                       sampler=sampler, guidance=2.0)
    assert res.videos.shape == (4, 9, 32, 32, 3) and res.videos.dtype == np.uint8
    assert res.forward_passes == 4 * steps * 2  # guided: two denoiser evaluations per step
    assert res.prompts == ["a red circle moves left"] * 2 + ["a blue square moves up"] * 2


def test_ddpm_variance_reaches_the_scheduler(model):
    """sigma_t^2 = beta_t or beta_tilde_t (Ho et al. 2020, Sec. 3.2): the choice changes DDPM samples; the default
    stays the scheduler's, beta_tilde."""
    run = lambda **kw: model.sample_latents(["a red circle moves left"], seed=5, steps=3, sampler="ddpm",  # noqa: E731
                                            guidance=2.0, **kw)
    default = run()
    assert torch.equal(default, run(ddpm_variance="beta_tilde"))
    beta = run(ddpm_variance="beta")
    assert beta.shape == default.shape and (beta - default).abs().max() > 1e-3
    res = DiffusionGenerator(model).generate(["a red circle"], seed=5, steps=3, sampler="ddpm", ddpm_variance="beta")
    assert res.info["ddpm_variance"] == "beta"


def test_bad_input_is_a_clear_error(model):
    gen = DiffusionGenerator(model)
    with pytest.raises(ConfigError, match="guidance scale must be in"):
        gen.generate(["a red circle"], guidance=-1.0)
    with pytest.raises(ConfigError, match="guidance scale must be in"):
        gen.generate(["a red circle"], guidance=1e6)
    with pytest.raises(ConfigError, match="sampling steps must be an integer in"):
        gen.generate(["a red circle"], steps=0)
    with pytest.raises(ConfigError, match="sampling steps must be an integer in"):
        gen.generate(["a red circle"], steps=5000)
    with pytest.raises(ConfigError, match="unknown sampler"):
        gen.generate(["a red circle"], sampler="euler")
    with pytest.raises(ConfigError, match="DDPM variance must be"):
        gen.generate(["a red circle"], sampler="ddpm", ddpm_variance="large")
    with pytest.raises(ConfigError, match="ddpm_variance sets the DDPM sampler"):
        gen.generate(["a red circle"], sampler="ddim", ddpm_variance="beta")
    with pytest.raises(DataError, match="prompts must be a string"):
        gen.generate([1, 2])
    with pytest.raises(DataError, match="must be a string"):
        model.sample_latents([b"bytes"])
    with pytest.raises(DataError, match="next-token sampling setting"):
        gen.generate(["a red circle"], top_k=5)
    with pytest.raises(DataError, match="next-token sampling setting"):
        gen.generate(["a red circle"], layout_candidates=4)
    with pytest.raises(DataError, match="text-to-video only"):
        gen.generate(["a red circle"], image=np.zeros((32, 32, 3), np.uint8))


def test_recipe_trains_saves_and_generates(tmp_path):
    from duogen.data import make_dataset
    from duogen.train.diffusion_recipe import train_diffusion
    from duogen.train.tokenizer_recipe import load_pixels

    make_dataset("shapes", tmp_path / "data", n=40, preset="tiny", seed=0)
    codec = make_codec()
    # the stats of this data's latents (as `duogen train tokenizer` stores them), so normalization can be checked
    with torch.no_grad():
        codec.set_latent_stats(codec.encode_latents(load_pixels(tmp_path / "data", "train", "video")))
    codec.save_pretrained(tmp_path / "codec")
    info = train_diffusion(
        tmp_path / "data", tmp_path / "codec", tmp_path / "run", preset="tiny",
        overrides=["denoiser=unet", "unet.channels=16", "unet.heads=2", "text.width=32", "text.layers=1",
                   "train.steps=3", "train.batch_size=4", "train.log_every=1", "train.precision=fp32", "steps=2"],
    )
    assert info["steps"] == 3 and np.isfinite(info["final_loss"]) and info["latent"] == [4, 3, 8, 8]
    assert abs(info["latent_std_after_normalization"] - 1.0) < 0.2  # normalized by the codec's stats
    gen = load_generator(tmp_path / "run" / "final")
    res = gen.generate(["a red circle moves left"], n=1, seed=0)
    assert res.videos.shape == (1, 9, 32, 32, 3)
    assert json.loads((tmp_path / "run" / "final" / "config.json").read_text())["config"]["denoiser"] == "unet"
