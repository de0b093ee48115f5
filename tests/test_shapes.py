"""The shapes world: determinism, splits, ground truth that matches the pixels, configs, files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from duogen.config import replace
from duogen.data import load_dataset, make_dataset, with_uint8_video
from duogen.data.shapes import (
    COLORS,
    MOTION_NAMES,
    MOTIONS,
    PALETTE,
    SHAPES,
    WORLD_PRESETS,
    heldout_pairs,
    load_world_config,
    make_clip,
    render_clip,
    split_prompts,
    sprite,
)
from duogen.errors import ConfigError, DataError

TINY = WORLD_PRESETS["tiny"]


def _arrow_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.arrow"))}


def test_same_seed_gives_byte_identical_files_and_other_seeds_differ(tmp_path):
    make_dataset("shapes", tmp_path / "a", n=40, seed=3)
    make_dataset("shapes", tmp_path / "b", n=40, seed=3)
    make_dataset("shapes", tmp_path / "c", n=40, seed=4)
    a, b, c = (_arrow_bytes(tmp_path / k) for k in "abc")
    assert set(a) == {"train/data-00000-of-00001.arrow", "validation/data-00000-of-00001.arrow", "heldout/data-00000-of-00001.arrow"}
    assert a == b
    assert (tmp_path / "a" / "world.yaml").read_text() == (tmp_path / "b" / "world.yaml").read_text()
    va = with_uint8_video(load_dataset(tmp_path / "a")["train"])[:]["video"]
    vc = with_uint8_video(load_dataset(tmp_path / "c")["train"])[:]["video"]
    assert va.shape == vc.shape == (36, 9, 32, 32, 3) and va.dtype == np.uint8
    # Different seeds: (nearly) every clip differs, not just one.
    assert (va != vc).reshape(len(va), -1).any(1).mean() > 0.9
    # `duogen data make shapes ... seed=4` is `--seed 4`: the flag's default no longer replaces the override,
    # and a flag that disagrees with the override is refused before any work
    from duogen.cli import main

    assert main(["data", "make", "shapes", "--out", str(tmp_path / "d"), "--n", "40", "seed=4"]) == 0
    assert _arrow_bytes(tmp_path / "d") == c
    assert main(["data", "make", "shapes", "--out", str(tmp_path / "e"), "--n", "40", "--seed", "4", "seed=4"]) == 0
    assert _arrow_bytes(tmp_path / "e") == c
    with pytest.raises(ConfigError, match="--seed 0 and the override seed=4 disagree"):
        make_dataset("shapes", tmp_path / "f", n=40, seed=0, overrides=["seed=4"])
    assert main(["data", "make", "shapes", "--out", str(tmp_path / "g"), "--n", "40", "--seed", "3", "seed=4"]) == 2
    assert not _arrow_bytes(tmp_path / "g")


def test_on_disk_rows_equal_the_pure_clip_function_and_prompt_list(tmp_path):
    make_dataset("shapes", tmp_path / "w", n=30, seed=1)
    dd = load_dataset(tmp_path / "w")
    cfg = load_world_config("tiny", [f"n=30", "seed=1"])
    for split in ("train", "heldout"):
        ds = with_uint8_video(dd[split])
        prompts = split_prompts(cfg, split)
        assert len(prompts) == len(ds)
        for i in range(min(5, len(ds))):
            clip = make_clip(cfg, split, i)
            row = ds[i]
            assert np.array_equal(row["video"], clip.video)
            assert np.array_equal(np.asarray(row["boxes"]), clip.boxes)
            assert row["caption"] == clip.caption == prompts[i]["caption"]
            assert [a["shape"] for a in row["attributes"]] == [a["shape"] for a in prompts[i]["attributes"]]


def test_heldout_combinations_never_appear_in_train_or_validation():
    cfg = replace(TINY, n=3000)
    held = heldout_pairs()
    assert len(held) == len(SHAPES)  # one color held out per shape
    for split in ("train", "validation"):
        for p in split_prompts(cfg, split):
            assert all((a["shape"], a["color"]) not in held for a in p["attributes"]), p
    heldout = split_prompts(cfg, "heldout")
    assert all(any((a["shape"], a["color"]) in held for a in p["attributes"]) for p in heldout)
    # Every held-out shape and color still occurs in train, in other combinations.
    train = [a for p in split_prompts(cfg, "train") for a in p["attributes"]]
    assert {a["shape"] for a in train} == set(SHAPES) and {a["color"] for a in train} == set(COLORS)


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_boxes_match_pixels_objects_stay_inside_and_apart(preset):
    cfg = replace(WORLD_PRESETS[preset], n=400)
    n_two = 0
    for i in range(60 if preset == "tiny" else 15):
        clip = make_clip(cfg, "train", i)
        F, H, W, _ = clip.video.shape
        assert (F, H, W) == (cfg.frames, cfg.size, cfg.size)
        n_two += len(clip.attributes) == 2
        assert len({a["color"] for a in clip.attributes}) == len(clip.attributes)
        for k, a in enumerate(clip.attributes):
            is_obj = (clip.video == np.array(PALETTE[a["color"]], np.uint8)).all(-1)  # (F, H, W)
            for f in range(F):
                ys, xs = np.nonzero(is_obj[f])
                x0, y0, x1, y1 = clip.boxes[k, f]
                assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x0, y0, x1, y1)
                assert 0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H
            assert clip.boxes[k, 0, 3] - clip.boxes[k, 0, 1] == a["size"]  # size = sprite height
            # Motion is clear and points the way the attribute says.
            travel = (clip.boxes[k, -1, :2] - clip.boxes[k, 0, :2]).astype(float)
            ux, uy = MOTIONS[a["motion"]]
            if a["motion"] == "still":
                assert np.all(travel == 0)
            else:
                assert np.hypot(*travel) >= 0.9 * cfg.speed[0] * (F - 1)
                assert np.sign(travel[0]) == ux and np.sign(travel[1]) == uy
        # Only palette colors and black: no blending, so every pixel has one owner.
        colors = {tuple(c) for c in clip.video.reshape(-1, 3)}
        assert colors <= {(0, 0, 0), *PALETTE.values()}
        if len(clip.attributes) == 2:
            a, b = clip.boxes
            gap = np.maximum(np.maximum(a[:, 0] - b[:, 2], b[:, 0] - a[:, 2]), np.maximum(a[:, 1] - b[:, 3], b[:, 1] - a[:, 3]))
            assert (gap >= 2).all()
    assert n_two > 0


def test_attribute_marginals_cover_the_vocabulary():
    prompts = split_prompts(replace(TINY, n=2000), "train")
    objs = [a for p in prompts for a in p["attributes"]]
    assert {a["motion"] for a in objs} == set(MOTION_NAMES)
    two = np.mean([len(p["attributes"]) == 2 for p in prompts])
    assert 0.3 < two < 0.5  # two_object_fraction 0.4 is kept although two objects are harder to place
    sizes = np.array([a["size"] for a in objs])
    assert sizes.min() >= 10 and sizes.max() <= 16
    speeds = np.array([a["speed"] for a in objs if a["motion"] != "still"])
    assert speeds.min() >= 1.0 and speeds.max() <= 2.0


def test_captions_name_color_shape_and_motion():
    cfg = replace(TINY, n=2000)
    words = {"left", "right", "up", "down", "upward", "downward", "still", "place", "move"}
    for p in split_prompts(cfg, "train")[:300]:
        text = p["caption"]
        for a in p["attributes"]:
            assert a["color"] in text and a["shape"] in text, (text, a)
        assert any(w in text for w in words), text
    # "apart" / "toward each other" agree with the boxes.
    seen = 0
    for i in range(400):
        clip = make_clip(cfg, "train", i)
        if "apart" in clip.caption or "toward" in clip.caption:
            cx = (clip.boxes[:, :, 0] + clip.boxes[:, :, 2]) / 2
            grows = abs(cx[0, -1] - cx[1, -1]) > abs(cx[0, 0] - cx[1, 0])
            assert grows == ("apart" in clip.caption)
            seen += 1
    assert seen > 0


def test_render_clip_from_a_prompt_and_bad_attributes():
    rng = np.random.default_rng(0)
    attrs = [{"shape": "7", "color": "green", "motion": "right"}, {"shape": "square", "color": "blue", "motion": "up"}]
    clip = render_clip(attrs, TINY, rng)
    assert clip.video.shape == (9, 32, 32, 3) and clip.boxes.shape == (2, 9, 4)
    assert "green" in clip.caption and "blue" in clip.caption
    with pytest.raises(DataError, match="allowed values"):
        render_clip([{"shape": "star", "color": "green", "motion": "left"}], TINY, rng)
    with pytest.raises(DataError, match="distinct colors"):
        render_clip([{"shape": "1", "color": "red", "motion": "left"}, {"shape": "2", "color": "red", "motion": "up"}], TINY, rng)


def test_sprites_fill_their_box():
    for shape in SHAPES:
        for size, ex in [(s, e) for s in range(10, 17) for e in range(5)] + [(32, 0), (64, 4)]:
            m = sprite(shape, size, ex)
            assert m.shape[0] == size and (shape in "0123456789" or m.shape[1] == size)
            assert m[0].any() and m[-1].any() and m[:, 0].any() and m[:, -1].any()
            assert 0.1 < m.mean() <= 1.0


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="'frames'"):
        load_world_config("tiny", ["frames=8"])
    with pytest.raises(ConfigError, match="unknown config key 'colour'"):
        load_world_config("tiny", ["colour=red"])
    with pytest.raises(ConfigError, match="object_size"):
        load_world_config("tiny", ["object_size=[10,30]"])
    with pytest.raises(ConfigError, match="allowed values: tiny, small, base"):
        load_world_config("huge")


def test_make_dataset_refuses_to_overwrite_and_load_errors(tmp_path):
    out = tmp_path / "w"
    summary = make_dataset("shapes", out, n=10, overrides=["max_objects=1"])
    assert summary["splits"] == {"train": 8, "validation": 1, "heldout": 1}
    assert "max_objects: 1" in (out / "world.yaml").read_text()
    before = (out / "world.yaml").read_text()
    with pytest.raises(DataError, match="--overwrite"):
        make_dataset("shapes", out, n=12)
    assert (out / "world.yaml").read_text() == before  # nothing lost
    make_dataset("shapes", out, n=12, overwrite=True)
    assert len(load_dataset(out)["train"]) == 10
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not a duogen data set"):
        load_dataset(tmp_path / "empty")
    with pytest.raises(DataError, match="unknown data set 'cats'"):
        make_dataset("cats", tmp_path / "x")


def test_audio_column_speaks_the_caption(tmp_path):
    pytest.importorskip("espeakng_loader")
    make_dataset("shapes", tmp_path / "w", n=3, audio=True)
    ds = load_dataset(tmp_path / "w")["train"]
    assert ds.features["audio"].feature.dtype == "float32"
    a = np.asarray(ds[0]["audio"], np.float32)
    assert len(a) > 16000 * 0.5 and np.abs(a).max() > 0.05  # at least half a second of non-silent speech
