"""Results you can continue from: a generation carries what produced each clip (AR output ids; diffusion initial
noise and final latents), `generate` takes them back (ids=, noise=, latents= with start_step=), and
`duogen generate --save-latents` writes them as safetensors beside the clips."""

import json

import numpy as np
import pytest
import torch

from duogen.bridges.diffusion import DiffusionGenerator
from duogen.bridges.generate import ARGenerator
from duogen.errors import ConfigError, DataError
from test_ar_model import ar_dir, text  # noqa: F401 (fixtures: a tiny t2v + i2v AR model dir on an untrained codec)
from test_latent_diffusion import model  # noqa: F401 (fixture: the tiny live DiT with its codec)

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["a red circle moves left", "a blue square moves up"]
AR_PROMPTS = ["a red circle", "a blue square"]  # within the tiny AR model's 8-token text budget


# ----------------------------------------------------------------------------- diffusion


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpm"])
def test_diffusion_continues_from_its_own_noise_and_latents(model, sampler):
    gen = DiffusionGenerator(model)
    kw = {"n": 2, "seed": 3, "steps": 3, "sampler": sampler, "guidance": 2.0}
    res = gen.generate(PROMPTS, **kw)
    shape = (4, *model.config.latent)
    assert res.noise.shape == shape and res.latents.shape == shape and res.ids is None
    assert torch.equal(res.noise, model.initial_noise(4, torch.Generator().manual_seed(3)))
    assert torch.equal(to_video(model, res.latents), torch.as_tensor(res.videos))  # the latents are what was decoded
    again = gen.generate(PROMPTS, **{**kw, "noise": res.noise})  # the result's own noise: the same clips exactly
    assert torch.equal(again.latents, res.latents) and np.array_equal(again.videos, res.videos)
    assert torch.equal(gen.generate(PROMPTS, **{**kw, "latents": res.noise, "start_step": 0}).latents, res.latents)
    other = gen.generate(PROMPTS, **{**kw, "noise": torch.randn(shape, generator=torch.Generator().manual_seed(9))})
    assert (other.latents - res.latents).abs().max() > 1e-3  # the noise is really used
    done = gen.generate(PROMPTS, **{**kw, "latents": res.latents, "start_step": 3})  # no step left: unchanged
    assert torch.equal(done.latents, res.latents) and np.array_equal(done.videos, res.videos)
    assert done.noise is None and done.info["start_step"] == 3 and done.forward_passes == 0


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpm"])
def test_start_step_at_the_last_step_leaves_clean_latents_nearly_unchanged(model, sampler):
    """At 50 trailing steps the last timestep is 19 (alpha_bar 0.998 on the cosine schedule): one step from the
    final latents there moves them by a few percent of the denoiser's output at most."""
    gen = DiffusionGenerator(model)
    kw = {"seed": 1, "steps": 50, "sampler": sampler, "guidance": 1.0}
    z = torch.randn(1, *model.config.latent, generator=torch.Generator().manual_seed(4))
    assert int(model.timesteps(50)[-1]) == 19
    last = gen.generate(PROMPTS[:1], **kw, latents=z, start_step=49)
    assert last.forward_passes == 1
    assert (last.latents - z).abs().max() < 0.1 * z.abs().max()
    assert (last.latents - z).abs().max() > 0  # one real step ran


def test_ddim_restarted_mid_way_from_its_own_sample_reproduces_the_run(model):
    """start_step = k continues from the sample at timestep timesteps[k]: DDIM (eta = 0) restarted from the
    sample it had after step k-1 ends on the same latents (what SDEdit relies on: a sample at that level)."""
    gen = DiffusionGenerator(model)
    kw = {"n": 1, "seed": 2, "steps": 4, "sampler": "ddim", "guidance": 2.0}
    seen = {}

    def keep(i, t, x, x0):
        seen[i] = x.clone()  # the sample after step i: the one at timesteps[i + 1]

    full = gen.generate(PROMPTS, **kw, callback=keep)
    for k in (1, 2):
        mid = gen.generate(PROMPTS, **kw, latents=seen[k - 1], start_step=k)
        torch.testing.assert_close(mid.latents, full.latents, rtol=1e-5, atol=1e-5)
        assert mid.forward_passes == 2 * (4 - k) * 2


def test_bad_starts_are_clear_errors(model):
    gen = DiffusionGenerator(model)
    z = torch.zeros(1, *model.config.latent)
    with pytest.raises(DataError, match=r"noise must have shape \(2, "):
        gen.generate(PROMPTS, steps=2, noise=z)
    with pytest.raises(ConfigError, match="not both"):
        gen.generate(PROMPTS[:1], steps=2, noise=z, latents=z, start_step=1)
    with pytest.raises(ConfigError, match="needs latents="):
        gen.generate(PROMPTS[:1], steps=2, start_step=1)
    with pytest.raises(ConfigError, match=r"start_step must be an integer in \[0, steps=2\]"):
        gen.generate(PROMPTS[:1], steps=2, latents=z, start_step=3)


def to_video(model, z):
    from duogen.bridges.result import to_uint8

    with torch.no_grad():
        return torch.as_tensor(to_uint8(model.decode(z)))


# ----------------------------------------------------------------------------- AR


@pytest.fixture(scope="module")
def ar(ar_dir):  # noqa: F811
    return ARGenerator.from_pretrained(ar_dir)


def test_ar_decodes_the_same_clip_from_its_own_ids(ar):
    res = ar.generate(AR_PROMPTS, n=2, seed=1, guidance=2.0, top_k=20)
    f, h, w = ar.model.spec.latent
    assert res.ids.shape == (4, f, h, w) and res.ids.dtype == torch.long and res.noise is None
    again = ar.generate(AR_PROMPTS, n=2, seed=7, guidance=2.0, top_k=20, ids=res.ids)  # another seed: all tokens given
    assert torch.equal(again.ids, res.ids) and np.array_equal(again.videos, res.videos)
    fresh = ar.generate(AR_PROMPTS, n=2, seed=7, guidance=2.0, top_k=20)
    assert not torch.equal(fresh.ids, res.ids)


def test_ar_continues_from_a_prefix_of_its_ids(ar):
    """A given prefix is kept and the rest sampled after it; the draws still happen, so the run's own prefix with
    its own seed gives back the whole run, and another seed keeps the prefix and samples a different rest."""
    res = ar.generate(AR_PROMPTS, n=1, seed=3)
    k = res.ids[0].numel() // 2
    prefix = res.ids.flatten(1)[:, :k]  # (B, k)
    same = ar.generate(AR_PROMPTS, n=1, seed=3, ids=prefix)
    assert torch.equal(same.ids, res.ids)
    other = ar.generate(AR_PROMPTS, n=1, seed=4, ids=prefix)
    assert torch.equal(other.ids.flatten(1)[:, :k], prefix) and not torch.equal(other.ids, res.ids)
    # entries < 0 are sampled: force one token in the middle and nothing else, one row for all clips
    one = torch.full((1, k + 1), -1)
    one[0, k] = 5
    got = ar.generate(AR_PROMPTS, n=1, seed=4, ids=one)
    assert (got.ids.flatten(1)[:, k] == 5).all()


def test_ar_i2v_ids_are_the_generated_frames(ar):
    img = np.zeros((32, 32, 3), np.uint8)
    img[8:20, 8:20] = (220, 30, 30)
    res = ar.generate(AR_PROMPTS[:1], seed=2, task="i2v", image=img)
    f, h, w = ar.model.spec.latent
    assert res.ids.shape == (1, f - ar.model.spec.cond_frames, h, w)
    again = ar.generate(AR_PROMPTS[:1], seed=5, task="i2v", image=img, ids=res.ids)
    assert np.array_equal(again.videos, res.videos)


def test_forced_ids_follow_each_position_range_for_residual_audio(text):  # noqa: F811
    """t2a output ids are (B, T, L) with each residual level in its own id range: given back, every level lands in
    its range (the same ids), and a level's id at or past the codebook size is refused."""
    from duogen.ar_models.sampling import SamplingConfig, generate_ids
    from test_ar_model import make

    m = make(text, tasks=("t2v", "t2a"), audio=True).eval()
    s = SamplingConfig(temperature=1.0)
    a = generate_ids(m, ["a red circle"], "t2a", n=2, seed=1, sampling=s)
    assert a.shape == (2, m.spec.audio_tokens, m.spec.audio_levels)
    assert torch.equal(generate_ids(m, ["a red circle"], "t2a", n=2, seed=2, sampling=s, forced_ids=a), a)
    assert not torch.equal(generate_ids(m, ["a red circle"], "t2a", n=2, seed=2, sampling=s), a)
    with pytest.raises(DataError, match="below the codebook size"):
        generate_ids(m, ["a red circle"], "t2a", sampling=s, forced_ids=torch.full((1, 2), 16))


def test_ar_bad_ids_are_clear_errors(ar):
    n_out = int(np.prod(ar.model.spec.latent))
    with pytest.raises(DataError, match="one row per clip"):
        ar.generate(AR_PROMPTS, ids=torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(DataError, match=f"the output has {n_out}"):
        ar.generate(AR_PROMPTS, ids=torch.zeros(2, n_out + 1, dtype=torch.long))
    with pytest.raises(DataError, match="below the codebook size"):
        ar.generate(AR_PROMPTS, ids=torch.full((2, 4), ar.codec.vocab_size))


# ----------------------------------------------------------------------------- --save-latents


def test_save_latents_writes_loadable_safetensors_for_both_paradigms(ar_dir, model, tmp_path, capsys):  # noqa: F811
    from safetensors.torch import load_file

    from duogen.cli import main

    gen = ARGenerator.from_pretrained(ar_dir)
    f, h, w = gen.model.spec.latent
    out = tmp_path / "ar"
    assert main(["generate", "--model", str(ar_dir), "--prompt", "a red circle", "--n", "2", "--seed", "4",
                 "--out", str(out), "--save-latents", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["latents_file"] == str(out / "latents.safetensors")
    assert json.loads((out / "generation.json").read_text())["latents_file"] == summary["latents_file"]
    saved = load_file(summary["latents_file"])
    assert set(saved) == {"ids"} and saved["ids"].shape == (2, f, h, w) and saved["ids"].dtype == torch.int64
    assert torch.equal(saved["ids"], gen.generate(["a red circle"], n=2, seed=4).ids)

    model.save_pretrained(tmp_path / "dit")
    out = tmp_path / "dit_out"
    assert main(["generate", "--model", str(tmp_path / "dit"), "--prompt", "a red circle", "--n", "2", "--steps", "2",
                 "--out", str(out), "--save-latents"]) == 0
    capsys.readouterr()
    saved = load_file(out / "latents.safetensors")
    shape = (2, *model.config.latent)
    assert set(saved) == {"noise", "latents"} and saved["noise"].shape == shape and saved["latents"].shape == shape
    res = DiffusionGenerator(model).generate(["a red circle"], n=2, seed=0, steps=2)
    assert torch.equal(saved["noise"], res.noise) and torch.equal(saved["latents"], res.latents)
    # without the flag nothing extra is written
    assert main(["generate", "--model", str(tmp_path / "dit"), "--prompt", "x", "--steps", "1",
                 "--out", str(tmp_path / "plain")]) == 0
    assert not (tmp_path / "plain" / "latents.safetensors").exists()
    assert "latents_file" not in json.loads((tmp_path / "plain" / "generation.json").read_text())
