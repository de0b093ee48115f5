"""Control conditions (boxes JSON, masks, edges) and the DiT's ControlNet / T2I-Adapter."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage

from duogen.data.conditions import (
    BoxTrack,
    check_condition,
    clip_object_masks,
    clip_tracks,
    edge_maps,
    mask_from_video,
    parse_boxes,
    rasterize_boxes,
    rasterize_paths,
    read_boxes,
    tracks_to_json,
    write_boxes,
)
from duogen.data.shapes import load_world_config, make_clip
from duogen.diffusion.blocks import TextCond
from duogen.diffusion.control import (
    ActiveControl,
    ControlConfig,
    Controlled,
    load_control,
    make_control,
    save_control,
)
from duogen.diffusion.dit import DiT, DiTConfig
from duogen.errors import CheckpointError, DataError

pytestmark = pytest.mark.usefixtures("one_thread")

CFG = load_world_config("tiny")  # 9 frames of 32 x 32
CLIPS = [("train", i) for i in (0, 1, 2, 7, 8, 13)]  # 7, 8 and 13 hold two objects (checked below)


# ----------------------------------------------------------------------------- conditions


def test_world_masks_match_the_rendered_pixels():
    n_two = 0
    for split, i in CLIPS:
        clip = make_clip(CFG, split, i)
        m = clip_object_masks(CFG, split, i)  # (n, F, H, W)
        assert m.shape == (len(clip.attributes), CFG.frames, CFG.size, CFG.size)
        assert np.array_equal(m.any(0), clip.video.max(-1) > 0)
        assert not (m.sum(0) > 1).any()  # visible masks do not overlap
        n_two += len(m) == 2
    assert n_two >= 1


def test_boxes_json_round_trip(tmp_path):
    clip = make_clip(CFG, "train", 0)
    tracks = clip_tracks(clip)
    path = write_boxes(tmp_path / "boxes.json", tracks)
    obj = json.loads(path.read_text())
    assert obj[0]["phrase"] == f"a {clip.attributes[0]['color']} {clip.attributes[0]['shape']}"
    assert len(obj[0]["boxes"]) == CFG.frames and all(isinstance(v, int) for v in obj[0]["boxes"][0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        back = read_boxes(path, CFG.frames, CFG.size)
    assert [t.phrase for t in back] == [t.phrase for t in tracks]
    for a, b in zip(back, tracks):
        assert np.array_equal(a.boxes, b.boxes)


def _entry(boxes, phrase="a red circle"):
    return [{"phrase": phrase, "boxes": boxes}]


GOOD = [[2, 3, 12, 14]] * 9


@pytest.mark.parametrize(
    "obj, says",
    [
        ({"phrase": "x", "boxes": GOOD}, "non-empty JSON list"),
        ([], "non-empty JSON list"),
        ([{"boxes": GOOD}], "exactly the keys"),
        ([{"phrase": "x", "boxes": GOOD, "extra": 1}], "exactly the keys"),
        (_entry(GOOD, phrase=""), "non-empty string"),
        (_entry([[2, 3, 12]] * 9), "number lists"),
        (_entry([[2, 3, 12, "14"]] * 9), "number lists"),
        (_entry([[2, 3, 12, True]] * 9), "number lists"),
        (_entry(GOOD[:8]), "8 boxes for a 9-frame clip"),
        (_entry(GOOD + [[2, 3, 12, 14]]), "10 boxes for a 9-frame clip"),
        (_entry([[12, 3, 2, 14]] * 9), "empty or inverted"),
        (_entry(GOOD[:4] + [[40, 3, 50, 14]] + GOOD[5:]), "frame 4: box [40, 3, 50, 14] lies wholly outside the 32x32 frame"),
    ],
)
def test_bad_boxes_are_one_line_data_errors(obj, says):
    with pytest.raises(DataError) as e:
        parse_boxes(obj, CFG.frames, CFG.size)
    assert says in str(e.value) and "\n" not in str(e.value)


def test_bad_boxes_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_boxes(tmp_path / "missing.json", 9, 32)
    bad = tmp_path / "bad.json"
    bad.write_text("[{")
    with pytest.raises(DataError, match="not valid JSON"):
        read_boxes(bad, 9, 32)


def test_partly_outside_boxes_are_clipped_with_a_warning():
    obj = _entry([[-4, 3, 12, 40]] + GOOD[1:])
    with pytest.warns(UserWarning, match="1 box\\(es\\) reach outside the 32x32 frame .*clipped"):
        (t,) = parse_boxes(obj, CFG.frames, CFG.size)
    assert t.boxes[0].tolist() == [0, 3, 12, 32] and t.boxes[1].tolist() == GOOD[1]


def test_rasterised_boxes_cover_the_object_masks():
    for split, i in CLIPS:
        clip = make_clip(CFG, split, i)
        boxes = rasterize_boxes(clip_tracks(clip), CFG.frames, CFG.size)  # (n, F, H, W)
        masks = clip_object_masks(CFG, split, i)
        assert not (masks & ~boxes).any()
        b = clip.boxes
        assert np.array_equal(boxes.sum((2, 3)), (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1]))  # exactly the box
    t = BoxTrack("a box", np.array([[1.0, 2.0, 3.5, 4.0]] * 2))  # fractional edge: pixel 3 (center 3.5) is in
    r = rasterize_boxes([t], 2, 8)[0, 0]
    assert r[2:4, 1:4].all() and r.sum() == 6


def test_motion_paths_follow_the_box_centers():
    for split, i in CLIPS:
        clip = make_clip(CFG, split, i)
        tracks = clip_tracks(clip)
        paths = rasterize_paths(tracks, CFG.frames, CFG.size, radius=1)  # (n, F, H, W)
        boxes = rasterize_boxes(tracks, CFG.frames, CFG.size)
        assert not (paths & ~boxes).any() and (paths.sum((2, 3)) == 9).all()  # a 3x3 square inside each box
        for k in range(len(tracks)):
            cx = np.array([np.nonzero(paths[k, f].any(0))[0].mean() for f in range(CFG.frames)])
            cy = np.array([np.nonzero(paths[k, f].any(1))[0].mean() for f in range(CFG.frames)])
            b = clip.boxes[k]
            assert np.abs(cx - (b[:, 0] + b[:, 2] - 1) / 2).max() <= 0.5 and np.abs(cy - (b[:, 1] + b[:, 3] - 1) / 2).max() <= 0.5
    edge = BoxTrack("at the corner", np.array([[0.0, 0.0, 1.0, 1.0]]))  # center pixel (0, 0)
    assert rasterize_paths([edge], 1, 8, radius=1)[0, 0].sum() == 4  # clipped by the frame


def test_edge_maps_lie_on_the_object_border():
    eight = np.ones((1, 3, 3), bool)
    for split, i in CLIPS:
        clip = make_clip(CFG, split, i)
        edges = edge_maps(clip.video)  # (F, H, W)
        assert np.array_equal(edges, edge_maps(clip.video.copy()))  # deterministic
        masks = clip_object_masks(CFG, split, i)  # (n, F, H, W)
        fg = masks.any(0)
        label = np.pad((masks * np.arange(1, len(masks) + 1)[:, None, None, None]).sum(0), ((0, 0), (1, 1), (1, 1)))
        # within 1 px of a change of label (background outside the frame): where the object borders lie
        band = (ndimage.maximum_filter(label, footprint=eight) != ndimage.minimum_filter(label, footprint=eight))[:, 1:-1, 1:-1]
        assert edges.any() and not (edges & ~band).any()
        inner = fg & ~ndimage.binary_erosion(fg, eight, border_value=0)  # the object's own border pixels
        assert (edges & inner).sum() >= 0.9 * inner.sum()  # Sobel is 0 inside a 1-px stroke (both sides cancel)
    assert not edge_maps(np.zeros((2, 8, 8, 3), np.uint8)).any()
    with pytest.raises(DataError, match="uint8 clip"):
        edge_maps(np.zeros((2, 8, 8), np.uint8))


def test_mask_video_and_condition_size_checks():
    v = np.zeros((9, 32, 32, 3), np.uint8)
    v[:, 4:8, 4:8] = 255
    m = mask_from_video(v)
    assert m.sum() == 9 * 16 and np.array_equal(check_condition(m, 9, 32), m)
    with pytest.raises(DataError, match=r"\(8, 32, 32\) .* does not match the model's \(9, 32, 32\)"):
        check_condition(m[:8], 9, 32)
    with pytest.raises(DataError, match="does not match"):
        check_condition(np.zeros((9, 16, 16), bool), 9, 32)
    with pytest.raises(DataError, match="uint8"):
        mask_from_video(v.astype(np.float32))


# ----------------------------------------------------------------------------- ControlNet / T2I-Adapter


def _base() -> DiT:
    """A tiny DiT with every weight perturbed, so no zero-init layer hides what a control does."""
    torch.manual_seed(0)
    dit = DiT(DiTConfig(in_channels=4, hidden=32, depth=3, heads=2, context_dim=16, patch_size=2))
    with torch.no_grad():
        for p in dit.parameters():
            p.add_(0.05 * torch.randn_like(p))
        dit.proj_out.weight.normal_(0.0, 0.3)  # an output of unit scale, like a trained denoiser's
    return dit.requires_grad_(False).eval()


def _inputs(batch: int = 2):
    g = torch.Generator().manual_seed(1)
    z = torch.randn(batch, 4, 3, 8, 8, generator=g)  # (B, C, f, h, w)
    t = torch.tensor([100, 700][:batch])
    text = TextCond(torch.randn(batch, 5, 16, generator=g), torch.ones(batch, 5, dtype=torch.bool), torch.randn(batch, 16, generator=g))
    mask = clip_object_masks(CFG, "train", 0).any(0)  # (F, H, W)
    cond = torch.from_numpy(mask).float()[None, None]  # (1, 1, F, H, W)
    return z, t, text, cond


def _perturb(module: torch.nn.Module, s: float = 0.1) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(s * torch.randn_like(p))


def check_exact_no_op_then_acts(base, ctl, z, t, text, cond) -> None:
    """A fresh `ctl` leaves `base` bit for bit; perturbed, it acts at scale 1 and not at scale 0; hooks go away."""
    with torch.no_grad():
        ref = base(z, t, text)
        assert torch.equal(Controlled(base, [ActiveControl(ctl, cond, 1.0)])(z, t, text), ref)
        _perturb(ctl)
        moved = Controlled(base, [ActiveControl(ctl, cond, 1.0)])(z, t, text)
        assert (moved - ref).abs().max() > 1e-3  # the perturbed control does act
        assert torch.equal(Controlled(base, [ActiveControl(ctl, cond, 0.0)])(z, t, text), ref)
        assert torch.equal(base(z, t, text), ref)  # hooks are removed after each call


METHODS = ["controlnet", "t2i-adapter"]


@pytest.mark.parametrize("method", METHODS)
def test_fresh_control_is_an_exact_no_op_and_scale_zero_after_training_too(method):
    base = _base()
    z, t, text, cond = _inputs()
    check_exact_no_op_then_acts(base, make_control(ControlConfig(method=method, blocks=2), base), z, t, text, cond)


def test_frames_per_token_groups_frames_like_the_codec():
    """r = 4: frame 0 fills latent frame 0's group, then frames 1-4 and 5-8 (a 1 + 4k codec's grouping)."""
    from duogen.diffusion.control import ConditionEncoder

    enc = ConditionEncoder(1, 4, 8, frames_per_token=4)
    cond = torch.arange(9.0).view(1, 1, 9, 1, 1).expand(1, 1, 9, 2, 2)  # frame index as its value
    g = enc.group_frames(cond, 3)  # (1, 4, 3, 2, 2)
    assert g.shape == (1, 4, 3, 2, 2)
    assert g[0, :, :, 0, 0].T.tolist() == [[0, 0, 0, 0], [1, 2, 3, 4], [5, 6, 7, 8]]
    with pytest.raises(DataError):
        enc.group_frames(cond[:, :, :8], 3)
    base = _base()
    z, t, text, cond = _inputs()
    ctl = make_control(ControlConfig(method="controlnet", blocks=2, frames_per_token=4), base)
    with torch.no_grad():
        assert torch.equal(Controlled(base, [ActiveControl(ctl, cond, 1.0)])(z, t, text), base(z, t, text))
        _perturb(ctl)
        swapped = cond[:, :, [0, 2, 1, 3, 4, 5, 6, 7, 8]]  # two frames of one latent frame's group exchanged
        a = Controlled(base, [ActiveControl(ctl, cond, 1.0)])(z, t, text)
        b = Controlled(base, [ActiveControl(ctl, swapped, 1.0)])(z, t, text)
        assert (a - b).abs().max() > 1e-4  # each frame of the group reaches the tokens, not just their mean


def test_several_controls_add_with_their_scales():
    base = _base()
    z, t, text, cond = _inputs()
    a = make_control(ControlConfig(method="t2i-adapter", blocks=1), base)
    b = make_control(ControlConfig(method="t2i-adapter", blocks=1), base)
    _perturb(a), _perturb(b)
    run = lambda *acts: Controlled(base, list(acts))(z, t, text)  # noqa: E731
    with torch.no_grad():
        ref = base(z, t, text)
        both = run(ActiveControl(a, cond, 0.5), ActiveControl(b, 1.0 - cond, 2.0))
        assert not torch.allclose(both, run(ActiveControl(a, cond, 0.5)), atol=1e-4)
        # the adapter's residual is linear in its scale (the heads are linear): 0.5 a + 0.5 a == 1.0 a
        assert torch.allclose(run(ActiveControl(a, cond, 0.5), ActiveControl(a, cond, 0.5)), run(ActiveControl(a, cond, 1.0)), atol=1e-5)
        assert torch.equal(run(ActiveControl(a, cond, 0.0), ActiveControl(b, cond, 0.0)), ref)
        # a batch-1 condition is shared by a batch of 2, and CFG's doubled batch repeats a batch-2 condition
        one = run(ActiveControl(a, cond, 1.0))
        two = run(ActiveControl(a, cond.repeat(2, 1, 1, 1, 1), 1.0))
        assert torch.allclose(one, two, atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_gradients_reach_only_the_control(method):
    base = _base()
    z, t, text, cond = _inputs()
    ctl = make_control(ControlConfig(method=method, blocks=2), base)
    _perturb(ctl)  # past zero-init, so every control weight is on a live path
    Controlled(base, [ActiveControl(ctl, cond, 1.0)])(z, t, text).square().mean().backward()
    assert all(p.grad is None for p in base.parameters())
    grads = {n: p.grad for n, p in ctl.named_parameters()}
    assert all(g is not None for g in grads.values())
    assert all(g.abs().sum() > 0 for n, g in grads.items() if "ada" not in n), [n for n, g in grads.items() if g.abs().sum() == 0]


@pytest.mark.parametrize("method, factor", [("controlnet", 20.0), ("t2i-adapter", 3.0)])
def test_overfit_one_latent_condition_pair(method, factor):
    """60 Adam steps on one (latent, condition) pair, base frozen: the epsilon loss drops by `factor`.

    ControlNet's copy reads z_t, so it can learn to predict this eps outright (3.2 -> ~0.02 here).
    The adapter reads only the condition: it removes the base's error but cannot see the noise,
    so its loss stops near var(eps) = 1 (3.2 -> ~0.95 here).
    """
    base = _base()
    z0, _, text, cond = _inputs(batch=1)
    g = torch.Generator().manual_seed(2)
    eps = torch.randn(z0.shape, generator=g)
    ab = 0.5  # alpha_bar at the chosen step; z_t = sqrt(ab) z0 + sqrt(1 - ab) eps (DDPM Eq. 4)
    z_t = ab**0.5 * z0 + (1 - ab) ** 0.5 * eps
    t = torch.tensor([500])
    ctl = make_control(ControlConfig(method=method, blocks=3), base)
    losses = overfit_losses(Controlled(base, [ActiveControl(ctl, cond, 1.0)]), ctl, z_t, t, text, eps)
    assert losses[-1] < losses[0] / factor, (losses[0], losses[-1])


def overfit_losses(model, control, z_t, t, text, eps, steps: int = 60) -> list[float]:
    """`steps` Adam steps (lr 1e-2) of `control`'s parameters on one (z_t, t, eps): the epsilon losses."""
    opt = torch.optim.Adam(control.parameters(), lr=1e-2)
    losses = []
    for _ in range(steps):
        loss = (model(z_t, t, text) - eps).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("method", METHODS)
def test_save_load_round_trip(tmp_path, method):
    base = _base()
    z, t, text, cond = _inputs()
    ctl = make_control(ControlConfig(method=method, blocks=2, enc_channels=8), base)
    _perturb(ctl)
    path = save_control(ctl, tmp_path / "control.safetensors")
    back = load_control(path, base)
    assert back.config == ctl.config
    with torch.no_grad():
        a = Controlled(base, [ActiveControl(ctl, cond, 0.7)])(z, t, text)
        b = Controlled(base, [ActiveControl(back, cond, 0.7)])(z, t, text)
    assert torch.equal(a, b)
    other = DiT(DiTConfig(in_channels=4, hidden=64, depth=3, heads=2, context_dim=16, patch_size=2))
    with pytest.raises(CheckpointError, match="trained for a DiT of width 32 and depth 3; this model has 64"):
        load_control(path, other)
    with pytest.raises(CheckpointError, match="trained for a DiT"):
        Controlled(other, [ActiveControl(back, cond, 1.0)])
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(CheckpointError):
        load_control(tmp_path / "junk.safetensors", base)


def test_same_shape_other_weights_warns():
    base = _base()
    ctl = make_control(ControlConfig(method="t2i-adapter", blocks=1), base)
    other = _base()
    with torch.no_grad():
        other.blocks[0].ada.bias.add_(0.01)
    with pytest.warns(UserWarning, match="other weights"):
        Controlled(other, [ActiveControl(ctl, _inputs()[3], 1.0)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Controlled(base, [ActiveControl(ctl, _inputs()[3], 1.0)])


def test_controls_plug_into_the_sampler_of_the_shipped_reference_dit():
    """With guidance (the batch doubles), a fresh ControlNet leaves the reference model's samples bit-equal."""
    from duogen.demo import REFERENCE_DIR
    from duogen.diffusion.control import as_condition
    from duogen.diffusion.latent import LatentDiffusionModel

    if not (REFERENCE_DIR / "dit" / "config.json").is_file():
        pytest.skip("no shipped reference DiT")
    model = LatentDiffusionModel.from_pretrained(REFERENCE_DIR / "dit").eval()
    base = model.denoiser
    go = lambda: model.sample_latents(["a red circle moving left"], n=2, seed=3, steps=3, guidance=3.0)  # noqa: E731
    ref = go()
    cond = as_condition(clip_object_masks(CFG, "train", 0).any(0))  # (1, 1, F, H, W)
    ctl = make_control(ControlConfig(method="controlnet", blocks=2), base)
    try:
        model.denoiser = Controlled(base, [ActiveControl(ctl, cond, 1.0)])
        assert torch.equal(go(), ref)
        _perturb(ctl)
        assert not torch.allclose(go(), ref, atol=1e-3)
    finally:
        model.denoiser = base
    with pytest.raises(DataError, match=r"expected \(F, H, W\)"):
        as_condition(np.zeros((2, 3)))
    with pytest.raises(DataError, match=r"reads \(B, 1, F, H, W\)"):
        Controlled(base, [ActiveControl(ctl, cond.repeat(1, 2, 1, 1, 1), 1.0)])
