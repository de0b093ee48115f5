"""`duogen train control` (recipe + CLI) and `duogen generate --control` on tiny CLI-trained bases."""

from __future__ import annotations

import hashlib
import shutil
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import duogen

sys.path.insert(0, str(Path(__file__).parent))
from _tiny_runs import cli, train_tiny_bases  # noqa: E402

TRAIN = ["train.batch_size=4", "train.precision=fp32", "train.max_minutes=0", "train.warmup_steps=0", "train.lr=3e-3"]


def _tree_hash(d: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(d.rglob("*")):
        if f.is_file():
            h.update(str(f.relative_to(d)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    torch.set_num_threads(1)
    return train_tiny_bases(tmp_path_factory.mktemp("ctl"))


@pytest.fixture(scope="module")
def boxes_file(bases):
    from duogen.data import load_dataset
    from duogen.data.conditions import BoxTrack, write_boxes

    row = load_dataset(bases / "data")["train"][0]
    tracks = [BoxTrack(f"object {k}", np.asarray(b, np.float64)) for k, b in enumerate(row["boxes"])]
    return write_boxes(bases / "boxes.json", tracks), len(row["video"]), np.asarray(row["video"]).shape[1]


REF_DIT = Path(duogen.__file__).parent / "assets" / "reference" / "dit"


def _train(bases, out, *extra, method="controlnet", condition="boxes", model=REF_DIT):
    return cli("train", "control", "--model", str(model), "--method", method, "--condition", condition,
               "--data", str(bases / "data"), "--out", str(out), *TRAIN, *extra)


def _fixed_loss(bases, final, condition, control: bool, model=REF_DIT) -> float:
    """Mean loss of `model` (the shipped reference DiT) over the first 4 clips at fixed (t, eps) draws, with or
    without the control."""
    from duogen.bridges.control import load_control_run
    from duogen.data import load_dataset
    from duogen.diffusion.control import ActiveControl, Controlled
    from duogen.diffusion.latent import LatentDiffusionModel
    from duogen.train.control_recipe import ConditionRecords

    m = LatentDiffusionModel.from_pretrained(model).eval()
    codec = m._need_codec()
    split = load_dataset(bases / "data")["train"].select(range(4))
    video = np.stack([np.asarray(v, np.uint8) for v in split["video"]])
    with torch.no_grad():
        z0 = codec.normalize_latents(codec.encode_latents(video).float())
        ids, mask = m.text_encoder.tokenize(list(split["caption"]), strict=False)
        recs = ConditionRecords(split, condition, z0, ids, mask, video.shape[1], video.shape[2])
        cond = torch.stack([recs[i]["condition"] for i in range(4)])  # (4, 1, F, H, W)
        if control:
            m.denoiser = Controlled(m.denoiser, [ActiveControl(load_control_run(final, m.denoiser), cond, 1.0)])
        g = torch.Generator().manual_seed(0)
        out = []
        for t in (50, 250, 500, 750, 950):
            eps = torch.randn(z0.shape, generator=g)
            out.append(m.loss_per_example({"latents": z0, "text_ids": ids, "text_mask": mask}, t, eps).mean())
    return float(torch.stack(out).mean())


# boxes through ControlNet by default; the other two (10 s each on the reference DiT) are `slow`: their conditions
# and the adapter are covered by tests/test_control.py (overfit, no-op) and the U-Net recipe tests.
@pytest.mark.parametrize("method,condition", [
    ("controlnet", "boxes"),
    pytest.param("t2i-adapter", "edges", marks=pytest.mark.slow),
    pytest.param("controlnet", "mask", marks=pytest.mark.slow),
])
def test_training_lowers_the_loss_and_saves_only_the_control(bases, tmp_path, method, condition):
    before = _tree_hash(REF_DIT)
    # the batch is the 4 clips the loss is measured on: the control overfits them
    rc, s, err = _train(bases, tmp_path / "run", "train.steps=40", "max_clips=4", method=method, condition=condition)
    assert rc == 0, err
    final = tmp_path / "run" / "final"
    assert sorted(p.name for p in final.iterdir()) == ["control.json", "control.safetensors"]
    conf = json.loads((final / "control.json").read_text())
    from duogen.io import file_sha256

    assert conf["base_sha256"] == file_sha256(REF_DIT / "model.safetensors")
    assert (conf["method"], conf["condition"]) == (method, condition)
    assert _tree_hash(REF_DIT) == before  # the base directory is untouched
    off, on = _fixed_loss(bases, final, condition, False), _fixed_loss(bases, final, condition, True)
    assert on < 0.9 * off, (off, on)


def _control_tensors(final):
    from duogen.io import load_state_dict

    return load_state_dict(final / "control.safetensors")


def test_resume_is_exact(bases, tmp_path):
    common = ["train.steps=6", "train.ckpt_every=3", "train.keep_last=0", "max_clips=8", "train.log_every=1"]
    rc, _, err = _train(bases, tmp_path / "a", *common, method="t2i-adapter")
    assert rc == 0, err
    ck = sorted((tmp_path / "a" / "checkpoints").iterdir())[0]
    assert ck.name.endswith("3")
    from duogen.io import load_state_dict

    assert all(k.startswith("control.") for k in load_state_dict(ck / "model.safetensors"))  # only the control
    (tmp_path / "b" / "checkpoints").mkdir(parents=True)
    shutil.copytree(ck, tmp_path / "b" / "checkpoints" / ck.name)
    rc, s, err = _train(bases, tmp_path / "b", *common, "--resume", method="t2i-adapter")
    assert rc == 0, err
    assert s["steps"] == 6
    a, b = _control_tensors(tmp_path / "a" / "final"), _control_tensors(tmp_path / "b" / "final")
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


def _fresh_control(model_dir, out, method="controlnet"):
    from duogen.diffusion.control import ControlConfig, make_control, save_control
    from duogen.diffusion.latent import LatentDiffusionModel

    dit = LatentDiffusionModel.from_pretrained(model_dir).denoiser
    torch.manual_seed(0)
    save_control(make_control(ControlConfig(method=method), dit), Path(out) / "final" / "control.safetensors")
    return Path(out)


def _gen(model, out, *extra):
    return cli("generate", "--model", str(model), "--prompt", "a red circle", "--steps", "3", "--save-latents",
               "--out", str(out), *extra)


@pytest.mark.parametrize("method", ["controlnet", "t2i-adapter"])
def test_fresh_control_generates_bit_for_bit_the_uncontrolled_clips(bases, boxes_file, tmp_path, method):
    from duogen.io import load_state_dict

    dit = bases / "dit" / "final"
    run = _fresh_control(dit, tmp_path / "ctl", method)
    rc, _, err = _gen(dit, tmp_path / "plain")
    assert rc == 0, err
    rc, _, err = _gen(dit, tmp_path / "ctl_out", "--control", f"{run}:0.7", "--boxes", str(boxes_file[0]))
    assert rc == 0, err
    plain = load_state_dict(next((tmp_path / "plain").glob("*.safetensors")))
    ctl = load_state_dict(next((tmp_path / "ctl_out").glob("*.safetensors")))
    assert torch.equal(plain["latents"], ctl["latents"])


def test_a_trained_control_changes_the_clips_and_generate_refuses_bad_input(bases, boxes_file, tmp_path):
    from duogen.data.conditions import BoxTrack, write_boxes
    from duogen.diffusion.control import ControlConfig, make_control, save_control
    from duogen.diffusion.latent import LatentDiffusionModel
    from duogen.io import load_state_dict, save_state_dict

    dit = bases / "dit" / "final"
    base = LatentDiffusionModel.from_pretrained(dit).denoiser
    torch.manual_seed(0)
    ctl = make_control(ControlConfig(method="t2i-adapter"), base)
    with torch.no_grad():
        for p in ctl.parameters():
            p.add_(0.05 * torch.randn_like(p))  # a "trained" control: its zero heads are no longer zero
    save_control(ctl, tmp_path / "ctl" / "final" / "control.safetensors")
    boxes, frames, size = boxes_file
    rc, _, err = _gen(dit, tmp_path / "plain")
    rc2, _, err2 = _gen(dit, tmp_path / "on", "--control", str(tmp_path / "ctl"), "--boxes", str(boxes))
    assert rc == rc2 == 0, err + err2
    a = load_state_dict(next((tmp_path / "plain").glob("*.safetensors")))["latents"]
    b = load_state_dict(next((tmp_path / "on").glob("*.safetensors")))["latents"]
    assert not torch.equal(a, b)
    # mask / edges conditions from a clip file (the generated MP4, upscaled: fitted to the model's size with a warning)
    from duogen.data.media import read_video, write_mp4

    clip = next((tmp_path / "plain").glob("*.mp4"))
    for flag in ("--mask", "--edges"):
        rc, s, err = _gen(dit, tmp_path / f"on{flag}", "--control", f"{tmp_path / 'ctl'}:0.5", flag, str(clip))
        assert rc == 0 and any("fitted" in w for w in s["warnings"]), err
    small = write_mp4(tmp_path / "small.mp4", read_video(clip)[:-1])  # one frame short

    # the same DiT shape with other weights: refused (one line, exit 2), as is another shape (the reference DiT)
    other = tmp_path / "other_dit"
    shutil.copytree(dit, other)
    sd = load_state_dict(other / "model.safetensors")
    save_state_dict({k: v + 0.01 if v.is_floating_point() else v for k, v in sd.items()}, other / "model.safetensors")
    wrong_frames = write_boxes(tmp_path / "short.json", [BoxTrack("a box", np.array([[2, 2, 9, 9]] * (frames - 1)))])
    cases = [
        (other, ["--control", str(tmp_path / "ctl"), "--boxes", str(boxes)], "another base"),
        (REF_DIT, ["--control", str(tmp_path / "ctl"), "--boxes", str(boxes)], "width"),
        (dit, ["--control", str(tmp_path / "ctl"), "--boxes", str(wrong_frames)], "frame"),
        (bases / "ar" / "final", ["--control", str(tmp_path / "ctl"), "--boxes", str(boxes)], "AR"),
        (dit, ["--control", str(tmp_path / "ctl"), "--edges", str(small)], "frames"),
        (dit, ["--boxes", str(boxes)], "--control"),
        (dit, ["--control", str(tmp_path / "ctl")], "condition"),
        (dit, ["--control", str(tmp_path / "nothing"), "--boxes", str(boxes)], "control.safetensors"),
    ]
    for k, (model, extra, says) in enumerate(cases):
        rc, _, err = _gen(model, tmp_path / f"bad{k}", *extra)
        assert rc == 2 and err.count("\n") == 1 and says in err, (k, err)


def test_train_control_refuses_bad_input(bases, tmp_path):
    rc, _, err = _train(bases, tmp_path / "r", "train.steps=1", model=bases / "ar" / "final")
    assert rc == 2 and err.count("\n") == 1 and "AR" in err, err
    rc, _, err = _train(bases, tmp_path / "r2", "train.steps=1", "blocks=-1")
    assert rc == 2 and err.count("\n") == 1, err
