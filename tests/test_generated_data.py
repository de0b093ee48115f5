"""Generated data for a more robust classifier: corruptions, the CNN fit on crops, equal budgets, the CLI."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from duogen.data.shapes import SHAPES, WorldConfig, make_clip
from duogen.eval.corruptions import KINDS, corrupt
from duogen.eval.generated_data import (GeneratedDataConfig, arm_plans, clip_crops, object_accuracy,
                                          pseudo_label)
from duogen.eval.shape_classifier import FitConfig, batch_counts, fit_shape_cnn
from test_compare import tiny_model_dirs  # noqa: F401 (the fixture: random-init tiny codec + AR + DiT dirs)

pytestmark = pytest.mark.usefixtures("one_thread")

CFG = WorldConfig(size=32, frames=9)
REF_DIT = "src/duogen/assets/reference/dit"


@pytest.fixture(scope="module")
def clips():
    return [make_clip(CFG, "train", i) for i in range(24)]


def _high_freq(x: np.ndarray) -> float:
    """Mean squared difference between horizontally and vertically adjacent pixels."""
    x = x.astype(np.float64)
    return float(((x[..., 1:, :, :] - x[..., :-1, :, :]) ** 2).mean() + ((x[..., :, 1:, :] - x[..., :, :-1, :]) ** 2).mean())


def test_corruptions_are_deterministic_and_do_what_they_say(clips):
    x = np.stack([c.video for c in clips[:6]])  # (N, F, H, W, 3)
    for kind in KINDS:
        a, b = corrupt(x, kind, 3, seed=4), corrupt(x, kind, 3, seed=4)
        assert a.dtype == np.uint8 and a.shape == x.shape
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, x)
        if kind != "blur":  # blur draws nothing at random
            assert not np.array_equal(a, corrupt(x, kind, 3, seed=5))
    gray = np.full((2, 3, 16, 16, 3), 128, np.uint8)  # flat: no clipping, clean variance 0
    var = [corrupt(gray, "gaussian_noise", s).astype(np.float64).var() for s in (1, 3, 5)]
    assert 0 < var[0] < var[1] < var[2]
    assert corrupt(gray, "gaussian_noise", 3).mean() == pytest.approx(128, abs=1)  # zero-mean noise
    hf = [_high_freq(corrupt(x, "blur", s)) for s in (1, 3, 5)]
    assert _high_freq(x) > hf[0] > hf[1] > hf[2]
    moved = [np.abs(corrupt(x, "color_shift", s).mean((1, 2, 3)) - x.mean((1, 2, 3))).sum(-1) for s in (1, 5)]
    assert (moved[0] > 5).all() and (moved[1] > moved[0]).all()  # every clip's mean color moves, more at 5


def test_corrupt_rejects_unknown_kind_and_severity(clips):
    from duogen.errors import ConfigError

    x = clips[0].video[None]
    with pytest.raises(ConfigError):
        corrupt(x, "fog")
    with pytest.raises(ConfigError):
        corrupt(x, "blur", 6)


def test_crops_label_each_object_by_its_shape(clips):
    crops = clip_crops([c.video for c in clips], [c.attributes for c in clips])
    n_obj = sum(len(c.attributes) for c in clips)
    assert int(crops.obj.max()) + 1 == n_obj  # ground-truth clips: every object is found
    assert crops.x.shape[1:] == (16, 16) and crops.x.max() <= 1.0 + 1e-6
    first = clips[0].attributes[0]["shape"]
    assert (crops.y[crops.obj == 0] == SHAPES.index(first)).all()
    # corrupted copies are cropped at the clean boxes: the same objects, the same number of crops
    bad = corrupt(np.stack([c.video for c in clips]), "gaussian_noise", 5)
    noisy = clip_crops([c.video for c in clips], [c.attributes for c in clips], sources=list(bad))
    np.testing.assert_array_equal(noisy.obj, crops.obj)
    assert not np.allclose(noisy.x, crops.x)


def test_cnn_trained_on_a_handful_of_real_clips_learns(clips):
    crops = clip_crops([c.video for c in clips], [c.attributes for c in clips])
    clf, loss = fit_shape_cnn([(crops.x, crops.y)], fit=FitConfig(steps=150, batch_size=32, seed=0))
    acc = object_accuracy(clf, crops)
    assert acc >= 0.8, acc  # chance is 1/13
    assert loss < 0.5
    # pseudo-labels: the classifier's reading of each object replaces a wrong label
    wrong = crops._replace(y=(crops.y + 1) % len(SHAPES))
    relabelled, agree = pseudo_label(clf, wrong)
    assert agree <= 1 - acc + 1e-9  # it reads the true shape, so it disagrees with the shifted labels
    assert (relabelled.y == crops.y).mean() >= 0.8 and object_accuracy(clf, relabelled) == 1.0


def test_arms_use_equal_budgets_and_the_ratio():
    cfg = GeneratedDataConfig(ratio=0.3, steps=17, batch_size=40)
    plans = arm_plans(["ar", "dit"], cfg, seed=2)
    assert [p.name for p in plans] == ["real", "gen-ar", "gen-dit", "real+ar", "real+dit"]
    assert all(p.fit == FitConfig(steps=17, batch_size=40, lr=cfg.lr, seed=2) for p in plans)
    assert all(sum(p.shares) == pytest.approx(1.0) for p in plans)
    assert plans[3].shares == [pytest.approx(0.7), pytest.approx(0.3)] and plans[3].pools == ["real", "ar"]
    assert batch_counts([0.7, 0.3], 40) == [28, 12] and batch_counts([1 / 3] * 3, 128) == [43, 43, 42]


def test_mixed_batches_draw_from_both_pools():
    """A pool of class-0 crops and a pool of class-1 crops, mixed: the CNN learns both classes."""
    rng = np.random.default_rng(0)
    a = (rng.random((64, 16, 16)) * 0.2).astype(np.float32)
    b = a.copy()
    b[:, 4:12, 4:12] = 1.0
    clf, _ = fit_shape_cnn([(a, np.zeros(64, np.int64)), (b, np.ones(64, np.int64))], [0.5, 0.5],
                           FitConfig(steps=40, batch_size=16))
    pred = clf.logits(np.concatenate([a[:8], b[:8]])).argmax(1)
    np.testing.assert_array_equal(pred, [0] * 8 + [1] * 8)


# ----------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from duogen.data.shapes import make_world

    out = tmp_path_factory.mktemp("world") / "data"
    make_world(out, dataclasses.replace(CFG, n=80, validation_fraction=0.1, heldout_fraction=0.1))
    return out


def _cli(args, capsys):
    from duogen.cli import main

    rc = main(["eval", "generated-data", *map(str, args)])
    return rc, capsys.readouterr()


def test_cli_bad_input_is_one_line_and_exit_2(world, tiny_model_dirs, tmp_path, capsys):  # noqa: F811
    import datasets

    out = tmp_path / "out"
    codec = tiny_model_dirs["root"] / "codec"
    only_train = tmp_path / "only_train"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"caption": ["a red circle"]})}).save_to_disk(str(only_train))
    cases = [
        ["--diffusion", codec, "--data", world],  # a codec, not a generator
        ["--ar", tiny_model_dirs["dit"], "--data", world],  # a diffusion model given as --ar
        ["--ar", tmp_path / "nowhere", "--data", world],
        ["--ar", tiny_model_dirs["ar"], "--data", only_train],  # no validation / heldout splits
        ["--ar", tiny_model_dirs["ar"], "--data", tmp_path / "nodata"],
        ["--ar", tiny_model_dirs["ar"], "--data", world, "--ratio", "0"],
        ["--ar", tiny_model_dirs["ar"], "--data", world, "--ratio", "1.5"],
        ["--data", world],  # no generator at all
        ["--ar", tiny_model_dirs["ar"], "--data", world, "--severity", "6"],
    ]
    for args in cases:
        rc, cap = _cli([*args, "--out", out], capsys)
        assert rc == 2, args
        assert cap.err.count("\n") == 1 and cap.err.startswith("duogen: error:"), (args, cap.err)
        assert not out.exists()
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    rc, cap = _cli(["--ar", tiny_model_dirs["ar"], "--data", world, "--out", out], capsys)
    assert rc == 2 and "--overwrite" in cap.err and (out / "keep.txt").read_text() == "mine"


def test_cli_end_to_end_on_tiny_models(world, tiny_model_dirs, tmp_path, capsys):  # noqa: F811
    """A random tiny AR (its clips hold no objects: its arms are skipped) and the reference DiT at 2 steps."""
    from duogen.eval.report import load_section

    out = tmp_path / "runs" / "gd"
    args = ["--ar", tiny_model_dirs["ar"], "--diffusion", REF_DIT, "--data", world, "--out", out,
            "--n-real", 16, "--n-generated", 8, "--steps", 6, "--batch-size", 16, "--seeds", 2, "--n-eval", 4,
            "--diffusion-steps", 2, "--json"]
    rc, cap = _cli(args, capsys)
    assert rc == 0, cap.err
    summary = json.loads(cap.out)
    res = json.loads((out / "results.json").read_text())
    assert summary["skipped"] == res["skipped"]
    ran = {r["arm"] for r in res["runs"]}
    assert {"real", "gen-dit", "real+dit"} <= ran
    assert ("gen-ar" in ran) == ("ar" not in res["skipped"])
    assert len(res["runs"]) == 2 * len(ran)  # every arm for both seeds
    assert {(r["steps"], r["batch_size"]) for r in res["runs"]} == {(6, 16)}  # equal budgets
    for arm in res["arms"].values():
        assert set(arm["mean"]) == {"validation", "heldout", "corrupted"}
        assert all(0.0 <= v <= 1.0 for v in arm["mean"].values())
    assert res["models"]["dit"]["clips"] == 8 and not res["models"]["dit"]["cached"]
    sec = load_section(out / "section.json")
    assert sec["plots"] and all(p.endswith("accuracy.png") for p in sec["plots"])
    assert (out / "accuracy.png").stat().st_size > 0
    assert len(sec["tables"][0]["rows"]) == len(res["arms"])
    # a rerun takes the generated clips from the cache (OUT/../.cache); the real arm trains the same;
    # with pseudo-labels the generated crops are relabelled by the real arm's first-seed classifier
    rc, cap = _cli([*args, "--overwrite", "--labels", "pseudo"], capsys)
    assert rc == 0, cap.err
    again = json.loads((out / "results.json").read_text())
    assert again["models"]["dit"]["cached"] and again["arms"]["real"] == res["arms"]["real"]
    assert 0.0 <= again["models"]["dit"]["pseudo_agrees_with_prompt"] <= 1.0
