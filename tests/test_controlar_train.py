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

from test_control_train import TRAIN, _tree_hash  # noqa: E402

REF_AR = Path(duogen.__file__).parent / "assets" / "reference" / "ar"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from duogen.data import make_dataset

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("ctlar")
    make_dataset("shapes", root / "data", n=12, preset="tiny", seed=0)  # the reference models' 9x32x32 clips
    return root / "data"


def _train(data, out, *extra, condition="boxes", resume=None):
    from duogen.train.controlar_recipe import train_controlar

    return train_controlar(REF_AR, data, out, condition=condition, overrides=[*TRAIN, *extra], resume=resume)


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
    s = _train(data, tmp_path / "run", "train.steps=30", "max_clips=4", condition=condition)
    final = tmp_path / "run" / "final"
    assert sorted(p.name for p in final.iterdir()) == ["control.json", "control.safetensors"]
    conf = json.loads((final / "control.json").read_text())
    assert (conf["paradigm"], conf["method"], conf["condition"]) == ("ar", "controlar", condition)
    assert conf["base_sha256"] == file_sha256(REF_AR / "model.safetensors")
    assert s["layers"] == [0, 2] and s["steps"] == 30
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
    s = _train(data, tmp_path / "b", *common, resume="auto")
    assert s["steps"] == 4
    a = load_state_dict(tmp_path / "a" / "final" / "control.safetensors")
    b = load_state_dict(tmp_path / "b" / "final" / "control.safetensors")
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_bad_input(data, tmp_path):
    from duogen.errors import ConfigError

    with pytest.raises(ConfigError, match="condition"):
        _train(data, tmp_path / "x", condition="depth")
    with pytest.raises(ConfigError, match="not an AR model"):
        from duogen.train.controlar_recipe import train_controlar

        train_controlar(REF_AR.parent / "dit", data, tmp_path / "y")
