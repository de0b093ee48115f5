"""ControlAR training (train/controlar_recipe.py) from the shipped reference AR model on tiny shapes data:
only the control trains and is saved (with the base's fingerprint), the loss with the control falls, the base
directory is untouched, resume is exact."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import duogen

sys.path.insert(0, str(Path(__file__).parent))

from _tiny_runs import cli  # noqa: E402
from test_control_train import TRAIN, _tree_hash  # noqa: E402

REF_AR = Path(duogen.__file__).parent / "assets" / "reference" / "ar"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from duogen.data import make_dataset

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("ctlar")
    make_dataset("shapes", root / "data", n=12, preset="tiny", seed=0)  # the reference models' 9x32x32 clips
    return root / "data"


def _train(data, out, *extra, condition="boxes"):
    rc, s, err = cli("train", "control", "--model", str(REF_AR), "--method", "controlar", "--condition", condition,
                     "--data", str(data), "--out", str(out), *TRAIN, *extra)
    assert rc == 0, err
    return s


def _fixed_loss(data, final, condition, control: bool) -> float:
    """The reference AR's teacher-forced loss on the first 4 clips (full captions, no dropout), with or without."""
    from duogen.ar_models.control_embed import control_embeddings, load_control_embed
    from duogen.ar_models.model import MultimodalLM
    from duogen.data import load_dataset
    from duogen.tokenizers import load as load_codec
    from duogen.train.control_recipe import row_condition

    m = MultimodalLM.from_pretrained(REF_AR)
    codec = load_codec(m.codec_path(REF_AR))
    split = load_dataset(data)["train"].select(range(4))
    video = np.stack([np.asarray(v, np.uint8) for v in split["video"]])
    with torch.no_grad():
        ids = codec.encode(video)  # (4, f, h, w)
        batch = m.layouts.batch([m.layouts.example("t2v", m.encode_prompt(c), i) for c, i in zip(split["caption"], ids)])
        cond = torch.stack([row_condition(split[i], condition, video.shape[1], video.shape[2]) for i in range(4)])
        uses = []
        if control:
            class Use:
                module, condition, scale = load_control_embed(final / "control.safetensors", m), cond, 1.0
            uses = [Use]
        with control_embeddings(m, uses):
            return float(m.loss(batch).loss)


@pytest.mark.parametrize("condition", ["boxes", pytest.param("mask", marks=pytest.mark.slow)])
def test_training_lowers_the_loss_and_saves_only_the_control(data, tmp_path, condition):
    from duogen.io import file_sha256

    before = _tree_hash(REF_AR)
    # the recipe's own lr and warm-up (TRAIN's 3e-3 without warm-up overshoots on the reference AR shipped since
    # session 34: loss 1.69 -> 4.21 with the control after 30 steps; the recipe's settings give 1.69 -> 1.14)
    s = _train(data, tmp_path / "run", "train.steps=30", "max_clips=4", "train.lr=1.5e-3", "train.warmup_steps=10",
               condition=condition)
    final = tmp_path / "run" / "final"
    assert sorted(p.name for p in final.iterdir()) == ["control.json", "control.safetensors"]
    conf = json.loads((final / "control.json").read_text())
    assert (conf["paradigm"], conf["method"], conf["condition"]) == ("ar", "controlar", condition)
    assert conf["base_sha256"] == file_sha256(REF_AR / "model.safetensors")
    assert s["layers"] == [0, 2] and s["steps"] == 30 and s["paradigm"] == "ar"
    assert _tree_hash(REF_AR) == before  # the base directory is untouched
    off, on = _fixed_loss(data, final, condition, False), _fixed_loss(data, final, condition, True)
    assert on < 0.9 * off, (off, on)


def test_resume_is_exact(data, tmp_path):
    from duogen.io import load_state_dict

    common = ["train.steps=4", "train.ckpt_every=2", "train.keep_last=0", "max_clips=8", "train.log_every=1"]
    _train(data, tmp_path / "a", *common)
    ck = sorted((tmp_path / "a" / "checkpoints").iterdir())[0]
    assert ck.name.endswith("2")
    assert all(k.startswith("control.") for k in load_state_dict(ck / "model.safetensors"))  # only the control
    (tmp_path / "b" / "checkpoints").mkdir(parents=True)
    shutil.copytree(ck, tmp_path / "b" / "checkpoints" / ck.name)
    s = _train(data, tmp_path / "b", *common, "--resume")
    assert s["steps"] == 4
    a = load_state_dict(tmp_path / "a" / "final" / "control.safetensors")
    b = load_state_dict(tmp_path / "b" / "final" / "control.safetensors")
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- generate --control


@pytest.fixture(scope="module")
def steered(data, tmp_path_factory):
    """A 'trained' control (random heads) for the reference AR, a boxes file and a mask clip of a data set row."""
    from duogen.ar_models.control_embed import ControlARConfig, make_control_embed, save_control_embed
    from duogen.ar_models.model import MultimodalLM
    from duogen.data import load_dataset
    from duogen.data.conditions import BoxTrack, write_boxes
    from duogen.data.media import write_mp4

    root = tmp_path_factory.mktemp("steer")
    torch.manual_seed(0)
    ctl = make_control_embed(ControlARConfig(), MultimodalLM.from_pretrained(REF_AR), 9, 32)
    with torch.no_grad():
        for p in ctl.heads.parameters():
            p.normal_(0, 0.05)
    save_control_embed(ctl, root / "ctl" / "final" / "control.safetensors")
    row = load_dataset(data)["validation"][0]
    tracks = [BoxTrack(f"object {k}", np.asarray(b, np.float64)) for k, b in enumerate(row["boxes"])]
    video = np.asarray(row["video"], np.uint8)
    return {"run": root / "ctl", "boxes": write_boxes(root / "boxes.json", tracks),
            "mask": write_mp4(root / "mask.mp4", video), "short": write_mp4(root / "short.mp4", video[:-1])}


def _gen(out, *extra, model=REF_AR):
    return cli("generate", "--model", str(model), "--prompt", "a red circle moves left", "--save-latents", "--out",
               str(out), *extra)


def test_generate_with_a_control_and_scale_zero_is_the_base(steered, tmp_path):
    from duogen.io import load_state_dict

    rc, _, err = _gen(tmp_path / "plain")
    assert rc == 0, err
    plain = load_state_dict(tmp_path / "plain" / "latents.safetensors")["ids"]
    rc, _, err = _gen(tmp_path / "zero", "--control", f"{steered['run']}:0", "--boxes", str(steered["boxes"]))
    assert rc == 0, err
    assert torch.equal(plain, load_state_dict(tmp_path / "zero" / "latents.safetensors")["ids"])
    for kind in ("boxes", "mask"):
        rc, s, err = _gen(tmp_path / kind, "--control", f"{steered['run']}:1.5", f"--{kind}", str(steered[kind]))
        assert rc == 0, err
        assert s["settings"]["control_scales"] == [1.5]
        assert not torch.equal(plain, load_state_dict(tmp_path / kind / "latents.safetensors")["ids"])


def test_bad_input_is_one_line_and_exit_2(data, steered, tmp_path):
    from duogen.io import load_state_dict, save_state_dict

    other = tmp_path / "ref"  # the reference AR (and its codec, which it names relatively) with other weights
    shutil.copytree(REF_AR, other / "ar")
    shutil.copytree(REF_AR.parent / "codec", other / "codec")
    sd = load_state_dict(other / "ar" / "model.safetensors")
    save_state_dict({k: v + 0.01 if v.is_floating_point() else v for k, v in sd.items()}, other / "ar" / "model.safetensors")
    run, boxes = str(steered["run"]), str(steered["boxes"])
    cases = [
        (other / "ar", ["--control", run, "--boxes", boxes], "another AR base"),
        (REF_AR.parent / "dit", ["--control", run, "--boxes", boxes, "--steps", "2"], "AR control"),
        (REF_AR, ["--control", run, "--mask", str(steered["short"])], "frames"),
        (REF_AR, ["--control", run], "condition"),
    ]
    for k, (model, extra, says) in enumerate(cases):
        rc, _, err = _gen(tmp_path / f"bad{k}", *extra, model=model)
        assert rc == 2 and err.count("\n") == 1 and says in err, (k, err)
    rc, _, err = cli("train", "control", "--model", str(REF_AR.parent / "dit"), "--method", "controlar", "--condition",
                     "boxes", "--data", str(data), "--out", str(tmp_path / "r"), *TRAIN)
    assert rc == 2 and err.count("\n") == 1 and "controlar" in err, err
    from duogen.errors import ConfigError
    from duogen.train.ar_control_recipe import train_ar_control

    with pytest.raises(ConfigError, match="condition"):
        train_ar_control(REF_AR, data, tmp_path / "x", method="controlar", condition="depth")
