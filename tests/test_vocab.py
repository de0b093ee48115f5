"""Unified vocabulary: disjoint contiguous ranges, round trips both ways, the range check, vocab.json."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from duogen.errors import CheckpointError, DataError
from duogen.tokenizers.vocab import SPECIAL_TOKENS, TASK_TOKENS, UnifiedVocab


def make():
    return UnifiedVocab(300, {"video": 1000, "audio": (64, 3)})


def test_ranges_are_disjoint_and_cover_everything():
    v = make()
    ranges = sorted(v.ranges.values(), key=lambda r: r.start)
    assert ranges[0].start == 0
    for a, b in zip(ranges, ranges[1:]):
        assert a.stop == b.start
    assert v.size == ranges[-1].stop == 13 + 8 + 300 + 1000 + 3 * 64
    assert v.id("<pad>") == 0
    assert {v.name_of(v.id(t)) for t in SPECIAL_TOKENS} == {"special"}
    assert {v.name_of(v.id(t)) for t in TASK_TOKENS} == {"task"}
    assert len(set(v.tokens.values())) == len(SPECIAL_TOKENS) + len(TASK_TOKENS)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 999), min_size=1, max_size=50), st.lists(st.integers(0, 299), min_size=1, max_size=20))
def test_round_trips_both_ways(video, text):
    v = make()
    g = v.codec_to_global("video", torch.tensor(video))
    assert int(g.min()) >= v.range("video").start and int(g.max()) < v.range("video").stop
    assert torch.equal(v.global_to_codec("video", g), torch.tensor(video))
    gt = v.text_to_global(text)
    assert v.global_to_text(gt) == text
    assert all(v.name_of(i) == "text" for i in gt)
    v.check(g)
    v.check(gt)


def test_residual_levels_each_have_their_own_range():
    v = make()
    ids = np.array([[0, 0, 0], [63, 5, 7]])  # (T, L)
    g = v.codec_to_global("audio", ids)
    assert [v.name_of(int(i)) for i in g[0]] == ["audio.0", "audio.1", "audio.2"]
    assert len(set(g[0].tolist())) == 3  # same local id, three different global ids
    assert np.array_equal(v.global_to_codec("audio", g), ids)
    with pytest.raises(DataError, match="last axis of 3"):
        v.codec_to_global("audio", np.zeros((4, 2), dtype=np.int64))


def test_rejects_ids_outside_ranges():
    v = make()
    with pytest.raises(DataError, match="outside every vocabulary range"):
        v.check(torch.tensor([0, v.size]))
    with pytest.raises(DataError, match="outside every vocabulary range"):
        v.check([-1])
    with pytest.raises(DataError, match="outside 0..999"):
        v.codec_to_global("video", [1000])
    with pytest.raises(DataError, match="not in range 'text'"):
        v.global_to_text([v.range("video").start])
    with pytest.raises(DataError, match="no codec named"):
        v.codec_to_global("image", [0])
    with pytest.raises(DataError, match="unknown token"):
        v.id("<t2x>")


def test_save_load(tmp_path):
    v = UnifiedVocab(300, {"video": 1000, "audio": (64, 3)}, codec_refs={"video": "runs/vq/final"})
    p = v.save(tmp_path / "vocab.json")
    back = UnifiedVocab.load(p)
    assert back == v and back.codec_refs == {"video": "runs/vq/final"}
    assert back.range("audio.2") == v.range("audio.2")
    (tmp_path / "bad.json").write_text('{"format_version": 1, "text_size": 3}')
    with pytest.raises(CheckpointError, match="not a duogen vocabulary"):
        UnifiedVocab.load(tmp_path / "bad.json")
