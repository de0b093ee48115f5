"""`duogen train control` (recipe + CLI) and `duogen generate --control` on tiny CLI-trained bases."""

from __future__ import annotations

import hashlib
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


def _fixed_loss(bases, final, condition, control: bool) -> float:
    """Mean v loss of the shipped reference DiT over its first 4 clips at fixed (t, eps) draws, with or without the control."""
    from duogen.bridges.control import load_control_run
    from duogen.data import load_dataset
    from duogen.diffusion.control import ActiveControl, Controlled
    from duogen.diffusion.latent import LatentDiffusionModel
    from duogen.train.control_recipe import ConditionRecords

    m = LatentDiffusionModel.from_pretrained(REF_DIT).eval()
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


@pytest.mark.parametrize("method,condition", [("controlnet", "boxes"), ("t2i-adapter", "edges"), ("controlnet", "mask")])
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
