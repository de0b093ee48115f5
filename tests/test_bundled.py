"""Bundled real data sets build offline, small, deterministic, with the shapes world's columns."""

import numpy as np
import pytest

from duogen.data import load_dataset
from duogen.data.bundled import make_bundled
from duogen.errors import DataError

SPLITS = {"train", "validation", "heldout"}


def _split_rows(out):
    dd = load_dataset(out)
    assert set(dd.keys()) == SPLITS
    return {k: list(v.with_format("numpy")) for k, v in dd.items()}


@pytest.mark.parametrize("name", ["mnist", "digits"])
def test_digit_sets(tmp_path, name):
    s = make_bundled(name, tmp_path / name, n=30, seed=1)
    assert s["clips"] == 30 and s["still_clips"] and min(s["splits"].values()) >= 3
    rows = _split_rows(tmp_path / name)
    sources = {k: {str(r["source"]) for r in v} for k, v in rows.items()}
    assert not (sources["heldout"] & sources["train"]) and not (sources["validation"] & sources["train"])
    for r in rows["heldout"] + rows["train"][:5]:
        video, image = r["video"].astype(np.uint8), r["image"].astype(np.uint8)
        assert video.shape == (9, 32, 32, 3) and image.shape == (32, 32, 3)
        assert all(np.array_equal(f, image) for f in video)  # a still clip of the image
        assert str(r["caption"]) == f"a handwritten {int(r['label'])}"
        assert image.max() > 200 and image[0, 0].max() < 30  # a bright stroke on a dark background
        assert np.array_equal(image[..., 0], image[..., 2])  # grey
    labels = {int(r["label"]) for v in rows.values() for r in v}
    assert len(labels) >= 6  # a shuffled subset, not the first (sorted) labels


def test_photos_pan_and_hold_out_combinations(tmp_path):
    s = make_bundled("photos", tmp_path / "p", n=48, seed=0)
    rows = _split_rows(tmp_path / "p")
    assert s["clips"] == 48 and len(rows["heldout"]) > 0
    train_caps = {str(r["caption"]) for r in rows["train"]}
    assert not train_caps & {str(r["caption"]) for r in rows["heldout"]}  # (photo, pan) pairs never seen in train
    for r in rows["train"][:6]:
        v = r["video"].astype(np.float32)
        assert v.shape == (9, 32, 32, 3)
        direction = str(r["caption"]).rsplit(" ", 1)[1]
        # the camera pans: frames differ, and the last frame matches the first shifted against the pan
        assert np.abs(v[-1] - v[0]).mean() > 3
        def err(shift, axis):
            a, b = v[0], v[-1]
            if shift > 0:
                a, b = np.take(a, range(shift, 32), axis), np.take(b, range(0, 32 - shift), axis)
            else:
                a, b = np.take(a, range(0, 32 + shift), axis), np.take(b, range(-shift, 32), axis)
            return np.abs(a - b).mean()
        axis = 1 if direction in ("left", "right") else 0
        sign = 1 if direction in ("right", "down") else -1
        best = min(range(-12, 13), key=lambda k: err(k, axis))
        assert best * sign > 0, (r["caption"], best)


def test_sprites_walk_the_right_way(tmp_path):
    s = make_bundled("sprites", tmp_path / "s", n=24, seed=0)
    rows = _split_rows(tmp_path / "s")
    assert s["clips"] == 24
    assert not {str(r["caption"]) for r in rows["train"]} & {str(r["caption"]) for r in rows["heldout"]}
    checked = 0
    for r in rows["train"] + rows["heldout"] + rows["validation"]:
        v = r["video"].astype(np.int16)
        cap = str(r["caption"])
        bg = v[0, 0, 0]
        fg = np.abs(v - bg).sum(-1) > 60  # (F, H, W) character pixels
        assert fg[0].sum() > 20  # the character is visible
        xs = [np.nonzero(m)[1].mean() for m in fg]
        ys = [np.nonzero(m)[0].mean() for m in fg]
        if cap.endswith("walking to the right"):
            assert xs[-1] - xs[0] > 5; checked += 1
        elif cap.endswith("walking to the left"):
            assert xs[0] - xs[-1] > 5; checked += 1
        elif cap.endswith("climbing"):
            assert ys[0] - ys[-1] > 2; checked += 1
    assert checked >= 6


def test_same_seed_same_data_and_clear_errors(tmp_path):
    make_bundled("digits", tmp_path / "a", n=12, seed=5)
    make_bundled("digits", tmp_path / "b", n=12, seed=5)
    make_bundled("digits", tmp_path / "c", n=12, seed=6)
    va, vb, vc = (np.stack(load_dataset(tmp_path / x)["train"].with_format("numpy")["video"]) for x in "abc")
    assert np.array_equal(va, vb) and not (va.shape == vc.shape and np.array_equal(va, vc))
    with pytest.raises(DataError, match="already exists"):
        make_bundled("digits", tmp_path / "a", n=12)
    with pytest.raises(DataError, match="allowed values"):
        make_bundled("cifar", tmp_path / "x")
    s = make_bundled("digits", tmp_path / "a", n=12, preset="small", overwrite=True)
    assert (s["size"], s["frames"]) == (64, 17)
