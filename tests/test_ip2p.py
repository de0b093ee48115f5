"""InstructPix2Pix on both paradigms: the zero-initialised extra input channels leave the base model's output
unchanged, dual guidance reduces to single guidance at image scale 1, the AR edit layout puts instruction,
source and target where stated, the recipe's first steps lower the loss, and bad input is a clear error."""

import json

import numpy as np
import pytest
import torch

from duogen.ar_models.layouts import NULL_CLIP
from duogen.ar_models.sampling import SamplingConfig, sample_plans
from duogen.bridges.edit.ip2p import dual_guided_decode, ip2p_edit
from duogen.diffusion.blocks import TextCond
from duogen.diffusion.guidance import CFGDenoiser
from duogen.diffusion.image_cond import DualCFGDenoiser, EditCond, widen_state
from duogen.diffusion.latent import LatentDiffusionConfig, LatentDiffusionModel
from duogen.diffusion.text_encoder import TextEncoderConfig
from duogen.diffusion.video_unet import VideoUNetConfig
from duogen.errors import ConfigError, DataError
from duogen.train.ip2p_recipe import train_ip2p
from _edit_helpers import A, ar_dir, gen, kw, model, text  # noqa: F401 (fixtures)
from test_ar_model import make
from test_latent_diffusion import make_codec

pytestmark = pytest.mark.usefixtures("one_thread")


def widened(base):
    C = base.config.latent[0]
    import dataclasses

    m = LatentDiffusionModel(dataclasses.replace(base.config, image_channels=C), base.tokenizer, base.codec).eval()
    m.text_encoder.load_state_dict(base.text_encoder.state_dict())
    m.denoiser.net.load_state_dict(widen_state(base.denoiser.state_dict(), m.denoiser.net.state_dict(), C))
    return m


@pytest.fixture(scope="module")
def unet_model(model):  # noqa: F811
    cfg = LatentDiffusionConfig(denoiser="unet", unet=VideoUNetConfig(channels=16, channel_mult=[1, 2], heads=2),
                                text=TextEncoderConfig(vocab_size=model.tokenizer.vocab_size, width=32, layers=1,
                                                       heads=2, max_tokens=24), latent=list(model.config.latent))
    torch.manual_seed(0)
    m = LatentDiffusionModel(cfg, model.tokenizer, make_codec()).eval()
    with torch.no_grad():  # live weights everywhere, zero-initialised output layers included
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


@pytest.mark.parametrize("which", ["dit", "unet"])
def test_zero_init_extra_channels_leave_the_output_unchanged(which, model, unet_model):  # noqa: F811
    base = model if which == "dit" else unet_model
    wide = widened(base)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, *base.config.latent, generator=g)
    image = torch.randn(2, *base.config.latent, generator=g)  # a real (non-zero) source: its weights are zero
    t = torch.tensor([10, 700])
    with torch.no_grad():
        text = base.encode_prompts([A, "a blue square"])
        ref = base.denoiser(z, t, text)
        out = wide.denoiser(z, t, EditCond(text, image))
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    # ... and the new weights do act once they are non-zero
    with torch.no_grad():
        for p in wide.denoiser.parameters():
            p.add_(0.01 * torch.randn_like(p))  # (a constant would vanish in the LayerNorms)
        assert (wide.denoiser(z, t, EditCond(text, image)) - wide.denoiser(z, t, EditCond(text, 0 * image))).abs().max() > 1e-4


def test_dual_guidance_with_image_scale_one_is_text_guidance(model):  # noqa: F811
    wide = widened(model)
    with torch.no_grad():
        for p in wide.denoiser.parameters():  # the image channels matter
            p.add_(0.02 * torch.randn_like(p))
        g = torch.Generator().manual_seed(1)
        z = torch.randn(2, *model.config.latent, generator=g)
        image = torch.randn(2, *model.config.latent, generator=g)
        t = torch.tensor([100, 500])
        text = wide.encode_prompts([A, A])
        null = wide.null_cond(text.tokens.shape[1])
        cond = EditCond(text, image)
        dual = DualCFGDenoiser(wide.denoiser, 4.0, 1.0, null)(z, t, cond)
        single = CFGDenoiser(wide.denoiser, 4.0, EditCond(null.repeat(2), image))(z, t, cond)
        torch.testing.assert_close(dual, single, rtol=0, atol=1e-5)
        plain = wide.denoiser(z, t, cond)
        torch.testing.assert_close(DualCFGDenoiser(wide.denoiser, 1.0, 1.0, null)(z, t, cond), plain, rtol=0, atol=1e-5)
        assert (DualCFGDenoiser(wide.denoiser, 4.0, 2.0, null)(z, t, cond) - dual).abs().max() > 1e-4


def edit_model(text):  # noqa: F811
    m = make(text, tasks=("t2v",))
    m.add_tokens(tasks={"<edit>": "<inpaint>"})
    m.enable_task("edit")
    with torch.no_grad():
        m.lm.lm_head.weight.mul_(20)  # sharpen the random model's logits
    return m.eval()


def test_ar_edit_layout_puts_instruction_source_and_target_where_stated(text):  # noqa: F811
    m = edit_model(text)
    v, t = m.vocab, m.vocab.tokens
    instr = text.encode("blue circle")
    src, tgt = np.arange(32).reshape(2, 4, 4) % 64, (np.arange(32).reshape(2, 4, 4) + 7) % 64
    ex = m.layouts.example("edit", instr, tgt, {"source": src})
    M, nv = m.spec.max_text, 32
    ids = ex.ids
    assert ids[:2] == [t["<bos>"], t["<edit>"]] and ids[2 + M - len(instr)] == t["<bot>"]
    assert ids[3 + M - len(instr): 3 + M] == list(v.text_to_global(instr)) and ids[3 + M] == t["<eot>"]
    s0 = 4 + M + 1  # after <bov>
    assert ids[s0 - 1] == t["<bov>"] and ids[s0: s0 + nv] == list(v.codec_to_global("video", src.reshape(-1)))
    assert ids[s0 + nv: s0 + nv + 3] == [t["<eov>"], t["<sep>"], t["<bov>"]]
    assert ex.prefix_len == ex.out_start == s0 + nv + 3 and ex.out_end == ex.out_start + nv
    assert ids[ex.out_start: ex.out_end] == list(v.codec_to_global("video", tgt.reshape(-1)))
    assert ids[ex.out_end:] == [t["<eov>"], t["<eos>"]]
    null = m.layouts.example("edit", [], tgt, {"source": NULL_CLIP}).ids
    assert null[s0: s0 + nv] == [t["<pad>"]] * nv and len(null) == len(ids)
    batch = m.layouts.batch([ex])
    assert batch["loss_mask"][0].nonzero()[:, 0].tolist() == list(range(ex.out_start, ex.out_end))
    with pytest.raises(DataError, match="source"):
        m.layouts.example("edit", instr, tgt, {})


def test_ar_dual_guidance_with_image_scale_one_is_text_guidance(text):  # noqa: F811
    m = edit_model(text)
    src = torch.randint(0, 64, (2, 4, 4), generator=torch.Generator().manual_seed(0))
    plans = [m.layouts.decode_plan("edit", tx, {"source": src}) for tx in (text.encode("blue circle"), [])]
    null = m.layouts.decode_plan("edit", [], {"source": NULL_CLIP})
    n = 2
    prefix = torch.tensor([p.prefix for p in (*plans, null) for _ in range(n)])
    greedy = SamplingConfig(temperature=0.0)
    dual = dual_guided_decode(m.decoder(), prefix, plans[0].ranges, 3.0, 1.0, greedy, True, 0)
    single = sample_plans(m.decoder(), prefix[:n], plans[0].ranges, SamplingConfig(temperature=0.0, guidance=3.0),
                          uncond_prefix=prefix[n: 2 * n])
    assert torch.equal(dual, single)
    assert not torch.equal(dual_guided_decode(m.decoder(), prefix, plans[0].ranges, 3.0, 3.0, greedy, True, 0), dual)


@pytest.fixture(scope="module")
def edits(tmp_path_factory):
    from duogen.data.edits import make_edits
    from duogen.data.shapes import WorldConfig

    out = tmp_path_factory.mktemp("edits") / "edits"
    make_edits(out, WorldConfig(n=40))
    return out


def losses(run):
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]


@pytest.mark.parametrize("paradigm", ["ar", "diffusion"])
def test_a_few_recipe_steps_lower_the_loss_and_the_result_edits(paradigm, edits, ar_dir, model, tmp_path):  # noqa: F811
    if paradigm == "ar":
        init = ar_dir
    else:
        init = tmp_path / "dit"
        model.save_pretrained(init)
    steps = 30 if paradigm == "ar" else 60
    out = train_ip2p(edits, tmp_path / "run", paradigm=paradigm, init_from=init, seed=0,
                     overrides=[f"train.steps={steps}", "train.batch_size=4", "train.lr=3e-3", "max_clips=4",
                                "train.log_every=1", "train.max_minutes=0", "train.warmup_steps=0"])
    ls = losses(tmp_path / "run")
    k = steps // 4
    factor = 0.7 if paradigm == "ar" else 0.85  # diffusion: one random (t, noise) per pair and step, a noisier loss
    assert np.mean(ls[-k:]) < factor * np.mean(ls[:k]), ls  # overfitting 4 pairs
    from duogen.bridges.generate import load_generator
    from duogen.data import load_dataset

    g = load_generator(out["final"])
    row = load_dataset(edits)["heldout"].with_format("numpy")[0]
    res = ip2p_edit(g, row["source"].astype(np.uint8), prompt=str(row["instruction"]), n=2,
                    **({"top_k": 8} if paradigm == "ar" else {"steps": 3}))
    assert res.videos.shape == (2, *row["source"].shape) and res.videos.dtype == np.uint8
    # `duogen edit`'s names: --instruction, --guidance, --image-guidance
    same = ip2p_edit(g, row["source"].astype(np.uint8), instruction=str(row["instruction"]), n=2, guidance=None,
                     image_guidance=1.5, **({"top_k": 8} if paradigm == "ar" else {"steps": 3}))
    assert np.array_equal(same.videos, res.videos)


def test_bad_input_is_a_clear_error(gen, edits, ar_dir, tmp_path):  # noqa: F811
    src = np.zeros((9, 32, 32, 3), np.uint8)
    with pytest.raises(ConfigError, match="train ip2p"):
        ip2p_edit(gen, src, prompt="make it blue")  # a text-to-video model
    with pytest.raises(ConfigError, match="mask"):
        ip2p_edit(gen, src, prompt="make it blue", mask=np.ones((9, 32, 32), bool))
    with pytest.raises(ConfigError, match="instruction"):
        ip2p_edit(gen, src, prompt=None)
    with pytest.raises(ConfigError, match="not 'diffusion'"):
        train_ip2p(edits, tmp_path / "r", paradigm="diffusion", init_from=ar_dir)
    with pytest.raises(ConfigError, match="paradigm"):
        train_ip2p(edits, tmp_path / "r", paradigm="gan", init_from=ar_dir)
    with pytest.raises(ConfigError, match="drop"):
        train_ip2p(edits, tmp_path / "r", paradigm="ar", init_from=ar_dir, overrides=["drop=0.5"])
