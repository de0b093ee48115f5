"""ControlNet and T2I-Adapter on the U-Net denoisers (image U-Net with folded frames, (2+1)D and 3D video U-Nets)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from duogen.data.conditions import edge_maps
from duogen.data.shapes import load_world_config, make_clip
from duogen.diffusion.control import ActiveControl, ControlConfig, Controlled, load_control, make_control, save_control
from duogen.diffusion.dit import DiT, DiTConfig
from duogen.diffusion.unet import UNet, UNetConfig
from duogen.diffusion.unet_control import UNetAdapter, UNetControlNet, to_latent_grid
from duogen.diffusion.video_unet import VideoUNet, VideoUNetConfig
from duogen.errors import CheckpointError, ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

CFG = load_world_config("tiny")  # 9 frames of 32 x 32 -> latents (4, 3, 8, 8)
SMALL = dict(in_channels=4, channels=16, channel_mult=[1, 2], num_res_blocks=1, attention_levels=[1], heads=2, context_dim=16)
BASES = {
    "unet2d": lambda: UNet(UNetConfig(frames=3, **SMALL)),
    "video-2+1d": lambda: VideoUNet(VideoUNetConfig(conv="2+1d", **SMALL)),
    "video-3d-joint": lambda: VideoUNet(VideoUNetConfig(conv="3d", positions=True, joint_attention="all", **SMALL)),
}
METHODS = ["controlnet", "t2i-adapter"]


def _base(name: str = "video-2+1d"):
    """A tiny U-Net with every weight perturbed, so no zero-init layer hides what a control does."""
    torch.manual_seed(0)
    net = BASES[name]()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
        net.backbone.conv_out.weight.normal_(0.0, 0.1)  # an output of about unit scale, like a trained denoiser's
    return net.requires_grad_(False).eval()



@pytest.mark.parametrize("name", list(BASES))
@pytest.mark.parametrize("method", METHODS)
def test_fresh_control_is_an_exact_no_op_and_scale_zero_after_training_too(name, method):
    base = _base(name)
    z, t, text, cond = _inputs()
    ctl = make_control(ControlConfig(method=method, enc_channels=8), base)
    assert isinstance(ctl, UNetControlNet if method == "controlnet" else UNetAdapter)
    check_exact_no_op_then_acts(base, ctl, z, t, text, cond)


def test_controlnet_copies_the_encoder_and_adds_only_to_skips_and_middle():
    base = _base()
    ctl = make_control(ControlConfig(method="controlnet"), base)
    bb = base.backbone
    for part in ("time_embed", "pooled_proj", "conv_in", "down", "mid"):
        a, b = getattr(ctl, part).state_dict(), getattr(bb, part).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    z, t, text, cond = _inputs()
    with torch.no_grad():
        res = ctl.residuals(z, t.float(), text, cond.repeat(2, 1, 1, 1, 1))
    assert sorted(res) == [("mid", 0)] + [("skip", j) for j in range(len(bb.down) + 1)]
    adapter = make_control(ControlConfig(method="t2i-adapter"), base)
    with torch.no_grad():
        res = adapter.residuals(z, t.float(), text, cond.repeat(2, 1, 1, 1, 1))
    # one residual per resolution, at the last down block of each level: (B, 16, 3, 8, 8) and (B, 32, 3, 4, 4)
    assert {k: tuple(v.shape) for k, v in res.items()} == {("down", 0): (2, 16, 3, 8, 8), ("down", 2): (2, 32, 3, 4, 4)}


def test_conditions_pool_the_frames_the_codec_folds_into_each_latent_frame():
    y = torch.arange(9.0).view(1, 1, 9, 1, 1).expand(1, 1, 9, 4, 4)  # frame k holds k
    g = to_latent_grid(y, (3, 2, 2))  # latent frame 0 <- frame 0, 1 <- frames 1..4, 2 <- frames 5..8
    assert g.shape == (1, 1, 3, 2, 2) and g[0, 0, :, 0, 0].tolist() == [0.0, 2.5, 6.5]


@pytest.mark.parametrize("name", ["unet2d", "video-2+1d"])
def test_frames_per_token_stacks_each_latent_frames_frames(name):
    """r = 4 (the codec's 1 + 4k grouping): still an exact no-op when fresh, and each frame of a group matters."""
    base = _base(name)
    z, t, text, cond = _inputs()
    ctl = make_control(ControlConfig(method="t2i-adapter", enc_channels=8, frames_per_token=4), base)
    with torch.no_grad():
        assert torch.equal(Controlled(base, [ActiveControl(ctl, cond, 1.0)])(z, t, text), base(z, t, text))
        _perturb(ctl)
        swapped = cond[:, :, [0, 2, 1, 3, 4, 5, 6, 7, 8]]  # two frames of latent frame 1's group exchanged
        a = Controlled(base, [ActiveControl(ctl, cond, 1.0)])(z, t, text)
        b = Controlled(base, [ActiveControl(ctl, swapped, 1.0)])(z, t, text)
    assert (a - b).abs().max() > 1e-4  # averaging the group would make these equal


@pytest.mark.parametrize("name", ["unet2d", "video-2+1d"])
@pytest.mark.parametrize("method", METHODS)
def test_gradients_reach_only_the_control(name, method):
    base = _base(name)
    z, t, text, cond = _inputs()
    ctl = make_control(ControlConfig(method=method, enc_channels=8), base)
    _perturb(ctl)  # past zero-init, so every control weight is on a live path
    Controlled(base, [ActiveControl(ctl, cond, 1.0)])(z, t, text).square().mean().backward()
    assert all(p.grad is None for p in base.parameters())
    dead = [n for n, p in ctl.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not dead, dead


@pytest.mark.parametrize("name, method, factor", [("video-2+1d", "controlnet", 15.0), ("unet2d", "controlnet", 3.0),
                                                  ("video-2+1d", "t2i-adapter", 1.6), ("unet2d", "t2i-adapter", 1.6)])
def test_overfit_one_latent_condition_pair(name, method, factor):
    """60 Adam steps on one (latent, condition) pair, base frozen: the epsilon loss drops by `factor`.

    ControlNet's copy reads z_t and can learn this eps outright (video U-Net 1.47 -> ~0.04 here; the image U-Net,
    its 3 latent frames folded into the 16-channel decoder's input, 1.35 -> ~0.33). The adapter reads only the
    condition: it removes part of the base's error but cannot see the noise (1.4 -> ~0.75, near var(eps) = 1).
    """
    base = _base(name)
    z0, _, text, cond = _inputs(batch=1)
    eps = torch.randn(z0.shape, generator=torch.Generator().manual_seed(2))
    ab = 0.5  # alpha_bar at the chosen step; z_t = sqrt(ab) z0 + sqrt(1 - ab) eps (DDPM Eq. 4)
    z_t = ab**0.5 * z0 + (1 - ab) ** 0.5 * eps
    t = torch.tensor([500])
    ctl = make_control(ControlConfig(method=method, enc_channels=16), base)
    model = Controlled(base, [ActiveControl(ctl, cond, 1.0)])
    opt = torch.optim.Adam(ctl.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        loss = (model(z_t, t, text) - eps).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / factor, (losses[0], losses[-1])


def test_two_controls_add_with_their_scales():
    """ControlNet on the mask plus T2I-Adapter on the edges, each at its own scale."""
    base = _base()
    z, t, text, mask = _inputs()
    edges = torch.from_numpy(edge_maps(make_clip(CFG, "train", 0).video)).float()[None, None]  # (1, 1, F, H, W)
    net = make_control(ControlConfig(method="controlnet", enc_channels=8), base)
    ada = make_control(ControlConfig(method="t2i-adapter", enc_channels=8), base)
    _perturb(net), _perturb(ada)
    run = lambda *acts: Controlled(base, list(acts))(z, t, text)  # noqa: E731
    with torch.no_grad():
        ref = base(z, t, text)
        both = run(ActiveControl(net, mask, 0.5), ActiveControl(ada, edges, 2.0))
        assert not torch.allclose(both, run(ActiveControl(net, mask, 0.5)), atol=1e-4)
        assert not torch.allclose(both, run(ActiveControl(ada, edges, 2.0)), atol=1e-4)
        # residuals add, each times its scale: 0.5 r + 0.5 r == 1.0 r (and 0.3 + 0.7), for either method
        for c, cnd in ((net, mask), (ada, edges)):
            half = run(ActiveControl(c, cnd, 0.5), ActiveControl(c, cnd, 0.5))
            assert torch.allclose(half, run(ActiveControl(c, cnd, 1.0)), atol=1e-5)
        mixed = run(ActiveControl(net, mask, 0.3), ActiveControl(ada, edges, 2.0), ActiveControl(net, mask, 0.7))
        assert torch.allclose(mixed, run(ActiveControl(net, mask, 1.0), ActiveControl(ada, edges, 2.0)), atol=1e-5)
        assert torch.equal(run(ActiveControl(net, mask, 0.0), ActiveControl(ada, edges, 0.0)), ref)
        # a batch-1 condition is shared by the batch; guidance's doubled batch repeats a batch-2 condition
        one = run(ActiveControl(net, mask, 1.0))
        assert torch.allclose(one, run(ActiveControl(net, mask.repeat(2, 1, 1, 1, 1), 1.0)), atol=1e-6)


def test_beta_limits_a_unet_control_to_the_first_steps():
    """beta 0.5 of 4 sampler steps: on at t = 900 and 600, the base's own output bit for bit at 300, per sample."""
    base = _base()
    z, _, text, cond = _inputs()
    ctl = make_control(ControlConfig(method="controlnet", enc_channels=8), base)
    _perturb(ctl)
    model = Controlled(base, [ActiveControl(ctl, cond, 1.0, beta=0.5)], timesteps=torch.tensor([900, 600, 300, 0]))
    t = torch.tensor([900, 300])  # one sample in the control's steps, one past them
    with torch.no_grad():
        out, ref = model(z, t, text), base(z, t, text)
    assert torch.equal(out[1], ref[1]) and (out[0] - ref[0]).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["unet2d", "video-3d-joint"])
@pytest.mark.parametrize("method", METHODS)
def test_save_load_round_trip_and_refusals(tmp_path, name, method):
    base = _base(name)
    z, t, text, cond = _inputs()
    ctl = make_control(ControlConfig(method=method, enc_channels=8), base)
    _perturb(ctl)
    path = save_control(ctl, tmp_path / "control.safetensors")
    back = load_control(path, base)
    assert back.config == ctl.config and back.config.base_arch.startswith(type(base).__name__)
    with torch.no_grad():
        a = Controlled(base, [ActiveControl(ctl, cond, 0.7)])(z, t, text)
        b = Controlled(base, [ActiveControl(back, cond, 0.7)])(z, t, text)
    assert torch.equal(a, b)
    dit = DiT(DiTConfig(in_channels=4, hidden=32, depth=2, heads=2, context_dim=16))
    wider = UNet(UNetConfig(frames=3, **{**SMALL, "channels": 32})) if name == "unet2d" else VideoUNet(VideoUNetConfig(**SMALL))
    for other in (dit, wider):
        for attempt in (lambda: load_control(path, other), lambda: Controlled(other, [ActiveControl(back, cond, 1.0)])):
            with pytest.raises(CheckpointError, match=f"trained for a {type(base).__name__}") as e:
                attempt()
            assert "\n" not in str(e.value) and f"this model's denoiser is a {type(other).__name__}" in str(e.value)
    dit_ctl = make_control(ControlConfig(method=method, blocks=1), dit)  # and a DiT's control on the U-Net
    with pytest.raises(CheckpointError, match="trained for a DiT; this model's denoiser is a"):
        load_control(save_control(dit_ctl, tmp_path / "dit.safetensors"), base)
    with pytest.raises(ConfigError, match="'gligen'"):  # ControlConfig's check, or on a U-Net: not GLIGEN
        make_control(ControlConfig(method="gligen"), base)


# ----------------------------------------------------------------------------- CLI on a tiny U-Net diffusion run

sys.path.insert(0, str(Path(__file__).parent))
from test_control import _inputs, _perturb, check_exact_no_op_then_acts  # noqa: E402  (shared with the DiT controls)
from _tiny_runs import cli  # noqa: E402
from test_control_train import _fixed_loss  # noqa: E402

UNET_TINY = ["denoiser=unet", "unet.channels=16", "unet.heads=2", "text.width=32", "text.layers=1", "text_vocab=300",
             "train.batch_size=4", "train.precision=fp32"]
TRAIN = ["train.batch_size=4", "train.precision=fp32", "train.max_minutes=0", "train.warmup_steps=0", "train.lr=3e-3"]


@pytest.fixture(scope="module")
def unet_run(tmp_path_factory):
    from duogen.data import make_dataset
    from test_latent_diffusion import make_codec

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("unetctl")
    make_dataset("shapes", root / "data", n=12, preset="tiny", seed=0)
    make_codec(0).save_pretrained(root / "codec")
    rc, _, err = cli("train", "diffusion", "--data", str(root / "data"), "--tokenizer", str(root / "codec"),
                     "--out", str(root / "unet"), *UNET_TINY, "train.steps=2")
    assert rc == 0, err
    # live weights everywhere, as after a long training (2 steps leave the zero-initialised output conv near 0)
    from duogen.io import load_state_dict, save_state_dict

    path = root / "unet" / "final" / "model.safetensors"
    g = torch.Generator().manual_seed(0)
    sd = load_state_dict(path)
    for k, v in sd.items():
        if k.startswith("denoiser.") and v.is_floating_point():
            sd[k] = v + 0.05 * torch.randn(v.shape, generator=g)
    sd["denoiser.backbone.conv_out.weight"] = 0.1 * torch.randn(sd["denoiser.backbone.conv_out.weight"].shape, generator=g)
    save_state_dict(sd, path)
    return root


def _train(root, out, *extra, method="controlnet", condition="boxes"):
    return cli("train", "control", "--model", str(root / "unet" / "final"), "--method", method, "--condition", condition,
               "--data", str(root / "data"), "--out", str(out), *TRAIN, *extra)


def test_train_controlnet_on_a_unet_lowers_the_loss(unet_run, tmp_path, method="controlnet", condition="boxes"):
    """20 steps on 4 clips; the loss is measured on those clips. (The adapter, blind to z_t, needs far more steps
    to move this loss: it is trained through the CLI in the resume test and overfit in the module tests above.)"""
    rc, s, err = _train(unet_run, tmp_path / "run", "train.steps=20", "max_clips=4", "enc_channels=16",
                        method=method, condition=condition)
    assert rc == 0, err
    final = tmp_path / "run" / "final"
    assert sorted(p.name for p in final.iterdir()) == ["control.json", "control.safetensors"]
    assert json.loads((final / "control.json").read_text())["method"] == method
    model = unet_run / "unet" / "final"
    off, on = _fixed_loss(unet_run, final, condition, False, model), _fixed_loss(unet_run, final, condition, True, model)
    assert on < 0.9 * off, (off, on)


def test_train_control_on_a_unet_resumes_exactly(unet_run, tmp_path):
    from duogen.io import load_state_dict

    common = ["train.steps=4", "train.ckpt_every=2", "train.keep_last=0", "max_clips=8", "enc_channels=8"]
    rc, _, err = _train(unet_run, tmp_path / "a", *common, method="t2i-adapter", condition="edges")
    assert rc == 0, err
    ck = sorted((tmp_path / "a" / "checkpoints").iterdir())[0]
    assert all(k.startswith("control.") for k in load_state_dict(ck / "model.safetensors"))  # only the control
    (tmp_path / "b" / "checkpoints").mkdir(parents=True)
    shutil.copytree(ck, tmp_path / "b" / "checkpoints" / ck.name)
    rc, s, err = _train(unet_run, tmp_path / "b", *common, "--resume", method="t2i-adapter", condition="edges")
    assert rc == 0 and s["steps"] == 4, err
    a = load_state_dict(tmp_path / "a" / "final" / "control.safetensors")
    b = load_state_dict(tmp_path / "b" / "final" / "control.safetensors")
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


def _gen(model, out, *extra):
    return cli("generate", "--model", str(model), "--prompt", "a red circle", "--steps", "3", "--save-latents",
               "--out", str(out), *extra)


def test_generate_with_two_unet_controls_and_refusals(unet_run, tmp_path):
    from duogen.data import load_dataset
    from duogen.data.conditions import BoxTrack, write_boxes
    from duogen.diffusion.latent import LatentDiffusionModel
    from duogen.io import load_state_dict

    model = unet_run / "unet" / "final"
    unet = LatentDiffusionModel.from_pretrained(model).denoiser
    row = load_dataset(unet_run / "data")["train"][0]
    boxes = write_boxes(tmp_path / "boxes.json", [BoxTrack("a red circle", np.asarray(b, np.float64)) for b in row["boxes"]])
    runs = {}
    for method in METHODS:
        torch.manual_seed(0)
        ctl = make_control(ControlConfig(method=method, enc_channels=8), unet)
        save_control(ctl, tmp_path / f"fresh-{method}" / "final" / "control.safetensors")
        _perturb(ctl, 0.05)  # a "trained" control: its zero convs are no longer zero
        save_control(ctl, tmp_path / method / "final" / "control.safetensors")
        runs[method] = tmp_path / method

    def latents(out, *extra):
        rc, _, err = _gen(model, tmp_path / out, *extra)
        assert rc == 0, err
        return load_state_dict(next((tmp_path / out).glob("*.safetensors")))["latents"]

    plain = latents("plain")
    fresh = [a for m in METHODS for a in ("--control", f"{tmp_path / f'fresh-{m}'}:0.7")]
    assert torch.equal(latents("fresh", *fresh, "--boxes", str(boxes)), plain)
    both = latents("both", "--control", f"{runs['controlnet']}:0.5", "--control", f"{runs['t2i-adapter']}:1.5",
                   "--boxes", str(boxes))
    one = latents("one", "--control", f"{runs['controlnet']}:0.5", "--boxes", str(boxes))
    assert not torch.equal(both, plain) and not torch.equal(both, one)
    # the U-Net's control on the shipped reference DiT, and a DiT's control on the U-Net: one line, exit 2
    import duogen

    ref_dit = Path(duogen.__file__).parent / "assets" / "reference" / "dit"
    dit_ctl = make_control(ControlConfig(method="t2i-adapter"), LatentDiffusionModel.from_pretrained(ref_dit).denoiser)
    save_control(dit_ctl, tmp_path / "dit-ctl" / "final" / "control.safetensors")
    for k, (m, run, says) in enumerate([(ref_dit, runs["controlnet"], "trained for a VideoUNet"),
                                        (model, tmp_path / "dit-ctl", "trained for a DiT")]):
        rc, _, err = _gen(m, tmp_path / f"bad{k}", "--control", str(run), "--boxes", str(boxes))
        assert rc == 2 and err.count("\n") == 1 and says in err, (k, err)


def test_train_control_refuses_gligen_on_a_unet(unet_run, tmp_path):
    rc, _, err = _train(unet_run, tmp_path / "g", "train.steps=1", method="gligen")
    assert rc == 2 and err.count("\n") == 1 and "gligen attaches to a DiT" in err, err
    assert not (tmp_path / "g" / "final").exists()
