"""Control metrics (eval/control_metrics.py) on hand-made boxes, detections and rendered world clips."""

from __future__ import annotations

import numpy as np
import pytest

from duogen.data.shapes import WorldConfig, render_clip, sprite
from duogen.errors import DataError
from duogen.eval.control_metrics import (
    ControlScores, Found, average_precision, box_iou, mask_iou, match_objects, phrase_color, score_clip,
)

pytestmark = pytest.mark.usefixtures("one_thread")
CFG = WorldConfig()  # the tiny world: 32x32, 9 frames


def test_box_iou_known_values():
    a = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 4, 4]])
    b = np.array([[5, 0, 15, 10], [0, 0, 10, 10], [-1, -1, -1, -1], [10, 10, 20, 20]])
    np.testing.assert_allclose(box_iou(a, b), [50 / 150, 1.0, 0.0, 0.0])


def test_mask_iou_known_values_and_empty_frames():
    a = np.zeros((3, 4, 4), bool)
    b = np.zeros((3, 4, 4), bool)
    a[0, :2], b[0, :1] = True, True  # 4 of 8
    a[1], b[1] = True, True
    out = mask_iou(a, b)
    assert out[0] == 0.5 and out[1] == 1.0 and np.isnan(out[2])


def test_average_precision_hand_made():
    gt = {0: np.array([[0, 0, 10, 10]]), 1: np.array([[0, 0, 10, 10]])}
    hit, miss = np.array([0, 0, 10, 10]), np.array([20, 20, 30, 30])
    # ranked: TP (p 1, r .5), FP (p .5, r .5), TP (p 2/3, r 1): envelope 1 up to r .5 (51 points), 2/3 after (50)
    dets = [(1, 0.7, hit), (0, 0.9, hit), (1, 0.8, miss)]
    assert average_precision(dets, gt) == pytest.approx((51 + 50 * 2 / 3) / 101)
    assert average_precision([(0, 0.9, hit), (1, 0.8, hit)], gt) == 1.0
    # a duplicate detection of one object is a false positive; the other object is never found: recall 1/2
    dup = average_precision([(0, 0.9, hit), (0, 0.8, hit)], gt)
    assert dup == pytest.approx(51 / 101)
    assert average_precision([], gt) == 0.0
    assert np.isnan(average_precision([(0, 1.0, hit)], {0: np.zeros((0, 4))}))


def test_average_precision_rank_matters():
    gt = {0: np.array([[0, 0, 10, 10]])}
    good_first = [(0, 0.9, np.array([0, 0, 10, 10])), (0, 0.1, np.array([20, 20, 30, 30]))]
    bad_first = [(0, 0.1, np.array([0, 0, 10, 10])), (0, 0.9, np.array([20, 20, 30, 30]))]
    assert average_precision(good_first, gt) == 1.0
    assert average_precision(bad_first, gt) == pytest.approx(0.5)


def test_match_by_color_then_by_iou():
    F = 2
    box_a, box_b = np.tile([0, 0, 8, 8], (F, 1)), np.tile([16, 16, 24, 24], (F, 1))
    empty = np.zeros((F, 32, 32), bool)
    found = [Found("red", empty, box_b, np.ones(F)), Found("blue", empty, box_a, np.ones(F))]
    # "a red circle" asked at box_a: matched to the red object even though the blue one sits in its box
    assert match_objects(["a red circle"], [box_a], found) == [0]
    # no color in the phrase: the found object that overlaps most
    assert match_objects(["an object"], [box_a], found) == [1]
    # a color nobody has, and no overlap left: unmatched
    assert match_objects(["a red circle", "a green square"], [box_b, box_b], found[:1]) == [0, None]
    assert phrase_color("A Yellow digit 3") == "yellow" and phrase_color("a square") is None


SHAPE_SETS = [[("circle", "red", "right")], [("square", "green", "down"), ("triangle", "blue", "still")],
              [("triangle", "yellow", "up-left")], [("circle", "white", "left"), ("square", "red", "up")]]


def _world(i: int):
    """A rendered world clip of geometric shapes (no digits: no MNIST to load), its phrases, boxes and the
    ground-truth object masks (each sprite at its box; the world keeps boxes >= 2 px apart, so none hides another)."""
    attrs = [{"shape": s, "color": c, "motion": m} for s, c, m in SHAPE_SETS[i % len(SHAPE_SETS)]]
    clip = render_clip(attrs, CFG, np.random.default_rng(i))
    masks = np.zeros((len(attrs), CFG.frames, CFG.size, CFG.size), bool)
    for k, a in enumerate(clip.attributes):
        for f, (x0, y0, x1, y1) in enumerate(clip.boxes[k]):
            masks[k, f, y0:y1, x0:x1] = sprite(a["shape"], int(a["size"]))
    return clip, [f"a {a['color']} {a['shape']}" for a in clip.attributes], list(clip.boxes), masks


def test_ground_truth_clips_score_one():
    scores = ControlScores()
    for i in range(6):
        clip, phrases, boxes, masks = _world(i)
        c = scores.add(clip.video, phrases, boxes, clip.attributes, masks)
        np.testing.assert_allclose(np.nan_to_num(c.mask_iou, nan=1.0), 1.0)  # the probes find exactly the pixels
    s = scores.summary()
    assert s["mask_iou"] == 1.0 and s["box_iou"] == 1.0 and s["box_iou_050"] == 1.0 and s["ap50"] == 1.0
    assert s["color"] == 1.0 and s["clips"] == 6 and s["object_frames"] == 9 * 9


def test_shifted_clip_has_the_known_iou():
    clip, phrases, boxes, masks = _world(0)
    video = np.roll(clip.video, 3, axis=2)  # every object 3 px to the right
    c = score_clip(video, phrases, boxes)
    for b, row in zip(boxes, c.box_iou):
        x0, y0, x1, y1 = b.T
        x0s, x1s = np.minimum(x0 + 3, 32), np.minimum(x1 + 3, 32)  # a box may run into the right edge
        inter = (np.minimum(x1, x1s) - np.maximum(x0, x0s)) * (y1 - y0)
        union = (x1 - x0) * (y1 - y0) + (x1s - x0s) * (y1 - y0) - inter
        visible = row > 0
        np.testing.assert_allclose(row[visible], (inter / union)[visible])
    shifted_masks = np.roll(masks, 3, axis=3)
    assert np.nanmean(score_clip(video, phrases, boxes, shifted_masks).mask_iou) == 1.0
    assert np.nanmean(score_clip(video, phrases, boxes, masks).mask_iou) < 0.9


def test_empty_clip_scores_zero_and_fpd_is_zero_against_itself():
    clip, phrases, boxes, masks = _world(1)
    black = np.zeros_like(clip.video)
    c = score_clip(black, phrases, boxes, masks)
    assert not c.box_iou.any() and np.nanmax(c.mask_iou) == 0.0 and c.detections == []
    scores = ControlScores()
    for i in range(4):
        cl, ph, bx, _ = _world(i)
        scores.add(cl.video, ph, bx, cl.attributes)
    feats = np.stack(scores.features)
    assert scores.summary(real_features=feats)["fpd"] == pytest.approx(0.0, abs=1e-6)
    assert scores.summary()["mask_iou"] is None


def test_bad_input_is_a_data_error():
    clip, phrases, boxes, masks = _world(0)
    with pytest.raises(DataError):
        score_clip(clip.video, phrases, [b[:3] for b in boxes])
    with pytest.raises(DataError):
        score_clip(clip.video, phrases, boxes, masks[:, :3])
    with pytest.raises(DataError):
        score_clip(clip.video.astype(np.float32), phrases, boxes)
    with pytest.raises(DataError):
        ControlScores().summary()
