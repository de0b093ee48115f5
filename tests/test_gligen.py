"""GLIGEN box grounding for the DiT (diffusion/gligen.py): no-op at init, gradients, overfitting, scheduled
sampling (beta), save / load, boxes JSON -> grounding tokens, and `train control --method gligen` + generate."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import duogen
from duogen.diffusion.blocks import TextCond
from duogen.diffusion.control import ActiveControl, ControlConfig, Controlled, load_control, make_control, save_control
from duogen.diffusion.dit import DiT, DiTConfig
from duogen.diffusion.gligen import Grounding, first_steps
from duogen.errors import CheckpointError, ConfigError, DataError

sys.path.insert(0, str(Path(__file__).parent))
from _tiny_runs import cli, train_tiny_bases  # noqa: E402
from test_control import _base, _perturb, overfit_losses  # noqa: E402  (the tiny perturbed DiT, shared)

pytestmark = pytest.mark.usefixtures("one_thread")
REF_DIT = Path(duogen.__file__).parent / "assets" / "reference" / "dit"


def _inputs(batch: int = 2):
    g = torch.Generator().manual_seed(1)
    z = torch.randn(batch, 4, 3, 8, 8, generator=g)  # (B, C, f, h, w)
    t = torch.tensor([100, 700][:batch])
    text = TextCond(torch.randn(batch, 5, 16, generator=g), torch.ones(batch, 5, dtype=torch.bool),
                    torch.randn(batch, 16, generator=g))
    boxes = torch.tensor([[0.1, 0.1, 0.4, 0.5], [0.5, 0.4, 0.9, 0.9]])[:, None].repeat(1, 9, 1)  # (N=2, F=9, 4)
    boxes[0] += torch.linspace(0, 0.1, 9)[:, None]  # the first object moves right
    valid = torch.ones(2, 9, dtype=torch.bool)
    valid[1, 7:] = False  # the second leaves before the end (null features there)
    ground = Grounding(boxes[None], torch.randn(1, 2, 16, generator=g), valid[None])  # batch 1: shared
    return z, t, text, ground


def test_fresh_gligen_is_a_bit_equal_no_op_and_scale_zero_too():
    base = _base()
    z, t, text, ground = _inputs()
    ctl = make_control(ControlConfig(method="gligen", blocks=3, gate_gain=10.0), base)  # tanh(10 * 0) = 0 too
    with torch.no_grad():
        ref, ref_notext = base(z, t, text), base(z, t, None)
        assert torch.equal(Controlled(base, [ActiveControl(ctl, ground, 1.0)])(z, t, text), ref)
        assert torch.equal(Controlled(base, [ActiveControl(ctl, ground, 2.0)])(z, t, None), ref_notext)
        _perturb(ctl)
        moved = Controlled(base, [ActiveControl(ctl, ground, 1.0)])(z, t, text)
        assert (moved - ref).abs().max() > 1e-3
        assert (Controlled(base, [ActiveControl(ctl, ground, 1.0)])(z, t, None) - ref_notext).abs().max() > 1e-3
        assert torch.equal(Controlled(base, [ActiveControl(ctl, ground, 0.0)])(z, t, text), ref)
        assert torch.equal(base(z, t, text), ref)  # hooks are removed after each call
        # batch 1 is shared by the batch; a batch-2 grounding equals two copies of it
        two = Controlled(base, [ActiveControl(ctl, ground.repeat(2), 1.0)])(z, t, text)
        assert torch.allclose(moved, two, atol=1e-6)


def test_the_gated_layer_sits_between_self_and_cross_attention():
    """A hooked block computes x = x + SA; x = x + GSA(x, h^e); x = x + cross(x); x = x + MLP (GLIGEN Fig. 3)."""
    from duogen.diffusion.blocks import modulate

    base = _base()
    z, t, text, ground = _inputs()
    ctl = make_control(ControlConfig(method="gligen", blocks=3), base)
    _perturb(ctl)
    blk, layer = base.blocks[1], ctl.layers[1]
    g = torch.Generator().manual_seed(5)
    x, c = torch.randn(2, 48, 32, generator=g), torch.randn(2, 32, generator=g)
    with torch.no_grad():
        h = ctl.tokens(ground.repeat(2))  # (2, N*F, D)
        shift1, scale1, gate1, shift2, scale2, gate2 = blk.ada(torch.nn.functional.silu(c)).chunk(6, -1)
        want = x + gate1[:, None] * blk.attn(modulate(blk.norm1(x), shift1, scale1))
        want = want + layer(want, h, 0.5)
        want = want + blk.cross(blk.norm_c(want), text.tokens, text.mask)
        want = want + gate2[:, None] * blk.mlp(modulate(blk.norm2(want), shift2, scale2))
        handles = ctl.install(base, ground.repeat(2), 0.5)
        try:
            got = blk(x, c, text, (3, 4, 4))
        finally:
            for hd in handles:
                hd.remove()
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, blk(x, c, text, (3, 4, 4)), atol=1e-3)


def test_gradients_reach_only_the_gligen_parameters():
    base = _base()
    z, t, text, ground = _inputs()
    ctl = make_control(ControlConfig(method="gligen", blocks=2), base)
    _perturb(ctl)  # gammas off 0, so every GLIGEN weight is on a live path
    Controlled(base, [ActiveControl(ctl, ground, 1.0)])(z, t, text).square().mean().backward()
    assert all(p.grad is None for p in base.parameters())
    zero = [n for n, p in ctl.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not zero, zero


def test_fresh_gligen_learns_through_its_gates():
    """At init only the gates get a gradient (tanh(0) = 0 cuts every other path), as in the paper."""
    base = _base()
    z, t, text, ground = _inputs()
    ctl = make_control(ControlConfig(method="gligen", blocks=2), base)
    Controlled(base, [ActiveControl(ctl, ground, 1.0)])(z, t, text).square().mean().backward()
    live = {n for n, p in ctl.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert live and all("gamma" in n for n in live), live


def test_overfit_one_latent_boxes_pair():
    """60 Adam steps on one (latent, boxes) pair with the base frozen: the epsilon loss drops at least 10x
    (the gated layers read the visual tokens, so they can learn this eps outright)."""
    base = _base()
    z0, _, text, ground = _inputs(batch=1)
    eps = torch.randn(z0.shape, generator=torch.Generator().manual_seed(2))
    z_t = 0.5**0.5 * z0 + 0.5**0.5 * eps  # alpha_bar = 0.5 (DDPM Eq. 4)
    t = torch.tensor([500])
    ctl = make_control(ControlConfig(method="gligen", blocks=3), base)
    losses = overfit_losses(Controlled(base, [ActiveControl(ctl, ground, 1.0)]), ctl, z_t, t, text, eps)
    assert losses[-1] < losses[0] / 10, (losses[0], losses[-1])


def test_first_steps_counts_the_sampler_steps():
    from duogen.diffusion.schedulers import make_timesteps

    for spacing in ("trailing", "linspace", "leading"):
        ts = make_timesteps(1000, 10, spacing)
        assert first_steps(ts, ts, 0.3).tolist() == [True] * 3 + [False] * 7
        assert first_steps(ts, ts, 0.25).sum() == 3  # ceil(2.5)
        assert first_steps(ts, ts, 1.0).all() and first_steps(ts, ts, 0.01).sum() == 1


@pytest.mark.parametrize("sampler", ["ddim", "dpm_solver"])
def test_beta_grounds_only_the_first_steps_then_the_base_bit_for_bit(sampler):
    """beta = 0.3 over 10 steps with CFG: the denoiser's outputs at steps 3..9 are the uncontrolled DiT's, exactly."""
    from duogen.diffusion.sampling import sample
    from duogen.diffusion.schedulers import make_scheduler, make_timesteps
    from duogen.diffusion.schedules import NoiseSchedule

    base = _base()
    z, _, text, ground = _inputs()
    ctl = make_control(ControlConfig(method="gligen", blocks=3), base)
    _perturb(ctl)
    with pytest.raises(ConfigError, match="timesteps"):
        Controlled(base, [ActiveControl(ctl, ground, 1.0, beta=0.3)])
    with pytest.raises(ConfigError, match=r"\(0, 1\]"):
        Controlled(base, [ActiveControl(ctl, ground, 1.0, beta=0.0)], timesteps=make_timesteps(1000, 10))
    model = Controlled(base, [ActiveControl(ctl, ground, 1.0, beta=0.3)], timesteps=make_timesteps(1000, 10))
    calls = []

    def den(x, t, c):
        out = model(x, t, c)
        calls.append(torch.equal(out, base(x, t, c)))
        return out

    uncond = TextCond(torch.zeros(1, 5, 16), torch.ones(1, 5, dtype=torch.bool), torch.zeros(1, 16))
    sched = make_scheduler(sampler, NoiseSchedule.make("cosine", num_train_timesteps=1000), "v")
    sample(den, sched, z, text, steps=10, guidance=3.0, uncond=uncond)
    assert calls == [False] * 3 + [True] * 7


def test_save_load_round_trip_and_another_base_refused(tmp_path):
    from duogen.bridges.control import load_control_run

    base = _base()
    z, t, text, ground = _inputs()
    ctl = make_control(ControlConfig(method="gligen", blocks=2, fourier_freqs=4, gate_gain=3.0), base)
    _perturb(ctl)
    path = save_control(ctl, tmp_path / "run" / "control.safetensors")
    back = load_control(path, base)
    assert back.config == ctl.config and back.config.method == "gligen"
    with torch.no_grad():
        a = Controlled(base, [ActiveControl(ctl, ground, 0.7)])(z, t, text)
        b = Controlled(base, [ActiveControl(back, ground, 0.7)])(z, t, text)
    assert torch.equal(a, b)
    other = DiT(DiTConfig(in_channels=4, hidden=64, depth=3, heads=2, context_dim=16, patch_size=2))
    with pytest.raises(CheckpointError, match="width 32 and depth 3; this model has 64"):
        load_control(path, other)
    same_shape = _base()
    with torch.no_grad():
        same_shape.blocks[0].ada.bias.add_(0.01)
    with pytest.raises(CheckpointError, match="another base model"):
        load_control_run(tmp_path / "run", same_shape)
    with pytest.raises(DataError, match="Grounding"):
        Controlled(base, [ActiveControl(ctl, torch.zeros(1, 1, 9, 32, 32), 1.0)])


@pytest.fixture(scope="module")
def ref_model():
    from duogen.diffusion.latent import LatentDiffusionModel

    return LatentDiffusionModel.from_pretrained(REF_DIT).eval()


def test_condition_from_a_boxes_json_through_condition_for(ref_model, tmp_path):
    from duogen.bridges.control import collate_conditions, condition_for, read_condition_file
    from duogen.data.conditions import BoxTrack, write_boxes

    F, S = 9, 32
    path = write_boxes(tmp_path / "b.json", [BoxTrack("a red circle", np.array([[2, 3, 12, 14]] * F)),
                                             BoxTrack("a blue square", np.array([[16, 16, 30, 28]] * F))])
    ctl = make_control(ControlConfig(method="gligen", blocks=6), ref_model.denoiser, ref_model.text_encoder)
    g = condition_for(ctl, "boxes", frames=F, size=S, **read_condition_file("boxes", path, F, S))
    assert isinstance(g, Grounding) and g.boxes.shape == (1, 2, F, 4) and g.valid.all()
    assert torch.allclose(g.boxes[0, 1, 0], torch.tensor([16, 16, 30, 28]) / 32.0)
    with torch.no_grad():
        want = ref_model.text_encoder.encode(["a blue square"]).pooled[0]
    assert torch.allclose(g.phrases[0, 1], want, atol=1e-5)
    one = condition_for(ctl, "boxes", frames=F, size=S, tracks=[BoxTrack("a red circle", np.array([[2, 3, 12, 14]] * F))])
    batch = collate_conditions(ctl, [one, g])
    assert batch.boxes.shape == (2, 2, F, 4) and not batch.valid[0, 1].any() and batch.valid[1].all()
    assert torch.equal(batch.phrases[0, 0], g.phrases[0, 0])  # the same phrase, the same embedding
    with pytest.raises(ConfigError, match="boxes"):
        condition_for(ctl, "mask", frames=F, size=S, video=np.zeros((F, S, S, 3), np.uint8))
    with pytest.raises(DataError, match="frames"):
        condition_for(ctl, "boxes", frames=F, size=S, tracks=[BoxTrack("a", np.array([[2, 3, 12, 14]] * 4))])
    bare = make_control(ControlConfig(method="gligen", blocks=1), ref_model.denoiser)
    with pytest.raises(ConfigError, match="text encoder"):
        condition_for(bare, "boxes", frames=F, size=S, tracks=[BoxTrack("a", np.array([[2, 3, 12, 14]] * F))])
    # the grounding runs through the reference sampler (CFG doubles the batch); fresh, the samples are bit-equal
    base = ref_model.denoiser
    go = lambda: ref_model.sample_latents(["a red circle"], n=2, seed=3, steps=3, guidance=3.0)  # noqa: E731
    ref = go()
    try:
        ref_model.denoiser = Controlled(base, [ActiveControl(ctl, g, 1.0)])
        assert torch.equal(go(), ref)
        _perturb(ctl)
        assert not torch.allclose(go(), ref, atol=1e-3)
    finally:
        ref_model.denoiser = base


# ----------------------------------------------------------------------------- CLI: train control + generate

TRAIN = ["train.batch_size=4", "train.precision=fp32", "train.max_minutes=0", "train.warmup_steps=0", "train.lr=3e-3"]


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    torch.set_num_threads(1)
    return train_tiny_bases(tmp_path_factory.mktemp("gligen"))


def _train(bases, out, *extra, condition="boxes"):
    return cli("train", "control", "--model", str(bases / "dit" / "final"), "--method", "gligen", "--condition",
               condition, "--data", str(bases / "data"), "--out", str(out), *TRAIN, *extra)


def _gen(bases, out, *extra):
    return cli("generate", "--model", str(bases / "dit" / "final"), "--prompt", "a red circle", "--steps", "4",
               "--save-latents", "--out", str(out), *extra)


def _latents(d):
    from duogen.io import load_state_dict

    return load_state_dict(next(Path(d).glob("*.safetensors")))["latents"]


def test_cli_train_gligen_then_generate_with_boxes(bases, tmp_path):
    from duogen.data import load_dataset
    from duogen.data.conditions import BoxTrack, write_boxes
    from duogen.io import load_state_dict

    rc, s, err = _train(bases, tmp_path / "run", "train.steps=4", "max_clips=4")
    assert rc == 0, err
    final = tmp_path / "run" / "final"
    assert sorted(p.name for p in final.iterdir()) == ["control.json", "control.safetensors"]
    conf = json.loads((final / "control.json").read_text())
    assert (conf["method"], conf["condition"], conf["blocks"]) == ("gligen", "boxes", 2)  # every block of the base
    sd = load_state_dict(final / "control.safetensors")
    assert all(k.startswith(("tokens.", "layers.")) for k in sd) and float(sd["layers.0.gamma_attn"]) != 0.0
    assert len(s["gates"]) == 4 and all(-1 < g < 1 for g in s["gates"]) and any(s["gates"])
    row = load_dataset(bases / "data")["train"][0]
    boxes = write_boxes(tmp_path / "boxes.json", [BoxTrack(f"a {a['color']} {a['shape']}", np.asarray(b, np.float64))
                                                  for a, b in zip(row["attributes"], row["boxes"])])
    rc, _, err = _gen(bases, tmp_path / "plain")
    assert rc == 0, err
    outs = {}
    for name, extra in (("on", []), ("beta", ["--control-beta", "0.5"]), ("off", ["--control-beta", "0.5"])):
        spec = f"{tmp_path / 'run'}:{0 if name == 'off' else 1}"
        rc, _, err = _gen(bases, tmp_path / name, "--control", spec, "--boxes", str(boxes), *extra)
        assert rc == 0, err
        outs[name] = _latents(tmp_path / name)
    plain = _latents(tmp_path / "plain")
    assert torch.equal(outs["off"], plain)  # scale 0
    assert not torch.equal(outs["on"], plain) and not torch.equal(outs["beta"], plain)
    assert not torch.equal(outs["on"], outs["beta"])
    # bad input: one line, exit 2
    for k, extra in enumerate([["--control-beta", "1.5", "--control", str(tmp_path / "run"), "--boxes", str(boxes)],
                               ["--control-beta", "0.3", "--boxes", str(boxes)]]):
        rc, _, err = _gen(bases, tmp_path / f"bad{k}", *extra)
        assert rc == 2 and err.count("\n") == 1 and "--control" in err, err
    for condition in ("mask", "edges"):
        rc, _, err = _train(bases, tmp_path / f"bad_{condition}", "train.steps=1", condition=condition)
        assert rc == 2 and err.count("\n") == 1 and "--condition boxes" in err, err


def test_cli_gligen_resume_is_exact(bases, tmp_path):
    common = ["train.steps=4", "train.ckpt_every=2", "train.keep_last=0", "max_clips=8", "train.log_every=1"]
    rc, _, err = _train(bases, tmp_path / "a", *common)
    assert rc == 0, err
    ck = sorted((tmp_path / "a" / "checkpoints").iterdir())[0]
    (tmp_path / "b" / "checkpoints").mkdir(parents=True)
    shutil.copytree(ck, tmp_path / "b" / "checkpoints" / ck.name)
    rc, s, err = _train(bases, tmp_path / "b", *common, "--resume")
    assert rc == 0 and s["steps"] == 4, err
    from duogen.io import load_state_dict

    a, b = (load_state_dict(tmp_path / x / "final" / "control.safetensors") for x in ("a", "b"))
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
